"""Deformable DETR: trainable parameter counts from the reference sheet, parity with HF's
DeformableDetrForObjectDetection on the same random weights (plain, box refinement, two-stage;
its CPU path is the pure-PyTorch grid_sample attention), and the released layouts' conversion."""

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
from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

from detr_jax import deformable_models, deformable_pretrained
from helpers import ROOT


def _abstract_variables(**fields):
  model = deformable_models.DeformableDETR(**fields)
  return flax.linen.meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 128, 128, 3)),
                         jnp.ones((1, 128, 128)))))


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _trainable(variables):
  """The original's n_parameters: conv1 and layer1 frozen, batch norm kept as buffers."""
  params = flax.traverse_util.flatten_dict(variables['params'], sep='/')
  frozen = _count([v for k, v in params.items()
                   if k.startswith(('backbone/conv1/', 'backbone/layer1_'))])
  return _count(params) - frozen


@pytest.mark.parametrize('fields, trainable', [
    ({}, 39_847_265),
    ({'with_box_refine': True}, 40_627_260),
    ({'with_box_refine': True, 'two_stage': True}, 40_959_129),
    ({'num_feature_levels': 1}, 33_844_193),
    ({'num_feature_levels': 1, 'dilation': True}, 33_844_193),
], ids=['deformable', 'box_refine', 'two_stage', 'single_scale', 'single_scale_dc5'])
def test_trainable_parameter_counts_match_the_original(fields, trainable):
  variables = _abstract_variables(num_classes=91, **fields)
  assert _trainable(variables) == trainable
  assert _count(variables['frozen']) == 106_240  # ResNet-50's frozen batch norm.


def _randomised_hf(backbone, **config):
  """HF's model (timm ResNet, no download) with every tensor random: batch-norm statistics and
  affine terms, GroupNorms, and the zero-initialised offset, weight and box-output layers."""
  torch.manual_seed(0)
  model = DeformableDetrForObjectDetection(DeformableDetrConfig(
      use_timm_backbone=True, backbone=backbone, use_pretrained_backbone=False, num_labels=5,
      encoder_layers=2, decoder_layers=2, **config)).eval()
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for key, tensor in model.state_dict().items():
      noise = torch.randn(tensor.shape, generator=generator)
      if key.endswith('running_var'):
        tensor.copy_(noise.abs() + 0.5)
      elif tensor.ndim == 1 and 'backbone' in key:
        tensor.copy_((1.0 if key.endswith('weight') else 0.0) + 0.1 * noise)
      elif 'sampling_offsets' in key:
        tensor.add_(0.5 * noise)  # Offsets of a few pixels: samples across cells and edges.
      elif 'bbox_embed' in key and 'layers.2' in key:
        tensor.add_(0.2 * noise)  # Boxes that differ by query.
      elif tensor.ndim <= 2:
        tensor.add_(0.02 * noise)
  return model


def _padded_batch():
  batch, height, width = 2, 160, 224
  pixel_mask = np.zeros((batch, height, width), np.int64)
  pixel_mask[0] = 1
  pixel_mask[1, :130, :181] = 1  # Not a multiple of the strides: tests the mask rule.
  images = np.random.default_rng(0).normal(size=(batch, 3, height, width))
  return (images * pixel_mask[:, None]).astype(np.float32), pixel_mask


def _compare_with_hf(backbone, blocks, variant):
  fields = {'plain': {}, 'box_refine': {'with_box_refine': True},
            'two_stage': {'with_box_refine': True, 'two_stage': True}}[variant]
  queries = 30
  hf = _randomised_hf(backbone, num_queries=queries, two_stage_num_proposals=queries, **fields)
  variables = deformable_pretrained.convert_state_dict(
      {k: v.numpy() for k, v in hf.state_dict().items()})
  images, pixel_mask = _padded_batch()
  with torch.no_grad():
    expected = hf(pixel_values=torch.from_numpy(images), pixel_mask=torch.from_numpy(pixel_mask))
  model = deformable_models.DeformableDETR(
      num_classes=5, backbone_blocks=blocks, num_encoder_layers=2, num_decoder_layers=2,
      num_queries=queries, **fields)
  ours = jax.jit(model.apply)(variables, jnp.asarray(images.transpose(0, 2, 3, 1)),
                              jnp.asarray(pixel_mask))
  # Float32 round-off through the ResNet, GroupNorms and 4 transformer layers; HF's own tests
  # allow 1e-4 to 2e-4 against stored values.
  np.testing.assert_allclose(ours['logits'][-1], expected.logits.numpy(), rtol=0, atol=1e-4)
  np.testing.assert_allclose(ours['boxes'][-1], expected.pred_boxes.numpy(), rtol=0, atol=1e-5)
  assert np.abs(expected.logits.numpy() - expected.logits.numpy().mean()).max() > 0.3
  assert expected.pred_boxes.numpy().std() > 0.05
  if variant == 'two_stage':
    real = np.isfinite(expected.enc_outputs_coord_logits.numpy())
    np.testing.assert_allclose(ours['enc_logits'], expected.enc_outputs_class.numpy(),
                               rtol=0, atol=1e-4)
    np.testing.assert_allclose(
        np.where(real, ours['enc_boxes'], 0),
        np.where(real, torch.sigmoid(expected.enc_outputs_coord_logits).numpy(), 0), atol=1e-5)
    assert (~real).any() and real.any()  # Padded tokens' proposals are +inf, as the original.
  return ours


@pytest.mark.slow
@pytest.mark.parametrize('backbone, blocks, variant', [
    ('resnet50', None, 'plain'),
    ('resnet26', (2, 2, 2, 2), 'box_refine'),  # timm's ResNet-26: bottlenecks (2, 2, 2, 2).
    ('resnet26', (2, 2, 2, 2), 'two_stage'),
])
def test_same_outputs_as_hf_on_a_padded_batch(backbone, blocks, variant):
  _compare_with_hf(backbone, blocks, variant)
