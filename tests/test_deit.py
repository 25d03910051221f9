"""DeiT: timm's deit_* models on the same random weights, the .pth conversion both ways, exact
parameter counts (reference/deit.md)."""

import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch

from helpers import ROOT
from vit_jax.classification import deit, vit_weights
from vit_jax.framework import model_stats, weights

# float32 round-off: max |logit difference| measured 1.3e-6 (Ti, 12 blocks) and 3.1e-6 (B at 384,
# 1 block) on logits up to ~2; the original ViT's tanh GELU misses by 2.4e-4 to 3.0e-4.
ATOL = 2e-5


def _randomised_timm(name: str, **kwargs) -> torch.nn.Module:
  """timm's model with every tensor random (biases and LayerNorms too, so each is checked)."""
  torch.manual_seed(0)
  model = timm.create_model(name, pretrained=False, **kwargs).eval()
  with torch.no_grad():
    for key, tensor in model.state_dict().items():
      noise = torch.randn(tensor.shape) * (0.1 if 'norm' in key else 0.05)
      tensor.copy_(1 + noise if 'norm' in key and key.endswith('weight') else noise)
  return model


def _ours(release: deit.Release, num_classes: int, **fields):
  return deit.build_deit(dict(release.model_config(num_classes), **fields))


def _logits(model, params, images, train=False):
  return model.apply({'params': params}, jnp.asarray(images), train=train)


@pytest.mark.parametrize('name, depth', [
    pytest.param('DeiT-Ti-distilled', 12, marks=pytest.mark.slow),  # Full size.
    ('DeiT-Ti', 2),
    ('DeiT-S-distilled', 1),
    pytest.param('DeiT-B-384', 1, marks=pytest.mark.slow),
    pytest.param('DeiT-B-384-distilled', 1, marks=pytest.mark.slow),
])
def test_same_logits_as_timm(name, depth):
  release = deit.RELEASES[name]
  torch_model = _randomised_timm(release.timm_name, depth=depth, num_classes=10)
  model = _ours(release, 10, num_layers=depth)
  params = vit_weights.from_timm(torch_model.state_dict(), model.num_heads)
  images = np.random.RandomState(0).randn(2, release.image_size, release.image_size, 3)
  images = images.astype(np.float32)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(_logits(model, params, images), expected, rtol=0, atol=ATOL)
  if release.distilled:  # Each head on its own: timm's training forward returns the pair.
    torch_model.set_distilled_training(True)
    torch_model.train()
    with torch.no_grad():
      heads = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    ours = _logits(model, params, images, train=True)
    for mine, theirs in zip(ours, heads):
      np.testing.assert_allclose(mine, theirs.numpy(), rtol=0, atol=ATOL)
    assert np.abs(np.asarray(ours[0]) - np.asarray(ours[1])).max() > 0.1  # Two real heads.
  if name == 'DeiT-Ti':  # Negative control: the original ViT's tanh GELU is caught.
    tanh = _ours(release, 10, num_layers=depth, gelu_approximate=True)
    assert np.abs(np.asarray(_logits(tanh, params, images)) - expected).max() > 5 * ATOL


def _fresh(model, size):
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), nn.meta.unbox(shapes['params']))


def test_release_pth_converts_resizes_and_round_trips(tmp_path):
  """A DeiT release file ({'model': state_dict}) loads through config.init_from's loader, at
  its own grid and at another one (two prefix tokens kept apart), and saves back to timm's
  layout bit for bit."""
  release = deit.RELEASES['DeiT-Ti-distilled']
  torch_model = _randomised_timm(release.timm_name, depth=2, img_size=64)
  state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  path = str(tmp_path / 'deit_tiny_distilled.pth')
  torch.save({'model': torch_model.state_dict(), 'epoch': 299}, path)

  model = _ours(release, 1000, num_layers=2)
  loaded = vit_weights.load_vit(_fresh(model, 64), path, num_heads=model.num_heads)
  back = vit_weights.to_timm(loaded)
  assert sorted(back) == sorted(state)
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)

  # The 384 fine-tune's start: a 4x4 grid into 6x6; cls and dist rows pass untouched.
  bigger = vit_weights.load_vit(_fresh(model, 96), path, 'bilinear', num_heads=model.num_heads)
  posemb = bigger['Transformer']['posembed_input']['pos_embedding']
  assert posemb.shape == (1, 2 + 36, 192)
  np.testing.assert_array_equal(posemb[:, :2], state['pos_embed'][:, :2])
  grid = torch.nn.functional.interpolate(
      torch.from_numpy(state['pos_embed'][:, 2:].reshape(1, 4, 4, 192)).permute(0, 3, 1, 2),
      size=(6, 6), mode='bilinear', align_corners=False).permute(0, 2, 3, 1).reshape(1, 36, 192)
  np.testing.assert_allclose(posemb[:, 2:], grid.numpy(), rtol=0, atol=1e-6)


def test_scanned_params_save_to_timm_layout():
  release = deit.RELEASES['DeiT-Ti']
  torch_model = _randomised_timm(release.timm_name, depth=2, img_size=32)
  model = _ours(release, 1000, num_layers=2, scan=True)
  per_layer = vit_weights.from_timm(torch_model.state_dict(), model.num_heads)
  scanned = weights.fill(_fresh(model, 32), per_layer, layers=vit_weights.VIT_LAYERS)
  assert 'encoderblock' in scanned['Transformer']  # Stacked on the layers axis.
  back = vit_weights.to_timm(scanned)
  for key, value in torch_model.state_dict().items():
    np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


EXACT_PARAMS = {  # reference/deit.md §1.2, 1000 classes.
    'DeiT-Ti': 5_717_416, 'DeiT-S': 22_050_664, 'DeiT-B': 86_567_656, 'DeiT-B-384': 86_859_496,
    'DeiT-Ti-distilled': 5_910_800, 'DeiT-S-distilled': 22_436_432,
    'DeiT-B-distilled': 87_338_192, 'DeiT-B-384-distilled': 87_630_032}


@pytest.mark.slow
def test_exact_parameter_counts():
  counts = {}
  for name, release in deit.RELEASES.items():
    size = release.image_size
    counts[name] = model_stats.parameter_count(
        deit.build_deit(release.model_config()),
        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  assert counts == EXACT_PARAMS


@pytest.mark.slow
def test_model_table_lists_every_deit_model():
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'scripts', 'model_table.py'), '--json', '--models=',
       '--segmenter=', '--detr=', '--detr_ablations=', '--detr_panoptic=', '--deformable_detr=',
       '--swin='],
      capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=ROOT))
  assert result.returncode == 0, result.stderr[-2000:]
  rows = {row['model']: row for row in json.loads(result.stdout)}
  assert {name: row['params'] for name, row in rows.items()} == EXACT_PARAMS
  assert rows['DeiT-B-distilled']['timm_name'] == 'deit_base_distilled_patch16_224'
  # Multiply-adds grow with the tokens: 577 + 1 tokens at 384 against 197 + 1 at 224.
  assert 3 < rows['DeiT-B-384-distilled']['gflops'] / rows['DeiT-B-distilled']['gflops'] < 3.5
