"""Train Segmenter:

  python -m segmenter_jax.main --config=configs/segmenter_shapes.py --workdir=DIR
"""

from segmenter_jax.segmentation import SegmentationTask
from vit_jax.framework import cli

if __name__ == '__main__':
  cli.run(SegmentationTask)
