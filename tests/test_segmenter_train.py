"""The Segmenter task under the shared loop: the loss, exact eval, the offline main job end to end,
one-line errors, and the paper-recipe configs."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
import torch
from PIL import Image

from helpers import (assert_one_line_error, assert_prediction_pictures, load_config,
                     mmseg_mean_iou, run_module)
from segmenter_jax import segmentation
from vit_jax.classification import vit_weights
from vit_jax.framework import evaluation, optim, sharding, train
from vit_jax.framework.errors import UserError

TINY = {'input.shapes.num_train': 64, 'input.shapes.num_eval': 20, 'input.batch_size': 8,
        'input.eval_batch_size': 8, 'model.hidden_size': 16, 'model.num_layers': 1,
        'model.num_heads': 1, 'model.mlp_dim': 32, 'total_steps': 3, 'log_every': 1,
        'eval_every': 3, 'checkpoint_every': 3}


def tiny_config(**changes):
  config = load_config('segmenter_shapes')
  for key, value in dict(TINY, **changes).items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def test_loss_equals_torch_cross_entropy_with_ignore_index():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, (2, 5, 6))
  labels[rng.random(labels.shape) < 0.3] = 255
  expected = torch.nn.functional.cross_entropy(
      torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(labels), ignore_index=255)
  assert float(segmentation.pixel_cross_entropy(logits, labels)) == pytest.approx(
      float(expected), rel=1e-6)
  assert float(segmentation.pixel_cross_entropy(logits, np.full_like(labels, 255))) == 0.0


@pytest.mark.slow
def test_eval_scores_every_image_once_against_an_independent_count():
  config = tiny_config()  # 20 eval images in batches of 8: the last batch is padded.
  task = segmentation.SegmentationTask(config)
  state = train.init_state(task, optax.identity(), jax.random.PRNGKey(0))
  mesh = sharding.make_mesh(config.mesh)
  batch_sharding = sharding.batch_sharding(mesh, sharding.logical_rules(config.sharding_rules))
  eval_step = jax.jit(lambda s, b: dict(task.eval_outputs({'params': s.params}, b),
                                        _mask=b['_mask']))
  result = evaluation.evaluate(task, eval_step, state, batch_sharding)
  assert result['num_examples'] == 20

  # Independently: 32 x 32 images are one window at scale 1; argmax of the model's logits.
  from segmenter_jax import shapes
  data = shapes.generate(shapes.ShapesSettings(**config.input.shapes), 'validation')
  logits = task.model.apply({'params': state.params}, (data['image'] - 127.5) / 127.5,
                            train=False)
  predictions = np.asarray(logits.argmax(-1))
  assert len(np.unique(predictions)) > 2  # Random weights, but not a constant prediction.
  expected = mmseg_mean_iou(list(predictions), list(data['label']), 4)
  assert result['miou'] == pytest.approx(expected['miou'], abs=1e-9)
  assert result['pixel_accuracy'] == pytest.approx(expected['pixel_accuracy'], abs=1e-9)


@pytest.mark.slow
def test_main_job_writes_miou(workdir):
  overrides = [f'--config.{k}={v}' for k, v in TINY.items()]
  result = run_module(['segmenter_jax.main', '--config=configs/segmenter_shapes.py',
                       f'--workdir={workdir}'] + overrides)
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.load(open(os.path.join(workdir, 'final_metrics.json')))
  assert metrics['num_examples'] == 20 and metrics['step'] == 3
  assert 0 <= metrics['miou'] <= 1 and 0 <= metrics['pixel_accuracy'] <= 1
  assert 'Final eval' in result.stdout and 'miou=' in result.stdout
  assert 'Per-class IoU' in result.stderr and 'rectangle' in result.stderr
  assert_prediction_pictures(workdir, steps=[3])  # Truth and predicted masks with a legend.


@pytest.mark.slow
def test_cli_error_is_one_line(workdir):
  result = run_module(['segmenter_jax.main', '--config=configs/segmenter_shapes.py',
                       f'--workdir={workdir}', '--config.model.decoder=conv'], timeout=300)
  assert_one_line_error(result, "unknown decoder 'conv'")


@pytest.mark.parametrize('change, message', [
    ({'input.eval_stride': 0}, 'eval_stride > 0'),
    ({'input.normalization': 'imagenet'}, "unknown config.input.normalization 'imagenet'"),
    ({'input.class_names': ('a', 'b')}, 'class_names has 2 names for 4 classes'),
    ({'input.ratio_range': (2.0, 0.5)}, 'ratio_range must be (low, high)'),
    ({'input.source': 'folder'}, 'is not a folder: point it at the folder root'),
    ({'input.shapes.colour': 1}, 'unknown config.input.shapes keys'),
    ({'input.source': 'ade'}, "unknown config.input.source 'ade'"),
])
def test_bad_config_values(change, message, workdir):
  config = tiny_config()
  config.unlock()
  for key, value in change.items():
    *parents, leaf = key.split('.')
    target = config
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  with pytest.raises(UserError, match=message.replace('(', r'\(').replace(')', r'\)')):
    task = segmentation.SegmentationTask(config)
    next(task.train_input(0))


def test_eval_label_map_of_the_wrong_size_stops_the_run_before_training(tmp_path, workdir):
  rng = np.random.default_rng(0)
  for split, label_shape in (('train', (24, 32)), ('validation', (12, 16))):
    for folder in ('images', 'annotations'):
      os.makedirs(tmp_path / folder / split)
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(
        tmp_path / 'images' / split / 'a.png')
    Image.fromarray(np.zeros(label_shape, np.uint8)).save(
        tmp_path / 'annotations' / split / 'a.png')
  config = tiny_config(**{'input.source': 'folder', 'input.data_dir': str(tmp_path)})
  with pytest.raises(UserError, match="reading split 'validation' failed: label map and image "
                                      'differ in size'):
    train.train_and_evaluate(config, workdir, segmentation.SegmentationTask(config))
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))


def test_shapes_recipe_is_segmenters():
  config = load_config('segmenter_shapes')
  assert (config.optim.name, config.optim.momentum, config.optim.weight_decay) == (
      'nesterov', 0.9, 0.0)
  assert config.model.decoder == 'mask_transformer'


@pytest.mark.parametrize('name, arg, variant, decoder, crop, classes, batch, lr, steps', [
    ('segmenter_ade20k', 's16_mask', 'S/16', 'mask_transformer', 512, 150, 8, 1e-3, 161_728),
    ('segmenter_ade20k', 'b16_linear', 'B/16', 'linear', 512, 150, 8, 1e-3, 161_728),
    ('segmenter_ade20k', 'l16_mask', 'L/16', 'mask_transformer', 640, 150, 8, 1e-3, 161_728),
    ('segmenter_ade20k', 'b8_linear,crop=480', 'B/8', 'linear', 480, 150, 8, 1e-3, 161_728),
    ('segmenter_ade20k', 'deit_b16_mask', 'DeiT-B/16', 'mask_transformer', 512, 150, 8, 1e-3,
     161_728),
    ('segmenter_pascal_context', 'l16_mask', 'L/16', 'mask_transformer', 480, 60, 16, 1e-3,
     80_128),
    ('segmenter_cityscapes', 'l16_mask', 'L/16', 'mask_transformer', 768, 19, 8, 1e-2, 80_352),
])
def test_paper_recipes(name, arg, variant, decoder, crop, classes, batch, lr, steps):
  config = load_config(name, arg)
  assert (config.model.variant, config.model.decoder) == (variant, decoder)
  assert (config.input.crop_size, config.model.num_classes) == (crop, classes)
  assert (config.input.batch_size, config.optim.lr, config.total_steps) == (batch, lr, steps)
  assert config.input.normalization == ('deit' if 'DeiT' in variant else 'vit')
  assert (config.model.drop_path_rate, config.model.dropout_rate) == (0.1, 0.0)
  assert config.model.decoder_layers == (1 if name == 'segmenter_cityscapes' else 2)
  task = segmentation.SegmentationTask(config)  # The model builds.
  shapes = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0))
  assert shapes['params']['decoder']
  # Nesterov SGD, poly 0.9 to 1e-5 per iteration: (lr - 1e-5) (1 - k / K)^0.9 + 1e-5.
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
  for k in (0, 1000, steps // 2, steps - 1):
    assert float(schedule(k)) == pytest.approx((lr - 1e-5) * (1 - k / steps) ** 0.9 + 1e-5,
                                               rel=1e-5, abs=1e-9)
  params = {'w': np.ones(3, np.float32)}
  update, _ = tx.update({'w': np.full(3, 2.0, np.float32)}, tx.init(params), params)
  nesterov = optax.sgd(lr, momentum=0.9, nesterov=True)
  expected, _ = nesterov.update({'w': np.full(3, 2.0, np.float32)}, nesterov.init(params))
  np.testing.assert_allclose(update['w'], expected['w'], rtol=1e-6)


def test_unknown_variant_argument():
  with pytest.raises(ValueError, match="unknown variant 'x16_mask' in configs/segmenter_ade20k"):
    load_config('segmenter_ade20k', 'x16_mask')


def test_data_errors_inside_tf_data_become_one_line(tmp_path):
  for split in ('training', 'validation'):
    os.makedirs(tmp_path / 'images' / split)
    os.makedirs(tmp_path / 'annotations' / split)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / 'images' / split / 'a.png')
  Image.fromarray(np.full((40, 40), 3, np.uint16)).save(
      tmp_path / 'annotations' / 'training' / 'a.png')
  Image.fromarray(np.zeros((30, 40), np.uint8)).save(
      tmp_path / 'annotations' / 'validation' / 'a.png')
  config = tiny_config(**{'input.source': 'folder', 'input.train_split': 'training',
                          'input.eval_split': 'validation'})
  config.unlock()
  config.input.data_dir = str(tmp_path)
  task = segmentation.SegmentationTask(config)
  with pytest.raises(UserError, match=r"^reading split 'training' failed: label maps must be "
                                      r'8-bit \(got uint16\)'):
    next(task.train_input(0))
  with pytest.raises(UserError, match=r"^reading split 'validation' failed: label map and image "
                                      r'differ in size \(30 40 vs 40 40\)$'):
    next(iter(task.eval_input()))


@pytest.mark.slow
def test_init_from_a_vit_npz_fills_the_encoder(tmp_path):
  config = tiny_config()
  task = segmentation.SegmentationTask(config)
  fresh = jax.device_get(nn.meta.unbox(task.init_variables(jax.random.PRNGKey(0)))['params'])
  rng = np.random.default_rng(0)
  vit = jax.tree.map(lambda x: x + rng.normal(size=x.shape).astype(x.dtype), fresh['encoder'])
  path = str(tmp_path / 'vit.npz')
  vit_weights.write_vit_npz(path, vit)
  loaded = task.pretrained_params(fresh, path)
  jax.tree.map(np.testing.assert_array_equal, loaded['encoder'], vit)
  jax.tree.map(np.testing.assert_array_equal, loaded['decoder'], fresh['decoder'])
