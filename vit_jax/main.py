"""Train a ViT classifier: python -m vit_jax.main --config=configs/vit_digits.py --workdir=DIR"""

from vit_jax import cli
from vit_jax.classification import ClassificationTask

if __name__ == '__main__':
  cli.run(ClassificationTask)
