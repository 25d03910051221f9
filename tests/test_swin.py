"""Swin Transformer: logits against timm's `SwinTransformer` on the same random weights, the
official checkpoint layout, and the relative-position-table resize against torch's bicubic
interpolation. (The exact parameter counts and FLOPs: tests/test_model_table.py.)

Random weights: timm's init, then every 1-D parameter (biases, LayerNorm scales and offsets)
perturbed by N(0, 0.05) so that a misplaced bias or norm cannot hide behind zeros and ones.
Logit tolerance: 2e-5 absolute on logits of magnitude ~1 (float32 round-off; reference/swin.md
§7 measured 5.4e-7 for a faithful port and 1.7e-5 for the smallest bug, eps 1e-6).
"""

import os

import numpy as np
import pytest
import torch

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.classification import swin, swin_22k_to_1k, swin_weights
from vit_jax.layers.attention import attend

timm_swin = pytest.importorskip('timm.models.swin_transformer')

TOLERANCE = 2e-5


def _timm_model(size, fields, num_classes=10, seed=0):
  torch.manual_seed(seed)
  peer = timm_swin.SwinTransformer(
      img_size=size, num_classes=num_classes, embed_dim=fields['embed_dim'],
      depths=fields['depths'], num_heads=fields['num_heads'],
      window_size=fields['window_size']).eval()
  with torch.no_grad():
    for param in peer.parameters():
      if param.ndim == 1:
        param.add_(0.05 * torch.randn_like(param))
  return peer


def _numpy_state(peer):
  return {k: v.numpy() for k, v in peer.state_dict().items()}


def _images(size, batch=1, seed=0):
  return np.random.default_rng(seed).standard_normal((batch,) + size + (3,)).astype(np.float32)


def _timm_logits(peer, images):
  with torch.no_grad():
    return peer(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def _our_logits(fields, params, images, num_classes=10):
  model = swin.build_swin(dict(fields, num_classes=num_classes))
  return np.asarray(jax.jit(lambda p, x: model.apply({'params': p}, x))(params, images))


def _check_logits(fields, size, batch=1, num_classes=10):
  peer = _timm_model(size, fields, num_classes)
  params = swin_weights.from_torch(_numpy_state(peer))
  images = _images(size, batch)
  ours, theirs = _our_logits(fields, params, images, num_classes), _timm_logits(peer, images)
  assert np.abs(theirs).max() > 0.1  # Logits that compare something.
  np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)


# Each variant's width, heads and window (224: window 7, 56/28/14/7 tokens a side; 384: window
# 12, 96/48/24/12) at two blocks a stage, a plain and a shifted one: what S adds to T is depth.
REDUCED = {name: dict(swin.decode_variant(name), depths=(2, 2, 2, 2))
           for name in ('S', 'B', 'B-384', 'L-384')}


@pytest.mark.slow
def test_full_swin_t_matches_timm():
  _check_logits(swin.decode_variant('T'), (224, 224), num_classes=1000)


@pytest.mark.slow
@pytest.mark.parametrize('variant', sorted(REDUCED))
def test_reduced_depth_variants_match_timm(variant):
  size = 384 if variant.endswith('384') else 224
  _check_logits(REDUCED[variant], (size, size))


@pytest.mark.slow
def test_non_square_shifted_windows_match_timm():
  """192 x 288: every stage a multiple of the window 3 and larger than it, so each odd block is
  shifted and masked on a non-square map (58 x 72 down to 6 x 9)."""
  _check_logits(dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=3),
                (192, 288), batch=2)


def test_padding_matches_timm_on_unshifted_blocks():
  """68 x 92 with window 5: stage maps 17x23, 9x12 (odd merge padded), 5x6, 3x3, each padded to
  whole windows on the bottom and right. One block a stage, so no shift, where timm pads the
  same way (timm pads after the roll, the detection backbone before; reference/swin.md §6)."""
  _check_logits(dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=5),
                (68, 92))


def test_shift_mask_and_relative_index_match_timm():
  assert np.array_equal(swin.relative_position_index(7),
                        timm_swin.get_relative_position_index(7, 7).numpy())
  for side, window in ((56, 7), (96, 12)):
    block = timm_swin.SwinTransformerBlock(dim=8, input_resolution=(side, side), num_heads=1,
                                           window_size=window, shift_size=window // 2)
    assert np.array_equal(swin.shift_mask(side, side, window, window // 2),
                          block.attn_mask.numpy())


def test_drop_path_rates_rise_over_all_blocks():
  model = swin.build_swin(dict(variant='T', num_classes=10, drop_path_rate=0.2))
  rates = model.drop_path_rates()
  assert [len(r) for r in rates] == [2, 2, 6, 2]
  np.testing.assert_allclose(sum(rates, ()), torch.linspace(0, 0.2, 12).numpy(), atol=1e-7)


@pytest.mark.slow
def test_attend_bias_gradient():
  """attend's written backward for an additive bias broadcast over the batch, against autodiff
  of softmax(q k + bias) v."""
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  q, k, v = (jax.random.normal(key, (3, 2, 5, 4)) for key in keys[:3])
  bias = jax.random.normal(keys[3], (1, 2, 5, 5))
  plain = lambda q, k, v, b: jax.nn.softmax(jnp.einsum('bnth,bnsh->bnts', q, k) + b) @ v
  ours = lambda q, k, v, b: attend(q, k, v, None, None, 1.0, b)
  loss = lambda f: lambda *a: (f(*a) * jnp.arange(4.0)).sum()
  gradients = lambda f: jax.jit(jax.grad(loss(f), argnums=(0, 1, 2, 3)))(q, k, v, bias)
  for got, want in zip(gradients(ours), gradients(plain)):
    np.testing.assert_allclose(got, want, atol=1e-5)


def _official_layout(timm_state):
  """timm's (>= 0.9) state dict in the original's layout: downsampling at the end of the stage
  before, `head.`, and the persistent buffers the original saves."""
  out = {}
  for key, value in timm_state.items():
    parts = key.split('.')
    if parts[0] == 'layers' and parts[2] == 'downsample':
      parts[1] = str(int(parts[1]) - 1)
    if parts[:2] == ['head', 'fc']:
      parts = ['head'] + parts[2:]
    out['.'.join(parts)] = value
  return out


@pytest.mark.slow  # Two models (per block and scanned) compiled.
def test_official_checkpoint_loads_and_round_trips(tmp_path):
  fields = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=3)
  size = (96, 96)
  peer = _timm_model(size, fields)
  # With the buffers the original saves (timm's are not persistent).
  official = _official_layout({**_numpy_state(peer),
                               **{k: v.numpy() for k, v in peer.named_buffers()}})
  assert 'layers.0.downsample.reduction.weight' in official and 'head.weight' in official
  path = os.path.join(tmp_path, 'swin_official.pth')
  torch.save({'model': {k: torch.from_numpy(v) for k, v in official.items()}}, path)

  model = swin.build_swin(dict(fields, num_classes=10))
  images = _images(size)
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), images)['params'])
  fresh = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
  params = swin_weights.load_swin(fresh, path)
  np.testing.assert_allclose(_our_logits(fields, params, images), _timm_logits(peer, images),
                             atol=TOLERANCE, rtol=0)
  timm_state = _numpy_state(peer)
  _check_timm_state(swin_weights.to_timm(params), timm_state)

  # model.scan: the same file into each stage's (plain, shifted) pairs, the same logits.
  scanned = swin.build_swin(dict(fields, num_classes=10, scan=True))
  shapes = nn.meta.unbox(jax.eval_shape(scanned.init, jax.random.PRNGKey(0), images)['params'])
  assert shapes['layers_1']['blocks']['shifted']['norm1']['scale'].shape == (1, 32)
  params = swin_weights.load_swin(jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes),
                                  path)
  np.testing.assert_allclose(
      np.asarray(scanned.apply({'params': params}, images)), _timm_logits(peer, images),
      atol=TOLERANCE, rtol=0)
  _check_timm_state(swin_weights.to_timm(params), timm_state)


def _check_timm_state(ours, timm_state):
  assert set(ours) == set(timm_state)
  for key, value in timm_state.items():
    np.testing.assert_array_equal(ours[key], value, err_msg=key)


def test_relative_tables_resize_as_torch_bicubic():
  table = np.random.default_rng(0).standard_normal((13 * 13, 3)).astype(np.float32)
  for side in (23, 9):  # Window 7 -> 12 (fine-tuning at 384) and down to 5.
    want = torch.nn.functional.interpolate(
        torch.from_numpy(table).permute(1, 0).reshape(1, 3, 13, 13), size=(side, side),
        mode='bicubic').reshape(3, side * side).permute(1, 0).numpy()
    np.testing.assert_allclose(swin_weights.resize_table(table, side * side), want, atol=1e-5)


def test_backbone_features_are_timm_stage_outputs_normed():
  """classifier 'features': the four stage outputs (strides 4-32) through fresh LayerNorms
  (scale 1, offset 0 at init), against timm's forward_intermediates normalised the same way;
  the classifier's norm and head are left out of the loaded checkpoint."""
  fields = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=3)
  size = (96, 96)
  peer = _timm_model(size, fields)
  images = _images(size)
  model = swin.build_swin(dict(fields, num_classes=None, classifier='features'))
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), images)['params'])
  assert 'head' not in shapes and 'norm' not in shapes
  params = swin_weights.from_torch(_numpy_state(peer))
  del params['norm'], params['head']
  for i in range(4):  # Fresh stage norms, as initialised.
    params[f'norm{i}'] = dict(scale=np.ones(shapes[f'norm{i}']['scale'].shape, np.float32),
                              bias=np.zeros(shapes[f'norm{i}']['bias'].shape, np.float32))
  ours = jax.jit(lambda p, x: model.apply({'params': p}, x))(params, images)
  with torch.no_grad():
    theirs = peer.forward_intermediates(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                                        intermediates_only=True)  # NCHW.
  assert [f.shape for f in ours] == [(1, 24, 24, 16), (1, 12, 12, 32), (1, 6, 6, 64),
                                     (1, 3, 3, 128)]
  for mine, reference in zip(ours, theirs):
    reference = reference.permute(0, 2, 3, 1)
    normed = torch.nn.functional.layer_norm(reference, reference.shape[-1:]).numpy()
    np.testing.assert_allclose(mine, normed, atol=1e-4, rtol=0)


def test_22k_head_into_1k_classes_keeps_the_imagenet_1k_rows(tmp_path):
  """A 21841-class (ImageNet-22k) checkpoint starting a 1000-class model keeps the 1k classes'
  rows of its head, as the original's load_pretrained with data/map22kto1k.txt (1000 distinct
  rows, first 359, 368, 460, last 21817: reference/swin.md §3); other sizes start at zero."""
  indices = swin_22k_to_1k.INDICES
  assert (len(set(indices)), indices[:3], indices[-1]) == (1000, (359, 368, 460), 21817)
  fields = dict(embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=2)
  torch.manual_seed(0)
  peer = timm_swin.SwinTransformer(img_size=16, num_classes=21841, embed_dim=8, depths=(1, 1),
                                   num_heads=(1, 2), window_size=2)
  state = _official_layout(_numpy_state(peer))
  path = os.path.join(tmp_path, 'swin_22k.pth')
  torch.save({'model': {k: torch.from_numpy(v) for k, v in state.items()}}, path)
  for classes in (1000, 10):
    model = swin.build_swin(dict(fields, num_classes=classes))
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), _images((16, 16))))
    fresh = jax.tree.map(lambda x: np.ones(x.shape, x.dtype), shapes['params'])
    head = swin_weights.load_swin(fresh, path)['head']
    if classes == 1000:
      np.testing.assert_array_equal(head['kernel'], state['head.weight'][list(indices)].T)
      np.testing.assert_array_equal(head['bias'], state['head.bias'][list(indices)])
    else:
      assert not np.asarray(head['kernel']).any() and not np.asarray(head['bias']).any()
