"""Train DETR: python -m detr_jax.main --config=configs/detr_shapes.py --workdir=DIR"""

from detr_jax.detection import DetectionTask
from vit_jax import cli

if __name__ == '__main__':
  cli.run(DetectionTask)
