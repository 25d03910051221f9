"""Multi-scale deformable attention: the operator against the original's pure-PyTorch core
(`ms_deform_attn_core_pytorch`'s math: F.grid_sample per level, bilinear, zeros, align_corners
False) and against autodiff of a direct per-corner formulation, values and gradients; the module
against HF's DeformableDetrMultiscaleDeformableAttention on the same weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import DeformableDetrConfig
from transformers.models.deformable_detr import modeling_deformable_detr as hf_modeling

from detr_jax import deformable_attention

# The original's models/ops/test.py sizes, plus a third level and more queries and points.
SHAPES = ((6, 4), (3, 2), (1, 1))
BATCH, QUERIES, HEADS, CHANNELS, POINTS = 2, 5, 2, 3, 3


def _case(seed=0, dtype=np.float64):
  rng = np.random.default_rng(seed)
  tokens = sum(h * w for h, w in SHAPES)
  return {
      'value': rng.normal(size=(BATCH, tokens, HEADS, CHANNELS)).astype(dtype),
      # A fifth of the points off the maps, so that zero padding is exercised.
      'locations': rng.uniform(-0.15, 1.15, (BATCH, QUERIES, HEADS, len(SHAPES), POINTS, 2))
                   .astype(dtype),
      'weights': rng.uniform(0, 1, (BATCH, QUERIES, HEADS, len(SHAPES), POINTS)).astype(dtype),
  }


def ms_deform_attn_core_pytorch(value, spatial_shapes, locations, weights):
  """The original's pure-PyTorch core (models/ops/functions/ms_deform_attn_func.py), its math
  written here: per level the map [N * M, D, H, W] sampled by grid_sample at 2 * loc - 1."""
  n, _, m, d = value.shape
  _, q, _, levels, points, _ = locations.shape
  maps = value.split([h * w for h, w in spatial_shapes], dim=1)
  grids = 2 * locations - 1
  sampled = []
  for level, (h, w) in enumerate(spatial_shapes):
    level_map = maps[level].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
    grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [N * M, Q, P, 2]
    sampled.append(F.grid_sample(level_map, grid, mode='bilinear', padding_mode='zeros',
                                 align_corners=False))  # [N * M, D, Q, P]
  weights = weights.transpose(1, 2).reshape(n * m, 1, q, levels * points)
  out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(n, m * d, q)
  return out.transpose(1, 2)


def _direct(value, spatial_shapes, locations, weights):
  """Bilinear sampling written per corner on each unpadded map: value[y, x] where the corner is
  on the map, 0 elsewhere, weighted by (1 - |dx|)(1 - |dy|)."""
  b, _, m, d = value.shape
  out, start = 0, 0
  batch = jnp.arange(b)[:, None, None, None]
  head = jnp.arange(m)[None, None, :, None]
  for level, (h, w) in enumerate(spatial_shapes):
    level_map = value[:, start:start + h * w].reshape(b, h, w, m, d)
    start += h * w
    x = locations[:, :, :, level, :, 0] * w - 0.5  # [B, Q, M, P]
    y = locations[:, :, :, level, :, 1] * h - 0.5
    for cx in (jnp.floor(x), jnp.floor(x) + 1):
      for cy in (jnp.floor(y), jnp.floor(y) + 1):
        on_map = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
        corner = level_map[batch, jnp.clip(cy, 0, h - 1).astype(int),
                           jnp.clip(cx, 0, w - 1).astype(int), head]  # [B, Q, M, P, D]
        bilinear = (1 - jnp.abs(x - cx)) * (1 - jnp.abs(y - cy)) * on_map
        out += jnp.einsum('bqmpd,bqmp->bqmd', corner,
                          bilinear * weights[:, :, :, level])
  return out.reshape(b, locations.shape[1], m * d)


def _torch_value_and_grads(case, cotangent):
  tensors = {k: torch.tensor(v, requires_grad=True) for k, v in case.items()}
  out = ms_deform_attn_core_pytorch(tensors['value'], SHAPES, tensors['locations'],
                                    tensors['weights'])
  (out * torch.tensor(cotangent)).sum().backward()
  return out.detach().numpy(), {k: t.grad.numpy() for k, t in tensors.items()}


def _jax_value_and_grads(function, case, cotangent):
  def loss(args):
    out = function(args['value'], SHAPES, args['locations'], args['weights'])
    return (out * cotangent).sum(), out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      jax.tree.map(jnp.asarray, case))  # One compile, not one per operation.
  return out, grads


def _cotangent(case):
  shape = (BATCH, QUERIES, HEADS * CHANNELS)
  return np.random.default_rng(1).normal(size=shape).astype(case['value'].dtype)


def test_float64_values_and_gradients_match_grid_sample_and_the_direct_formulation():
  with jax.enable_x64(True):
    case = _case()
    cotangent = _cotangent(case)
    expected, expected_grads = _torch_value_and_grads(case, cotangent)
    ours, grads = _jax_value_and_grads(deformable_attention.deformable_sample, case, cotangent)
    direct, direct_grads = _jax_value_and_grads(_direct, case, cotangent)
    assert ours.dtype == jnp.float64
    # Round-off only: float64 sums of a few dozen O(1) terms.
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(direct, expected, rtol=0, atol=1e-12)
    for name in case:
      np.testing.assert_allclose(grads[name], expected_grads[name], rtol=0, atol=1e-11,
                                 err_msg=name)
      np.testing.assert_allclose(direct_grads[name], expected_grads[name], rtol=0, atol=1e-11,
                                 err_msg=name)
    assert np.abs(expected_grads['locations']).max() > 0.1  # Not a comparison of zeros.
    # Points off the maps: some contribute nothing at all, some through a corner only.
    assert (expected_grads['locations'] == 0).any()


def test_float32_matches_grid_sample_and_bfloat16_inputs_compute_in_float32():
  case = _case(seed=2, dtype=np.float32)
  cotangent = _cotangent(case)
  expected, expected_grads = _torch_value_and_grads(case, cotangent)
  ours, grads = _jax_value_and_grads(deformable_attention.deformable_sample, case, cotangent)
  # The original's float32 CUDA-vs-PyTorch check allows rtol 1e-2, atol 1e-3; this is 1e3
  # tighter (float32 round-off on O(1) values).
  np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-6)
  for name in case:
    np.testing.assert_allclose(grads[name], expected_grads[name], rtol=1e-5, atol=2e-5,
                               err_msg=name)
  half = {k: jnp.asarray(v, jnp.bfloat16) for k, v in case.items()}
  from_half = jax.jit(deformable_attention.deformable_sample, static_argnums=1)(
      half['value'], SHAPES, half['locations'], half['weights'])
  assert from_half.dtype == jnp.float32
  rounded = {k: np.asarray(v.astype(jnp.float32)) for k, v in half.items()}
  np.testing.assert_allclose(from_half, _torch_value_and_grads(rounded, cotangent)[0],
                             rtol=0, atol=2e-6)  # The bfloat16 inputs, sampled in float32.


def test_a_point_reference_in_four_coordinates_samples_as_the_point():
  rng = np.random.default_rng(3)
  points = rng.uniform(0, 1, (BATCH, QUERIES, len(SHAPES), 2)).astype(np.float32)
  boxes = np.concatenate([points, rng.uniform(0.1, 0.5, points.shape).astype(np.float32)], -1)
  offsets = rng.normal(size=(BATCH, QUERIES, HEADS, len(SHAPES), POINTS, 2)).astype(np.float32)
  from_points = deformable_attention.sampling_locations(points, offsets, SHAPES)
  np.testing.assert_array_equal(
      deformable_attention.sampling_locations(boxes, offsets, SHAPES, jnp.array(False)),
      from_points)
  # Boxes: offsets in units of P / 2 of the box's size.
  np.testing.assert_allclose(
      deformable_attention.sampling_locations(boxes, offsets, SHAPES),
      points[:, :, None, :, None] + offsets / POINTS * boxes[:, :, None, :, None, 2:] / 2,
      rtol=1e-6)


def _hf_attention(levels, heads, points, width):
  config = DeformableDetrConfig(d_model=width, num_feature_levels=levels,
                                encoder_attention_heads=heads, encoder_n_points=points)
  torch.manual_seed(0)
  module = hf_modeling.DeformableDetrMultiscaleDeformableAttention(config, heads, points).eval()
  with torch.no_grad():
    for tensor in module.state_dict().values():
      tensor.copy_(torch.randn(tensor.shape) * 0.3)
  return module


@pytest.mark.parametrize('coordinates', [2, 4])
def test_module_matches_hf_on_the_same_weights(coordinates):
  levels, heads, points, width = len(SHAPES), 2, 3, 16
  hf = _hf_attention(levels, heads, points, width)
  rng = np.random.default_rng(coordinates)
  tokens = sum(h * w for h, w in SHAPES)
  query = rng.normal(size=(BATCH, QUERIES, width)).astype(np.float32)
  source = rng.normal(size=(BATCH, tokens, width)).astype(np.float32)
  mask = rng.random((BATCH, tokens)) < 0.8
  reference = rng.uniform(0.1, 0.9, (BATCH, QUERIES, levels, coordinates)).astype(np.float32)
  with torch.no_grad():
    expected, _ = hf(hidden_states=torch.tensor(query), attention_mask=torch.tensor(mask),
                     encoder_hidden_states=torch.tensor(source),
                     reference_points=torch.tensor(reference),
                     spatial_shapes=torch.tensor(SHAPES), spatial_shapes_list=list(SHAPES),
                     level_start_index=None)
  params = {name: {'kernel': hf.state_dict()[f'{name}.weight'].numpy().T,
                   'bias': hf.state_dict()[f'{name}.bias'].numpy()}
            for name in ('sampling_offsets', 'attention_weights', 'value_proj', 'output_proj')}
  ours = jax.jit(deformable_attention.MultiScaleDeformableAttention(SHAPES, heads, points).apply)(
      {'params': params}, query, reference, source, mask)
  np.testing.assert_allclose(ours, expected.numpy(), rtol=0, atol=1e-5)
  assert np.abs(expected.numpy()).max() > 0.5


def test_init_is_the_originals():
  levels, heads, points, width = 4, 8, 4, 256
  module = deformable_attention.MultiScaleDeformableAttention(((4, 4),) * levels, heads, points)
  tokens = 16 * levels
  params = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 3, width)),
                       jnp.full((1, 3, levels, 2), 0.5), jnp.zeros((1, tokens, width)),
                       jnp.ones((1, tokens)))['params']
  params = jax.tree.map(np.asarray, jax.device_get(jax.tree.map(
      lambda x: getattr(x, 'value', x), params, is_leaf=lambda x: hasattr(x, 'value'))))
  # The original's _reset_parameters, in torch.
  thetas = torch.arange(heads, dtype=torch.float32) * (2.0 * np.pi / heads)
  grid = torch.stack([thetas.cos(), thetas.sin()], -1)
  grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(heads, 1, 1, 2).repeat(
      1, levels, points, 1)
  for i in range(points):
    grid[:, :, i, :] *= i + 1
  np.testing.assert_allclose(params['sampling_offsets']['bias'], grid.view(-1).numpy(),
                             atol=1e-6)
  assert not params['sampling_offsets']['kernel'].any()
  assert not params['attention_weights']['kernel'].any()
  assert not params['attention_weights']['bias'].any()
  bound = np.sqrt(6 / (2 * width))  # xavier_uniform on the 256 x 256 projections.
  assert 0.9 * bound < np.abs(params['value_proj']['kernel']).max() <= bound
