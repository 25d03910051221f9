"""Train a ViT classifier: python -m vit_jax.main --config=configs/vit_digits.py --workdir=DIR"""

from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import cli

if __name__ == '__main__':
  cli.run(ClassificationTask)
