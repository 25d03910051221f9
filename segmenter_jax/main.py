"""Train Segmenter:

  python -m segmenter_jax.main --config=configs/segmenter_shapes.py --workdir=DIR

The config names the task and the model (vit_jax/framework/registry.py).
"""

from vit_jax.framework import cli

if __name__ == '__main__':
  cli.run()
