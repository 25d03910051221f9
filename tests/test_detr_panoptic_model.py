"""Panoptic DETR: mask head parity with HF transformers' DetrForSegmentation on the same random
weights, the mask losses against torch/torchvision on the same inputs, the released panoptic
checkpoint layouts, and freezing the box model."""

import os
import runpy
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torchvision
from ml_collections import ConfigDict
from transformers import DetrConfig, DetrForSegmentation
from transformers.models.detr.modeling_detr import DetrMHAttentionMap

from detr_jax import mask_losses, models, panoptic_model, pretrained
from helpers import ROOT, official_detr_state_dict, randomise_hf_detr
from vit_jax.framework import optim
from vit_jax.framework.errors import UserError

# A small panoptic DETR for the fast tests: mask-head widths 72, 32, 16, 8, 4.
_TINY = dict(num_classes=4, backbone_blocks=(1, 1, 1, 1), backbone_width=8, hidden_dim=64,
             num_queries=5, num_encoder_layers=1, num_decoder_layers=1, num_heads=8, mlp_dim=32)


def _randomised_hf_segmentation(dilation: bool):
  """HF's DetrForSegmentation (timm ResNet-50, no download, 2 + 2 transformer layers) with every
  tensor random."""
  torch.manual_seed(0)
  config = DetrConfig(use_timm_backbone=True, backbone='resnet50', use_pretrained_backbone=False,
                      num_labels=5, dilation=dilation, num_queries=10, encoder_layers=2,
                      decoder_layers=2)
  return randomise_hf_detr(DetrForSegmentation(config).eval())


@pytest.mark.slow
@pytest.mark.parametrize('dilation', [False, True], ids=['R50', 'DC5-R50'])
def test_same_masks_and_logits_as_hf_transformers_on_a_padded_batch(dilation):
  hf = _randomised_hf_segmentation(dilation)
  variables = pretrained.convert_state_dict({k: v.numpy() for k, v in hf.state_dict().items()})
  batch, height, width = 2, 96, 130
  pixel_mask = np.zeros((batch, height, width), np.int64)
  pixel_mask[0] = 1
  pixel_mask[1, :70, :101] = 1  # Not a multiple of the strides: the nearest rules matter.
  images = np.random.default_rng(0).normal(size=(batch, 3, height, width))
  images = (images * pixel_mask[:, None]).astype(np.float32)
  with torch.no_grad():
    expected = hf(pixel_values=torch.from_numpy(images), pixel_mask=torch.from_numpy(pixel_mask))
  model = panoptic_model.build_detr_panoptic(dict(
      num_classes=5, dilation=dilation, num_queries=10, num_encoder_layers=2,
      num_decoder_layers=2))
  ours = jax.jit(model.apply)(variables, jnp.asarray(images.transpose(0, 2, 3, 1)),
                              jnp.asarray(pixel_mask))
  assert ours['masks'].shape == expected.pred_masks.shape == (batch, 10, 24, 33)
  # Float32 round-off through 50 conv layers, 4 transformer layers and the 6 mask-head convs
  # (measured: 5e-7 on logits, 6e-6 on masks of mean magnitude 0.29).
  np.testing.assert_allclose(ours['logits'][-1], expected.logits.numpy(), atol=1e-4)
  np.testing.assert_allclose(ours['boxes'][-1], expected.pred_boxes.numpy(), atol=1e-4)
  np.testing.assert_allclose(ours['masks'], expected.pred_masks.numpy(), atol=1e-4)
  assert np.abs(expected.pred_masks.numpy()).mean() > 0.1  # Not a comparison of near-zeros.


def test_attention_maps_equal_hf_transformers_on_a_padded_memory():
  """Queries over keys only, one softmax over heads x positions, no weight on padding."""
  torch.manual_seed(0)
  hf = DetrMHAttentionMap(32, 4).eval()
  hidden, memory = torch.randn(2, 3, 32), torch.randn(2, 32, 5, 6)
  mask = torch.ones(2, 5, 6, dtype=torch.bool)
  mask[1, 3:], mask[1, :, 4:] = False, False
  with torch.no_grad():
    expected = hf(hidden, memory, attention_mask=torch.where(
        mask[:, None, None], 0., torch.finfo(torch.float32).min)).numpy()
  linear = lambda layer: {'kernel': layer.weight.detach().numpy().T,
                          'bias': layer.bias.detach().numpy()}
  ours = panoptic_model.AttentionMap(4).apply(
      {'params': {'q_linear': linear(hf.q_proj), 'k_linear': linear(hf.k_proj)}},
      jnp.asarray(hidden.numpy()), jnp.asarray(memory.numpy().transpose(0, 2, 3, 1)),
      jnp.asarray(mask.numpy()))
  assert ours.shape == expected.shape == (2, 3, 4, 5, 6)
  np.testing.assert_allclose(ours, expected, atol=1e-7)
  np.testing.assert_allclose(ours.sum((2, 3, 4)), 1, rtol=1e-6)  # Over heads and positions.
  assert np.all(ours[1, :, :, 3:] == 0) and np.all(ours[1, :, :, :, 4:] == 0)


def _torch_mask_losses(pred_masks, target_masks, pairs, num_boxes):
  """The original's loss_masks written in torch: matched predictions upsampled bilinearly
  (align_corners=False) to the targets' size, torchvision's focal loss averaged over pixels,
  DICE with +1 smoothing, both summed over pairs / num_boxes."""
  src = torch.stack([torch.from_numpy(pred_masks[b, q]) for b, q, _ in pairs])
  tgt = torch.stack([torch.from_numpy(target_masks[b, t]) for b, _, t in pairs]).flatten(1)
  src = torch.nn.functional.interpolate(src[:, None], size=target_masks.shape[-2:],
                                        mode='bilinear', align_corners=False)[:, 0].flatten(1)
  focal = torchvision.ops.sigmoid_focal_loss(src, tgt, alpha=0.25, gamma=2, reduction='none')
  prob = src.sigmoid()
  dice = 1 - (2 * (prob * tgt).sum(1) + 1) / (prob.sum(1) + tgt.sum(1) + 1)
  return focal.mean(1).sum().item() / num_boxes, dice.sum().item() / num_boxes


def test_mask_losses_equal_the_originals_computed_in_torch():
  rng = np.random.default_rng(0)
  pred_masks = rng.normal(0, 3, (2, 6, 9, 11)).astype(np.float32)  # [B, Q, h, w] at stride 4.
  target_masks = (rng.random((2, 4, 36, 44)) > 0.6).astype(np.float32)  # [B, T, H, W].
  target_masks[1, :, 30:] = 0  # Image padding.
  target_mask = np.array([[1, 1, 0, 1], [1, 0, 0, 0]])  # Padded slots anywhere.
  target_query = np.array([[4, 0, -1, 2], [5, -1, -1, -1]])
  pairs = [(0, 4, 0), (0, 0, 1), (0, 2, 3), (1, 5, 0)]  # (image, query, slot)
  num_boxes = 4
  want_focal, want_dice = _torch_mask_losses(pred_masks, target_masks, pairs, num_boxes)
  total, metrics = mask_losses.mask_loss(
      jnp.asarray(pred_masks), jnp.asarray(target_masks), jnp.asarray(target_mask),
      jnp.asarray(target_query), num_boxes=jnp.float32(num_boxes), mask_weight=1., dice_weight=2.)
  np.testing.assert_allclose(metrics['loss_mask'], want_focal, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss_dice'], want_dice, rtol=1e-5)
  np.testing.assert_allclose(total, want_focal + 2 * want_dice, rtol=1e-5)
  # A micro-batch divides by the global batch's count: halves when it has half the boxes.
  _, half = mask_losses.mask_loss(
      jnp.asarray(pred_masks), jnp.asarray(target_masks), jnp.asarray(target_mask),
      jnp.asarray(target_query), num_boxes=jnp.float32(2 * num_boxes))
  np.testing.assert_allclose(half['loss_dice'], want_dice / 2, rtol=1e-5)


def _released_panoptic_state_dict(depth: int):
  """A random state dict in the layout of the released detr-r50/-dc5/-r101-panoptic `.pth`
  files: the box model (250 classes) under `detr.`, then MHAttentionMap and MaskHeadSmallConv
  with the original's widths (264, 128, 64, 32, 16; adapters from 1024, 512, 256 channels)."""
  state = {f'detr.{k}': v for k, v in official_detr_state_dict().items()}
  state['detr.class_embed.weight'], state['detr.class_embed.bias'] = (torch.randn(251, 256),
                                                                      torch.randn(251))
  if depth == 101:
    state = {k: v for k, v in state.items() if not k.startswith('detr.backbone.')}
    for key, value in torchvision.models.resnet101().state_dict().items():
      if not key.startswith('fc.') and not key.endswith('num_batches_tracked'):
        state[f'detr.backbone.0.body.{key}'] = value
  for name in ('q_linear', 'k_linear'):
    state[f'bbox_attention.{name}.weight'] = torch.randn(256, 256)
    state[f'bbox_attention.{name}.bias'] = torch.randn(256)
  widths = [264, 128, 64, 32, 16]
  for i, (inp, out) in enumerate(zip(widths[:1] + widths[:-1], widths)):
    state[f'mask_head.lay{i + 1}.weight'] = torch.randn(out, inp, 3, 3)
    state[f'mask_head.lay{i + 1}.bias'] = torch.randn(out)
    state[f'mask_head.gn{i + 1}.weight'] = torch.randn(out)
    state[f'mask_head.gn{i + 1}.bias'] = torch.randn(out)
  state['mask_head.out_lay.weight'], state['mask_head.out_lay.bias'] = (torch.randn(1, 16, 3, 3),
                                                                        torch.randn(1))
  for i, (inp, out) in enumerate([(1024, 128), (512, 64), (256, 32)]):
    state[f'mask_head.adapter{i + 1}.weight'] = torch.randn(out, inp, 1, 1)
    state[f'mask_head.adapter{i + 1}.bias'] = torch.randn(out)
  return state


@pytest.mark.parametrize('depth, dilation', [(50, False), (50, True), (101, False)],
                         ids=['detr-r50-panoptic', 'detr-r50-dc5-panoptic', 'detr-r101-panoptic'])
def test_released_panoptic_layouts_convert_completely(tmp_path, depth, dilation):
  state = _released_panoptic_state_dict(depth)
  path = str(tmp_path / 'panoptic.pth')
  torch.save({'model': state}, path)
  loaded = pretrained.load_variables(path)
  model = panoptic_model.DETRPanoptic(models.DETR(num_classes=250, backbone_depth=depth,
                                                  dilation=dilation))
  fresh = flax.linen.meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), jnp.ones((1, 64, 64)))))
  assert jax.tree.map(np.shape, loaded) == jax.tree.map(np.shape, fresh)
  np.testing.assert_array_equal(loaded['params']['mask_head']['lay2']['kernel'],
                                state['mask_head.lay2.weight'].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(loaded['params']['mask_head']['gn5']['scale'],
                                state['mask_head.gn5.weight'])
  np.testing.assert_array_equal(loaded['params']['bbox_attention']['k_linear']['kernel'],
                                state['bbox_attention.k_linear.weight'].numpy().T)
  np.testing.assert_array_equal(loaded['frozen']['detr']['backbone']['layer3_5']['bn2']['var'],
                                state['detr.backbone.0.body.layer3.5.bn2.running_var'])


def test_converter_script_writes_a_panoptic_npz(tmp_path, monkeypatch, capsys):
  source, output = str(tmp_path / 'panoptic.pth'), str(tmp_path / 'panoptic.npz')
  state = _released_panoptic_state_dict(50)
  torch.save({'model': state}, source)
  script = os.path.join(ROOT, 'scripts', 'convert_detr_checkpoint.py')
  monkeypatch.setattr(sys, 'argv', [script, source, output])
  runpy.run_path(script, run_name='__main__')  # In this process: torch and jax are loaded.
  printed = capsys.readouterr().out
  # The box model's 41,524,768 with 250 classes (+40,863), and the heads' tensors.
  heads = sum(v.numel() for k, v in state.items() if not k.startswith('detr.'))
  assert f'{41_524_768 + 40_863 + heads:,} parameters' in printed
  assert '250 classes + no-object, panoptic mask head' in printed
  loaded = pretrained.load_variables(output)
  np.testing.assert_array_equal(loaded['params']['detr']['query_embed'],
                                state['detr.query_embed.weight'])


@pytest.fixture(scope='module')
def tiny_variables():
  """A small panoptic DETR's variables: random values in the shapes init gives (compiling init
  would take longer than the tests below), batch-norm variances positive."""
  model = panoptic_model.build_detr_panoptic(_TINY)
  images, mask = jnp.zeros((1, 64, 64, 3)), jnp.ones((1, 64, 64))
  shapes = flax.linen.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), images, mask))
  rng = np.random.default_rng(0)
  return {'params': jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype),
                                 shapes['params']),
          'frozen': jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(s.dtype),
                                 shapes['frozen'])}


def test_a_box_model_checkpoint_fills_the_panoptic_models_detr(tiny_variables):
  fresh = tiny_variables
  # A trained box model (the recipe's first stage): not the fresh values.
  stage_one = {c: jax.tree.map(lambda x: x + 1, fresh[c]['detr']) for c in ('params', 'frozen')}
  fitted = pretrained.fit_variables(fresh, stage_one)
  assert jax.tree.map(np.shape, fitted) == jax.tree.map(np.shape, fresh)
  for collection in ('params', 'frozen'):
    jax.tree.map(np.testing.assert_array_equal, fitted[collection]['detr'], stage_one[collection])
  jax.tree.map(np.testing.assert_array_equal, fitted['params']['mask_head'],
               fresh['params']['mask_head'])
  # And back: a DETR takes the box model out of a panoptic checkpoint.
  fitted = pretrained.fit_variables(stage_one, fresh)
  jax.tree.map(np.testing.assert_array_equal, fitted['params'], fresh['params']['detr'])


@pytest.mark.slow
def test_freezing_the_box_model_trains_only_the_mask_head(tiny_variables):
  """The second stage: no gradient reaches `detr` (so clipping sees the mask head's alone) and
  lr_mults 0 keeps AdamW's weight decay off it: after a step only the mask head has moved."""
  model = panoptic_model.build_detr_panoptic(dict(_TINY, freeze_detr=True))
  variables = tiny_variables
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 64, 3))

  def loss(params):
    outputs = model.apply({**variables, 'params': params}, images, jnp.ones((2, 64, 64)),
                          train=True, rngs={'dropout': jax.random.PRNGKey(2)})
    return jnp.sum(outputs['masks'] ** 2) + jnp.sum(outputs['logits'] ** 2)

  grads = jax.jit(jax.grad(loss))(variables['params'])
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads['detr']))
  assert all(np.any(g != 0) for g in jax.tree.leaves(grads['mask_head']))
  config = ConfigDict(dict(name='adamw', lr=1e-2, weight_decay=1e-1, grad_clip_norm=0.1,
                           lr_mults=((r'detr/.*', 0.),)))
  tx, _ = optim.make_optimizer(config, total_steps=10)
  step = jax.jit(lambda g, p: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))
  params = step(grads, variables['params'])
  jax.tree.map(np.testing.assert_array_equal, params['detr'], variables['params']['detr'])
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), params['mask_head'],
                       variables['params']['mask_head'])
  assert all(jax.tree.leaves(moved))


def test_mask_head_widths_that_group_norm_cannot_split_are_refused():
  with pytest.raises(UserError, match=r'cannot use hidden_dim 96 with num_heads 8: .*'
                                      r'multiples of 8'):
    panoptic_model.build_detr_panoptic(dict(_TINY, hidden_dim=96))
  with pytest.raises(UserError, match=r'unknown DETR model fields \[.freeze\b'):
    panoptic_model.build_detr_panoptic(dict(_TINY, freeze=True))
