"""Swin Transformer as the DETR and Deformable DETR backbone (detr_jax/swin_backbone.py):
its parameters and stage outputs against timm's Swin feature model (`features_only`,
`always_partition`: the detection backbone's fixed windows), its ImageNet weights through the
detectors' init_from, and both detectors' forward on a padded batch and a training step on the
shapes job (`configs/detr_shapes.py:backbone=swin`)."""

import numpy as np
import pytest
import torch

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax import deformable_models, models
from detr_jax.detection import DetectionTask
from helpers import load_config
from vit_jax.classification import swin, swin_weights
from vit_jax.framework.weights import flatten

timm = pytest.importorskip('timm')

# Window 2 on 64 px: 16x16, 8x8, 4x4 and 2x2 maps, all whole windows (timm pads after its roll,
# the detection repos before: the same only where nothing is padded), the last one a single
# window that the detection backbone still shifts (the classifier would not).
SWIN = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=2)
DETECTOR = dict(num_classes=3, backbone='swin', backbone_width=16, backbone_blocks=(2, 2, 2, 2),
                backbone_heads=(1, 2, 2, 4), backbone_window=2, hidden_dim=32, num_queries=4,
                num_encoder_layers=1, num_decoder_layers=1, num_heads=2, mlp_dim=32,
                dropout_rate=0.0)


def _timm_features(out_indices, seed=0):
  torch.manual_seed(seed)
  peer = timm.create_model(
      'swin_tiny_patch4_window7_224', pretrained=False, features_only=True,
      out_indices=out_indices, img_size=64, always_partition=True, strict_img_size=False,
      **SWIN).eval()
  with torch.no_grad():  # Biases and norms off zero and one, so that a misplaced one shows.
    for param in peer.parameters():
      if param.ndim == 1:
        param.add_(0.05 * torch.randn_like(param))
  return peer


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('build, levels', [
    (models.build_detr, (0, 1, 2, 3)),  # The last, and layer1-3 for the panoptic head.
    (deformable_models.build_deformable_detr, (1, 2, 3)),  # Strides 8-32.
])
def test_backbone_parameters_are_timms_swin_features_plus_stage_norms(build, levels):
  model = build(DETECTOR)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                          jnp.ones((1, 64, 64)))
  backbone = nn.meta.unbox(shapes['params']['backbone'])
  norms = {k: backbone.pop(k) for k in list(backbone) if k.startswith('norm')}
  assert sorted(norms) == [f'norm{i}' for i in levels]
  assert _count(norms) == sum(2 * 16 * 2**i for i in levels)  # LayerNorm(C 2^i) each.
  peer = _timm_features(levels)
  assert _count(backbone) == sum(p.numel() for p in peer.parameters())
  assert list(peer.feature_info.reduction()) == [4 * 2**i for i in levels]


@pytest.mark.slow  # ~25 s on 2 shared cores: one Swin compiled.
def test_fixed_windows_are_timms_always_partition_features():
  """The detection backbone's stage outputs (stage norms at 1/0) against timm's feature model
  on the same weights: the 2x2 stage shifted within its one window, as the detection repos (the
  classifier's rule, no shift there, gives another stage-4 output)."""
  peer = _timm_features((0, 1, 2, 3))
  state = {k.replace('layers_', 'layers.'): v.numpy() for k, v in peer.state_dict().items()}
  params = swin_weights.from_torch(state)
  model = swin.SwinTransformer(num_classes=None, classifier='features', fixed_window=True, **SWIN)
  for i in range(4):
    width = 16 * 2**i
    params[f'norm{i}'] = dict(scale=np.ones(width, np.float32), bias=np.zeros(width, np.float32))
  images = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)
  ours = jax.jit(lambda p, x: model.apply({'params': p}, x))(params, images)
  with torch.no_grad():
    theirs = peer(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))  # NHWC maps.
  for mine, reference in zip(ours, theirs):
    normed = torch.nn.functional.layer_norm(reference, reference.shape[-1:]).numpy()
    np.testing.assert_allclose(mine, normed, atol=1e-4, rtol=0)


def _swin_task(config_name):
  config = load_config(config_name, 'backbone=swin')
  config.model.update(num_encoder_layers=1, num_decoder_layers=1, hidden_dim=32, mlp_dim=32)
  config.input.shapes.update(num_train=8)
  config.input.batch_size = 4
  return DetectionTask(config)


def test_swin_checkpoint_fills_the_backbone_through_init_from(tmp_path):
  """A Swin ImageNet `.pth` (the original's layout) as a detector's init_from: the backbone's
  weights from it, its stage norms fresh, the transformer and heads as initialised."""
  task = _swin_task('detr_shapes')
  fields = task.model
  torch.manual_seed(0)
  peer = timm.models.swin_transformer.SwinTransformer(
      img_size=64, num_classes=10, embed_dim=fields.backbone_width,
      depths=fields.backbone_blocks, num_heads=fields.backbone_heads,
      window_size=fields.backbone_window, always_partition=True)
  state = peer.state_dict()
  path = str(tmp_path / 'swin.pth')
  torch.save({'model': state}, path)
  fresh = nn.meta.unbox(jax.eval_shape(task.init_variables, jax.random.PRNGKey(0)))
  fresh = jax.tree.map(lambda x: np.full(x.shape, 7, x.dtype), fresh)
  loaded = flatten(task.pretrained_variables(fresh, path)['params'])
  expected = flatten(swin_weights.from_torch({k: v.numpy() for k, v in state.items()}))
  for key, value in expected.items():
    if key.startswith(('head/', 'norm/')):
      assert f'backbone/{key}' not in loaded
    else:
      np.testing.assert_array_equal(loaded[f'backbone/{key}'], value)
  for key, value in loaded.items():
    if f'{key[len("backbone/"):]}' not in expected:  # Stage norms and the detector: as given.
      assert (np.asarray(value) == 7).all(), key


@pytest.mark.slow
def test_swin_detector_trains_on_a_padded_shapes_batch():
  """Deformable DETR's shapes job with the Swin backbone (three levels, each with its own
  downsampled mask; DETR reads the last of them): one image of the batch padded (its right
  third zero, pixel mask 0 there, as a narrower image in the batch's canvas); the set loss and
  its gradient are finite and reach the backbone."""
  task = _swin_task('deformable_detr_shapes')
  batch = dict(next(task.train_input(0)))
  batch['image'] = np.array(batch['image']).copy()
  batch['pixel_mask'] = np.array(batch['pixel_mask']).copy()
  batch['image'][1, :, 43:] = 0
  batch['pixel_mask'][1, :, 43:] = 0
  variables = task.init_variables(jax.random.PRNGKey(0))
  params = variables.pop('params')

  def loss(params):
    return task.loss({'params': params, **variables}, batch, jax.random.PRNGKey(1),
                     task.loss_normalizers(batch))[0]
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert np.isfinite(value) and value > 0
  grads = nn.meta.unbox(grads)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert np.abs(grads['backbone']['patch_embed']['proj']['kernel']).max() > 0
