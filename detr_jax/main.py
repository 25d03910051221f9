"""Train DETR: python -m detr_jax.main --config=configs/detr_shapes.py --workdir=DIR

The config names the task (`config.task`: detection, or panoptic for boxes and masks) and the
model (`config.model.name`); see vit_jax/framework/registry.py.
"""

from vit_jax.framework import cli

if __name__ == '__main__':
  cli.run()
