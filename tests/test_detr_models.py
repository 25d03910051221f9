"""DETR model: parameter counts from the paper, parity with HF transformers on the same weights,
the official checkpoint layout, and the refusal of pickles that carry code."""

import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from transformers import DetrConfig, DetrForObjectDetection

from detr_jax import models, pretrained
from helpers import (ROOT, official_detr_state_dict, randomise_hf_detr,
                     write_code_carrying_pickle)
from vit_jax.framework.errors import UserError


def _abstract_variables(**fields):
  model = models.DETR(**fields)
  return flax.linen.meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                         jnp.ones((1, 64, 64)))))


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('depth, trainable, buffers', [(50, 41_302_368, 106_240),
                                                       (101, 60_242_272, 210_688)])
def test_parameter_counts_match_the_original(depth, trainable, buffers):
  variables = _abstract_variables(num_classes=91, backbone_depth=depth)
  params = flax.traverse_util.flatten_dict(variables['params'], sep='/')
  # The original freezes conv1 and layer1 (our configs: lr_mults 0) and keeps BN as buffers.
  frozen = _count([v for k, v in params.items()
                   if k.startswith(('backbone/conv1/', 'backbone/layer1_'))])
  assert _count(variables['params']) - frozen == trainable
  assert _count(variables['frozen']) == buffers


def _randomised_hf_detr(dilation: bool, num_labels: int = 5):
  """HF's DETR (timm ResNet-50 backbone, no download) with every tensor random."""
  torch.manual_seed(0)
  config = DetrConfig(use_timm_backbone=True, backbone='resnet50', use_pretrained_backbone=False,
                      num_labels=num_labels, dilation=dilation)
  return randomise_hf_detr(DetrForObjectDetection(config).eval())


@pytest.mark.slow
@pytest.mark.parametrize('dilation', [False, True], ids=['R50', 'DC5-R50'])
def test_same_outputs_as_hf_transformers_on_a_padded_batch(dilation):
  hf = _randomised_hf_detr(dilation)
  variables = pretrained.convert_state_dict(
      {k: v.numpy() for k, v in hf.state_dict().items()})
  batch, height, width = 2, 160, 224
  pixel_mask = np.zeros((batch, height, width), np.int64)
  pixel_mask[0] = 1
  pixel_mask[1, :130, :181] = 1  # Not a multiple of the stride: tests the mask rule.
  images = np.random.default_rng(0).normal(size=(batch, 3, height, width))
  images = (images * pixel_mask[:, None]).astype(np.float32)  # Zero padding, as the original.
  with torch.no_grad():
    expected = hf(pixel_values=torch.from_numpy(images), pixel_mask=torch.from_numpy(pixel_mask))
  ours = models.DETR(num_classes=5, dilation=dilation).apply(
      variables, jnp.asarray(images.transpose(0, 2, 3, 1)), jnp.asarray(pixel_mask))
  # Float32 round-off through 50 conv layers and 12 transformer layers.
  np.testing.assert_allclose(ours['logits'][-1], expected.logits.numpy(), atol=1e-4)
  np.testing.assert_allclose(ours['boxes'][-1], expected.pred_boxes.numpy(), atol=1e-4)
  assert np.abs(expected.logits.numpy()).max() > 0.3  # The comparison is not of near-zeros.


@pytest.mark.parametrize('size_in, size_out', [(160, 5), (130, 5), (1333, 42), (800, 25), (37, 3)])
def test_mask_downsampling_follows_pytorchs_nearest_rule(size_in, size_out):
  mask = np.random.default_rng(size_in).random((1, size_in, size_in + 3)) > 0.5
  expected = torch.nn.functional.interpolate(torch.from_numpy(mask)[None].float(),
                                             size=(size_out, size_out + 1))[0].bool().numpy()
  np.testing.assert_array_equal(models.downsample_mask(jnp.asarray(mask),
                                                       (size_out, size_out + 1)), expected)


def test_official_layout_converts_completely(tmp_path):
  state = official_detr_state_dict()
  assert len(state) == 458  # reference/detr.md §5.
  path = str(tmp_path / 'detr-r50.pth')
  torch.save({'model': state}, path)
  loaded = pretrained.load_variables(path)
  fresh = _abstract_variables(num_classes=91)
  assert jax.tree.map(np.shape, loaded) == jax.tree.map(np.shape, fresh)
  q = loaded['params']['transformer']['encoder']['layers_3']['self_attn']['query']['kernel']
  np.testing.assert_array_equal(
      q.reshape(256, 256), state['transformer.encoder.layers.3.self_attn.in_proj_weight'][:256].T)
  np.testing.assert_array_equal(loaded['frozen']['backbone']['layer2_0']['downsample_1']['var'],
                                state['backbone.0.body.layer2.0.downsample.1.running_var'])


@pytest.mark.slow
def test_fine_tuning_on_new_classes_keeps_a_fresh_head():
  state = {k: v.numpy() for k, v in official_detr_state_dict().items()}
  model = models.DETR(num_classes=3, num_encoder_layers=6)
  fresh = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), jnp.ones((1, 64, 64)))
  fresh = jax.device_get(flax.linen.meta.unbox(fresh))
  fitted = pretrained.fit_variables(fresh, pretrained.convert_state_dict(state))
  np.testing.assert_array_equal(fitted['params']['class_embed']['kernel'],
                                fresh['params']['class_embed']['kernel'])
  np.testing.assert_array_equal(fitted['params']['query_embed'], state['query_embed.weight'])


@pytest.mark.slow
def test_backbone_from_a_torchvision_resnet():
  resnet = {k: v.numpy() for k, v in torchvision.models.resnet50().state_dict().items()}
  model = models.DETR(num_classes=3, num_encoder_layers=1, num_decoder_layers=1)
  fresh = jax.device_get(flax.linen.meta.unbox(
      model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), jnp.ones((1, 64, 64)))))
  fitted = pretrained.fit_variables(fresh, pretrained.convert_state_dict(resnet))
  np.testing.assert_array_equal(fitted['params']['backbone']['conv1']['kernel'],
                                resnet['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(fitted['frozen']['backbone']['layer4_2']['bn3']['mean'],
                                resnet['layer4.2.bn3.running_mean'])
  np.testing.assert_array_equal(fitted['params']['query_embed'], fresh['params']['query_embed'])


def test_a_pickle_that_carries_code_is_refused(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pth'
  write_code_carrying_pickle(str(path), str(marker))
  with pytest.raises(UserError, match='refusing to load .*not a plain weights file'):
    pretrained.load_variables(str(path))
  assert not os.path.exists(marker)


@pytest.mark.slow
def test_mismatched_checkpoint_names_the_tensors():
  state = {k: v.numpy() for k, v in official_detr_state_dict().items()}
  model = models.DETR(num_classes=91, hidden_dim=128, num_heads=8, mlp_dim=256)
  fresh = jax.device_get(flax.linen.meta.unbox(
      model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), jnp.ones((1, 64, 64)))))
  with pytest.raises(UserError, match=r'does not fit the model \(shape differs: params/'):
    pretrained.fit_variables(fresh, pretrained.convert_state_dict(state))


@pytest.mark.slow
def test_converter_script_writes_what_init_from_reads(tmp_path):
  source, output = str(tmp_path / 'detr.pth'), str(tmp_path / 'detr.npz')
  state = official_detr_state_dict()
  torch.save({'model': state}, source)
  script = os.path.join(ROOT, 'scripts', 'convert_detr_checkpoint.py')
  result = subprocess.run([sys.executable, script, source, output], capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert '41,524,768 parameters, 106,240 frozen batch-norm values, 91 classes' in result.stdout
  loaded = pretrained.load_variables(output)
  np.testing.assert_array_equal(loaded['params']['class_embed']['kernel'],
                                state['class_embed.weight'].numpy().T)


@pytest.mark.slow
def test_backbone_norm_choices():
  images, mask = jnp.zeros((1, 64, 64, 3)), jnp.ones((1, 64, 64))
  small = dict(num_classes=3, backbone_blocks=(1, 1, 1, 1), backbone_width=16, hidden_dim=32,
               num_encoder_layers=1, num_decoder_layers=1, num_heads=2, mlp_dim=32)
  grouped = models.DETR(backbone_norm='group', **small).init(jax.random.PRNGKey(0), images, mask)
  assert 'frozen' not in grouped  # Trainable GroupNorm for backbones trained from scratch.
  assert grouped['params']['backbone']['layer4_0']['bn3']['scale'].shape == (512,)
  with pytest.raises(UserError, match="unknown backbone_norm 'batch'"):
    models.DETR(backbone_norm='batch', **small).init(jax.random.PRNGKey(0), images, mask)
