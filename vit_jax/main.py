"""Train a classifier: python -m vit_jax.main --config=configs/vit_digits.py --workdir=DIR

The config names the task and the model (vit_jax/framework/registry.py).
"""

from vit_jax.framework import cli

if __name__ == '__main__':
  cli.run()
