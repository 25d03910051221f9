"""Every recipe config builds, and its input pipeline runs on TFDS mock data with the real
feature shapes (no download)."""

import math
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from helpers import load_config
from vit_jax.classification import vit
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import durations, optim

# Every config with each argument its docstring and the README document.
DOCUMENTED = [
    ('vit_digits',), ('vit_b16_i21k',), ('vit_finetune', 'b16,cifar10'),
    ('vit_finetune', 'r26_s32,oxford_iiit_pet,upstream=augreg'), ('detr_shapes',),
    ('detr_coco', 'r50'), ('detr_coco', 'dc5_r101,epochs=300'), ('segmenter_shapes',),
    ('segmenter_ade20k', 's16_mask'), ('segmenter_ade20k', 'l16_mask,crop=512'),
    ('segmenter_ade20k', 'deit_b16_mask'), ('segmenter_pascal_context', 'l16_mask'),
    ('segmenter_cityscapes', 'l16_mask'), ('swin_digits',), ('swin_imagenet', 'T'),
    ('swin_imagenet', 'B,recipe=ft22k,size=384'), ('deit', 'B'), ('deit', 'S,distilled=true'),
    ('deit', 'B,finetune_384=true'), ('deit_digits', 'hard'), ('vit_augreg_i1k', 'B/16'),
    ('vit_augreg_i1k', 'S/32,aug=light2'),
]
# The fields every task reads under the same name; a duration is one of a pair.
SCHEMA = ['task', 'seed', 'init_from', 'profile', 'log_every', 'keep_checkpoints', 'mesh',
          'sharding_rules', 'prefetch_batches', 'draw_examples', 'input.source', 'input.data_dir',
          'input.train_split', 'input.eval_split', 'input.batch_size', 'input.eval_batch_size',
          'model.name', 'model.scan', 'model.remat', 'optim.name', 'optim.lr', 'optim.schedule.name']
DURATIONS = [('total_steps', 'total_epochs'), ('eval_every', 'eval_every_epochs'),
             ('checkpoint_every', 'checkpoint_every_epochs')]


@pytest.mark.parametrize('name_and_arg', DOCUMENTED, ids='-'.join)
def test_every_config_has_the_one_schema(name_and_arg):
  config = load_config(*name_and_arg)
  flat = set(_flat_keys(config))
  assert set(SCHEMA) <= flat, set(SCHEMA) - flat
  for pair in DURATIONS:  # Both keys exist (loop_config's defaults); the recipe sets one.
    assert sum(_value(config, key) is not None for key in pair) == 1, pair
  assert config.model.name == name_and_arg[0].split('_')[0]
  if 'loss' in config:
    assert 'name' in config.loss or 'class_weight' in config.loss


def _value(config, dotted):
  for key in dotted.split('.'):
    config = config[key]
  return config


def _flat_keys(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _flat_keys(value, f'{prefix}{key}.')
    else:
      yield prefix + key


@pytest.mark.parametrize('batch_size', [64, 16])
def test_detr_recipe_in_epochs_follows_the_batch_size(batch_size):
  # 500 epochs with the x0.1 drop at epoch 400 of COCO's 118,287 images, whatever the batch.
  config = load_config('detr_coco', 'r50')
  config.input.batch_size = batch_size
  steps = durations.resolve(config, 118_287)
  _, schedule = optim.make_optimizer(config.optim, steps.total, steps.epochs)
  drop = math.ceil(400 * 118_287 / batch_size)
  assert steps.total == math.ceil(500 * 118_287 / batch_size)
  assert steps.checkpoint_every == math.ceil(118_287 / batch_size)
  assert (float(schedule(drop - 1)), float(schedule(drop))) == pytest.approx((1e-4, 1e-5))


@pytest.mark.parametrize('name, arg, message', [
    ('detr_coco', 'r51', "unknown backbone 'r51' in configs/detr_coco.py:r51"),
    ('detr_coco', 'r50,300', 'names 2 of 1 (BACKBONE)'),
    ('detr_coco', 'r50,epochs=many', "bad value 'epochs=many'"),
    ('vit_finetune', 'b16,cifar10,upstream=jft', 'upstream=i21k|augreg'),
    ('segmenter_ade20k', 's16_mask,size=640', "unknown option 'size'"),
])
def test_bad_argument_is_one_line_naming_what_is_accepted(name, arg, message):
  with pytest.raises(ValueError, match=r'\A[^\n]*' + re.escape(message) + r'[^\n]*\Z'):
    load_config(name, arg)


def test_arguments_are_typed_by_their_defaults():
  assert load_config('detr_coco', 'r101,epochs=150').total_epochs == 150
  assert load_config('detr_coco', 'r101,epochs=150').optim.schedule.boundary_epochs == (100,)
  config = load_config('segmenter_ade20k', 'b8_linear,crop=480')
  assert (config.input.crop_size, config.model.image_size) == (480, 480)
  assert load_config('vit_finetune', 'l32,cifar10,upstream=augreg').init_from is None

# oxford_iiit_pet is left out: TFDS' mock generator itself fails on its head_bbox feature.
FINETUNE = ['b16,cifar10', 'b32,cifar100', 'l16,imagenet2012',
            's16,oxford_flowers102,upstream=augreg']


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
    ('b16,cifar10,upstream=augreg',
     'gs://vit_models/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz'),
    ('r50_b16,imagenet2012', 'gs://vit_models/imagenet21k/R50+ViT-B_16.npz'),
    ('r26_s32,oxford_iiit_pet,upstream=augreg',
     'gs://vit_models/augreg/R26_S_32-i21k-300ep-lr_0.001-aug_medium2-wd_0.03-do_0.0-sd_0.0.npz'),
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
  assert config.loss.name == 'sigmoid_xent'
  assert (config.optim.name, config.optim.lr, config.optim.weight_decay) == ('adamw', 1e-3, 0.03)
  assert (config.optim.schedule.name, config.optim.schedule.warmup_steps,
          config.optim.schedule.end_value) == ('warmup_linear', 10_000, 1e-5)
  assert config.model.dropout_rate == 0.1 and config.model.head_bias_init == -10.0
  model = vit.build_vit(config.model)
  assert model.representation_size == 768 and model.num_classes == 21843
