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
from vit_jax.framework import weights


def _abstract_variables(**fields):
  model = deformable_models.DeformableDETR(**fields)
  return flax.linen.meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 128, 128, 3)),
                         jnp.ones((1, 128, 128)))))


def _zeros(abstract):
  return np.zeros(abstract.shape, abstract.dtype)


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


def _official_state_dict(variant='deformable', decoder_layers=6, classes=91):
  """Random tensors in the released checkpoints' layout (reference sheet §5), built from the
  original's module shapes: torchvision's ResNet-50 body, input_proj.N.{0: conv, 1: GN},
  MSDeformAttn's four Linears, torch's MultiheadAttention for the decoder's self-attention, and
  the heads saved once per name (shared or per-layer modules, and the decoder's aliases)."""
  generator = torch.Generator().manual_seed(0)
  rand = lambda *shape: torch.randn(shape, generator=generator)
  refine = variant in ('box_refine', 'two_stage')
  two_stage = variant == 'two_stage'
  levels = 1 if variant == 'single_scale' else 4
  d, ffn, queries = 256, 1024, 300
  state = {f'backbone.0.body.{k}': v for k, v in torchvision.models.resnet50().state_dict().items()
           if not k.startswith('fc.') and not k.endswith('num_batches_tracked')}
  channels = [2048] if levels == 1 else [512, 1024, 2048, 2048]
  for level, c in enumerate(channels):
    kernel = 3 if level == 3 else 1
    state.update({f'input_proj.{level}.0.weight': rand(d, c, kernel, kernel),
                  f'input_proj.{level}.0.bias': rand(d), f'input_proj.{level}.1.weight': rand(d),
                  f'input_proj.{level}.1.bias': rand(d)})
  state['transformer.level_embed'] = rand(levels, d)

  def msda(prefix):
    sampling = 8 * levels * 4
    for name, out in (('sampling_offsets', 2 * sampling), ('attention_weights', sampling),
                      ('value_proj', d), ('output_proj', d)):
      state.update({f'{prefix}.{name}.weight': rand(out, d), f'{prefix}.{name}.bias': rand(out)})

  def linear(prefix, out, inp):
    state.update({f'{prefix}.weight': rand(out, inp), f'{prefix}.bias': rand(out)})

  for i in range(6):
    prefix = f'transformer.encoder.layers.{i}'
    msda(f'{prefix}.self_attn')
    for name, out, inp in (('norm1', d, None), ('linear1', ffn, d), ('linear2', d, ffn),
                           ('norm2', d, None)):
      linear(f'{prefix}.{name}', out, inp) if inp else state.update(
          {f'{prefix}.{name}.weight': rand(d), f'{prefix}.{name}.bias': rand(d)})
  for i in range(decoder_layers):
    prefix = f'transformer.decoder.layers.{i}'
    msda(f'{prefix}.cross_attn')
    for key, value in torch.nn.MultiheadAttention(d, 8).state_dict().items():
      state[f'{prefix}.self_attn.{key}'] = rand(*value.shape)
    linear(f'{prefix}.linear1', ffn, d)
    linear(f'{prefix}.linear2', d, ffn)
    for name in ('norm1', 'norm2', 'norm3'):
      state.update({f'{prefix}.{name}.weight': rand(d), f'{prefix}.{name}.bias': rand(d)})
  heads = decoder_layers + two_stage
  shared = {}
  for i in range(heads):
    if not refine and i:  # One module saved under every name.
      state.update({k.replace('.0.', f'.{i}.', 1): v for k, v in shared.items()})
      continue
    head = {}
    linear_into = lambda key, out, inp: head.update({f'{key}.weight': rand(out, inp),
                                                     f'{key}.bias': rand(out)})
    linear_into(f'class_embed.{i}', classes, d)
    for j, out in enumerate((d, d, 4)):
      linear_into(f'bbox_embed.{i}.layers.{j}', out, d)
    shared = head
    state.update(head)
  if refine:
    state.update({f'transformer.decoder.{k}': v for k, v in state.items()
                  if k.startswith('bbox_embed.') or (two_stage and k.startswith('class_embed.'))})
  if two_stage:
    linear('transformer.enc_output', d, d)
    linear('transformer.pos_trans', 2 * d, 2 * d)
    for name, width in (('enc_output_norm', d), ('pos_trans_norm', 2 * d)):
      state.update({f'transformer.{name}.weight': rand(width),
                    f'transformer.{name}.bias': rand(width)})
  else:
    state['query_embed.weight'] = rand(queries, 2 * d)
    linear('transformer.reference_points', 2, d)
  return state


@pytest.mark.slow
@pytest.mark.parametrize('variant, keys, fields', [
    ('deformable', 561, {}),
    ('box_refine', 597, {'with_box_refine': True}),
    ('two_stage', 630, {'with_box_refine': True, 'two_stage': True}),
    ('single_scale', 549, {'num_feature_levels': 1}),
])
def test_released_layouts_convert_completely(tmp_path, variant, keys, fields):
  state = _official_state_dict(variant)
  assert len(state) == keys  # The reference sheet's key totals.
  path = str(tmp_path / 'checkpoint.pth')
  torch.save({'model': state, 'epoch': 49}, path)
  loaded = deformable_pretrained.load_variables(path)
  assert jax.tree.map(np.shape, loaded) == jax.tree.map(
      np.shape, _abstract_variables(num_classes=91, **fields))
  params = loaded['params']
  np.testing.assert_array_equal(params['level_embed'], state['transformer.level_embed'])
  np.testing.assert_array_equal(
      params['decoder']['layers_1']['self_attn']['key']['kernel'].reshape(256, 256),
      state['transformer.decoder.layers.1.self_attn.in_proj_weight'][256:512].T)
  np.testing.assert_array_equal(params['input_proj_0']['norm']['scale'],
                                state['input_proj.0.1.weight'])
  if variant == 'box_refine':  # Layer 3's own box head, in its decoder layer.
    np.testing.assert_array_equal(
        params['decoder']['layers_3']['bbox_embed']['layers_2']['kernel'],
        state['bbox_embed.3.layers.2.weight'].T)
    np.testing.assert_array_equal(params['class_embed_5']['bias'], state['class_embed.5.bias'])
  if variant == 'two_stage':  # The encoder's proposal heads: index 6.
    np.testing.assert_array_equal(params['bbox_embed_6']['layers_0']['bias'],
                                  state['bbox_embed.6.layers.0.bias'])


@pytest.mark.slow
def test_converter_script_and_fitting_a_scanned_model(tmp_path):
  source, output = str(tmp_path / 'ddetr.pth'), str(tmp_path / 'ddetr.npz')
  state = _official_state_dict('box_refine')
  torch.save({'model': state}, source)
  script = os.path.join(ROOT, 'scripts', 'convert_detr_checkpoint.py')
  result = subprocess.run([sys.executable, script, source, output], capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  # All parameters: the trainable ones and the frozen stem and layer1 (222,400).
  assert ('40,849,660 parameters, 106,240 frozen batch-norm values, Deformable DETR with 91 '
          'sigmoid classes') in result.stdout
  fresh = jax.tree.map(_zeros, _abstract_variables(num_classes=91, with_box_refine=True,
                                                          scan=True))
  fitted = deformable_pretrained.fit_variables(fresh, deformable_pretrained.load_variables(output))
  np.testing.assert_array_equal(
      fitted['params']['decoder']['layers']['cross_attn']['sampling_offsets']['kernel'][4],
      state['transformer.decoder.layers.4.cross_attn.sampling_offsets.weight'].numpy().T)


@pytest.mark.slow
def test_hf_files_load_and_fine_tuning_keeps_a_fresh_class_head(tmp_path):
  hf = _randomised_hf('resnet26', num_queries=30, with_box_refine=True)
  path = str(tmp_path / 'hf.pth')
  torch.save(hf.state_dict(), path)
  loaded = deformable_pretrained.load_variables(path)
  fresh = jax.tree.map(_zeros, _abstract_variables(
      num_classes=3, backbone_blocks=(2, 2, 2, 2), num_encoder_layers=2, num_decoder_layers=2,
      num_queries=30, with_box_refine=True))
  fitted = deformable_pretrained.fit_variables(fresh, loaded)
  assert not fitted['params']['class_embed_1']['kernel'].any()  # 3 classes, not HF's 5.
  np.testing.assert_array_equal(
      fitted['params']['decoder']['layers_1']['bbox_embed']['layers_0']['kernel'],
      hf.state_dict()['bbox_embed.1.layers.0.weight'].numpy().T)


@pytest.mark.slow
def test_scanned_and_rematerialised_layers_give_the_same_outputs():
  small = dict(num_classes=3, backbone_blocks=(1, 1, 1, 1), backbone_width=16,
               backbone_norm='group', hidden_dim=64, num_queries=10, num_encoder_layers=2,
               num_decoder_layers=3, num_heads=4, mlp_dim=64, with_box_refine=True,
               two_stage=True)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 96, 3)), jnp.float32)
  mask = jnp.ones((2, 64, 96)).at[1, 40:].set(0)
  model = deformable_models.DeformableDETR(**small)
  variables = flax.linen.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), images, mask))
  stacked = weights.unflatten(weights.stack_layers(weights.flatten(variables),
                                                   deformable_pretrained.LAYERS))
  expected = jax.jit(model.apply)(variables, images, mask)
  scanned = deformable_models.DeformableDETR(**small, scan=True, remat='full')
  ours = jax.jit(scanned.apply)(stacked, images, mask)
  for name in ('logits', 'boxes', 'enc_logits', 'enc_boxes'):
    np.testing.assert_allclose(ours[name], expected[name], rtol=0, atol=1e-5, err_msg=name)
