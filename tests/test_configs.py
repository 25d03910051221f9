"""Every recipe config builds, and its input pipeline runs on TFDS mock data with the real
feature shapes (no download)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from helpers import load_config
from vit_jax import models
from vit_jax.classification import ClassificationTask

# oxford_iiit_pet is left out: TFDS' mock generator itself fails on its head_bbox feature.
FINETUNE = ['b16,cifar10', 'b32,cifar100', 'l16,imagenet2012', 's16,oxford_flowers102,augreg']


@pytest.mark.parametrize('arg', FINETUNE)
def test_finetune_input_on_mock_data(arg):
  config = load_config('vit_finetune', arg)
  config.input.update(batch_size=2, eval_batch_size=3)
  task = ClassificationTask(config)
  with tfds.testing.mock_data(num_examples=5):
    batch = next(task.train_input(0))
    eval_batches = list(task.eval_input())
  classes = config.model.num_classes
  assert batch['image'].shape == (2, 384, 384, 3) and batch['image'].dtype == np.float32
  assert -1.0 <= batch['image'].min() and batch['image'].max() <= 1.0
  assert 0 <= batch['label'].min() and batch['label'].max() < classes
  assert sum(b['_mask'].sum() for b in eval_batches) == 5  # Every mock example, once.
  assert all(b['image'].shape == (3, 384, 384, 3) for b in eval_batches)


@pytest.mark.parametrize('arg, init_from', [
    ('b16,cifar10', 'gs://vit_models/imagenet21k/ViT-B_16.npz'),
    ('b16,cifar10,augreg', 'gs://vit_models/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-'
                           'do_0.0-sd_0.0.npz'),
    ('r50_b16,imagenet2012', 'gs://vit_models/imagenet21k/R50+ViT-B_16.npz'),
    ('r26_s32,oxford_iiit_pet,augreg', 'gs://vit_models/augreg/R26_S_32-i21k-300ep-lr_0.001-'
                                       'aug_medium2-wd_0.03-do_0.0-sd_0.0.npz'),
])
def test_finetune_recipe(arg, init_from):
  config = load_config('vit_finetune', arg)
  assert config.init_from == init_from
  assert (config.optim.name, config.optim.momentum, config.optim.grad_clip_norm) == (
      'momentum', 0.9, 1.0)
  assert config.input.batch_size == 512 and config.input.image_size == 384
  assert config.model.representation_size is None


def test_i21k_recipe_matches_paper():
  config = load_config('vit_b16_i21k')
  assert config.input.batch_size == 4096 and config.total_epochs == 90
  assert (config.optim.name, config.optim.lr, config.optim.weight_decay) == ('adamw', 1e-3, 0.03)
  assert (config.optim.schedule.name, config.optim.schedule.warmup_steps,
          config.optim.schedule.end_value) == ('warmup_linear', 10_000, 1e-5)
  assert config.model.dropout_rate == 0.1 and config.model.head_bias_init == -10.0
  model = models.build_vit(config.model)
  assert model.representation_size == 768 and model.num_classes == 21843
