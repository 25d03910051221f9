"""Segmenter weights: official checkpoint conversion against a torch transcription of the
official forward, the encoder from ViT .npz files (against timm's loader), files and errors."""

import functools
import json
import logging
import os
import runpy
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from helpers import (ROOT, official_segmenter_shapes, torch_resize_pos_embed,
                     write_code_carrying_pickle)
from segmenter_jax import models, pretrained
from vit_jax.classification import vit as vit_models
from vit_jax.classification import vit_weights
from vit_jax.framework import weights
from vit_jax.framework.errors import UserError

# Tiny official-layout models: width 64 (so the decoder has 64 // 64 = 1 head), 2 encoder heads.
D, LAYERS, HEADS, PATCH, CROP, CLASSES = 64, 2, 2, 8, 32, 5


def _fresh(model, size=CROP):
  """Zero params of `model`'s shapes: what loading fills (no init needed)."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), nn.meta.unbox(shapes['params']))


def _variant_yml(decoder, distilled=False, decoder_layers=2):
  """A variant.yml as segm/train.py writes it (net_kwargs part, and a few neighbours)."""
  return {
      'dataset_kwargs': {'dataset': 'ade20k', 'crop_size': CROP, 'normalization': 'vit'},
      'net_kwargs': {
          'image_size': (CROP, CROP), 'patch_size': PATCH, 'd_model': D, 'n_heads': HEADS,
          'n_layers': LAYERS, 'normalization': 'deit' if distilled else 'vit',
          'distilled': distilled, 'backbone': 'vit_tiny_test', 'dropout': 0.0,
          'drop_path_rate': 0.1, 'n_cls': CLASSES,
          'decoder': {'name': decoder, 'n_layers': decoder_layers, 'dropout': 0.1,
                      'drop_path_rate': 0.0, 'n_cls': CLASSES}},
      'inference_kwargs': {'im_size': CROP, 'window_size': CROP, 'window_stride': CROP - 8},
  }


def _random_state(decoder, distilled=False, decoder_layers=2, seed=0):
  """A random state dict in the official key layout and shapes."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in official_segmenter_shapes(D, LAYERS, PATCH, (CROP // PATCH,) * 2, CLASSES,
                                              decoder, decoder_layers, distilled).items():
    if key.endswith(('norm1.weight', 'norm2.weight', 'norm.weight')):
      value = 1 + 0.1 * rng.standard_normal(shape)
    elif key.endswith(('proj_patch', 'proj_classes')):
      value = D**-0.5 * rng.standard_normal(shape)
    else:
      value = 0.1 * rng.standard_normal(shape)
    state[key] = torch.from_numpy(value.astype(np.float32))
  return state


# ----------------------------------------------------- torch transcription of the original


def _torch_block(x, sd, p, heads):
  """segm/model/blocks.py Block: pre-LN, fused qkv, erf GELU, eps 1e-5."""
  b, n, c = x.shape
  y = F.layer_norm(x, (c,), sd[f'{p}.norm1.weight'], sd[f'{p}.norm1.bias'], 1e-5)
  qkv = F.linear(y, sd[f'{p}.attn.qkv.weight'], sd[f'{p}.attn.qkv.bias'])
  q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
  attn = ((q @ k.transpose(-2, -1)) * (c // heads)**-0.5).softmax(dim=-1)
  y = (attn @ v).transpose(1, 2).reshape(b, n, c)
  x = x + F.linear(y, sd[f'{p}.attn.proj.weight'], sd[f'{p}.attn.proj.bias'])
  y = F.layer_norm(x, (c,), sd[f'{p}.norm2.weight'], sd[f'{p}.norm2.bias'], 1e-5)
  y = F.linear(F.gelu(F.linear(y, sd[f'{p}.mlp.fc1.weight'], sd[f'{p}.mlp.fc1.bias'])),
               sd[f'{p}.mlp.fc2.weight'], sd[f'{p}.mlp.fc2.bias'])
  return x + y


def torch_segmenter(sd, im, decoder, distilled=False, decoder_layers=2):
  """segm/model/segmenter.py forward (eval), with vit.py's encoder and decoder.py's decoders."""
  h, w = im.shape[2:]
  x = F.pad(im, (0, -w % PATCH, 0, -h % PATCH))  # padding(): bottom/right, value 0.
  hp, wp = x.shape[2:]
  x = F.conv2d(x, sd['encoder.patch_embed.proj.weight'], sd['encoder.patch_embed.proj.bias'],
               stride=PATCH)
  gh, gw = x.shape[2:]
  x = x.flatten(2).transpose(1, 2)
  extra = [sd['encoder.cls_token']] + ([sd['encoder.dist_token']] if distilled else [])
  x = torch.cat([t.expand(x.shape[0], -1, -1) for t in extra] + [x], dim=1)
  pos = sd['encoder.pos_embed']
  if x.shape[1] != pos.shape[1]:  # Resized on the fly only when the token count differs.
    pos = torch_resize_pos_embed(pos, (CROP // PATCH,) * 2, (gh, gw), len(extra))
  x = x + pos
  for i in range(LAYERS):
    x = _torch_block(x, sd, f'encoder.blocks.{i}', HEADS)
  x = F.layer_norm(x, (D,), sd['encoder.norm.weight'], sd['encoder.norm.bias'], 1e-5)
  x = x[:, len(extra):]
  if decoder == 'linear':
    masks = F.linear(x, sd['decoder.head.weight'], sd['decoder.head.bias'])
  else:
    x = F.linear(x, sd['decoder.proj_dec.weight'], sd['decoder.proj_dec.bias'])
    x = torch.cat([x, sd['decoder.cls_emb'].expand(x.shape[0], -1, -1)], dim=1)
    for i in range(decoder_layers):
      x = _torch_block(x, sd, f'decoder.blocks.{i}', D // 64)
    x = F.layer_norm(x, (D,), sd['decoder.decoder_norm.weight'], sd['decoder.decoder_norm.bias'],
                     1e-5)
    patches = x[:, :-CLASSES] @ sd['decoder.proj_patch']
    classes = x[:, -CLASSES:] @ sd['decoder.proj_classes']
    patches = patches / patches.norm(dim=-1, keepdim=True)
    classes = classes / classes.norm(dim=-1, keepdim=True)
    masks = F.layer_norm(patches @ classes.transpose(1, 2), (CLASSES,),
                         sd['decoder.mask_norm.weight'], sd['decoder.mask_norm.bias'], 1e-5)
  masks = masks.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
  masks = F.interpolate(masks, size=(hp, wp), mode='bilinear')
  return masks[:, :, :h, :w]  # unpadding()


# ------------------------------------------------------------------------------ conversion


@pytest.mark.parametrize('decoder, distilled', [('mask_transformer', False), ('linear', False),
                                                ('mask_transformer', True)],
                         ids=['mask', 'linear', 'deit_mask'])
def test_official_state_dict_round_trips_to_the_same_logits(decoder, distilled):
  state = _random_state(decoder, distilled)
  params, fields = pretrained.convert_official(state, _variant_yml(decoder, distilled))
  model = models.build_segmenter(fields)
  # Every tensor is used except the ImageNet heads.
  count = lambda tree: sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))
  heads = sum(int(np.prod(v.shape)) for k, v in state.items() if k in pretrained.UNUSED_OFFICIAL)
  assert count(params) + heads == sum(int(np.prod(v.shape)) for v in state.values())
  # 30 x 45 needs padding (to 32 x 48) and a position-embedding resize (4 x 4 -> 4 x 6).
  images = np.random.default_rng(1).uniform(-1, 1, (2, 30, 45, 3)).astype(np.float32)
  ours = jax.jit(functools.partial(model.apply, train=False))({'params': params}, images)
  with torch.no_grad():
    expected = torch_segmenter(state, torch.from_numpy(images.transpose(0, 3, 1, 2)), decoder,
                               distilled).numpy().transpose(0, 2, 3, 1)
  assert ours.shape == expected.shape == (2, 30, 45, CLASSES)
  # Logits are O(1); fp32 summation order only. Observed max difference 9e-7 (linear) and
  # 1.3e-5 (mask: mask_norm divides by the spread of only 5 class scores).
  np.testing.assert_allclose(np.asarray(ours), expected, atol=5e-5, rtol=0)


def test_converted_fields_describe_the_official_model():
  _, fields = pretrained.convert_official(_random_state('mask_transformer', decoder_layers=1),
                                           _variant_yml('mask_transformer', decoder_layers=1))
  assert fields == dict(
      hidden_size=D, num_layers=LAYERS, num_heads=HEADS, mlp_dim=4 * D, patch_size=PATCH,
      image_size=(CROP, CROP), distilled=False, num_classes=CLASSES, decoder='mask_transformer',
      dropout_rate=0.0, drop_path_rate=0.1, decoder_layers=1, decoder_num_heads=1,
      decoder_dropout_rate=0.1, decoder_drop_path_rate=0.0)
  assert pretrained.input_normalization(_variant_yml('linear', True))['std'] == (
      0.229, 0.224, 0.225)


def test_anything_but_the_unused_heads_must_be_mapped():
  state = _random_state('linear')
  state['encoder.extra_token'] = torch.zeros(1, 1, D)
  with pytest.raises(UserError, match='no place in Segmenter: encoder.extra_token'):
    pretrained.convert_official(state, _variant_yml('linear'))
  state = _random_state('linear')
  del state['encoder.blocks.1.mlp.fc2.bias']
  with pytest.raises(UserError, match=r'missing: encoder/Transformer/encoderblock_1/MlpBlock_0'):
    pretrained.convert_official(state, _variant_yml('linear'))
  # A variant.yml of another model: the shapes say so in one line.
  other = _variant_yml('linear')
  other['net_kwargs']['n_cls'] = 7
  with pytest.raises(UserError, match=r'shape differs: decoder/head/bias \(5,\) vs \(7,\)') as e:
    pretrained.convert_official(_random_state('linear'), other)
  assert '\n' not in str(e.value)
  with pytest.raises(UserError, match='no net_kwargs'):
    pretrained.convert_official(state, {'dataset_kwargs': {}})


# ------------------------------------------------------------------------------- files


def test_a_pickle_that_carries_code_is_refused(tmp_path):
  marker = tmp_path / 'code_ran'
  path = str(tmp_path / 'checkpoint.pth')
  write_code_carrying_pickle(path, str(marker))
  with pytest.raises(UserError, match='refusing to load .* not a plain weights file') as error:
    weights.read_pth(path)
  assert '\n' not in str(error.value) and not marker.exists()


def _write_official(directory, decoder='mask_transformer'):
  """checkpoint.pth (as segm/train.py saves it) and variant.yml (yaml.dump, tuple tag)."""
  import yaml
  state = _random_state(decoder)
  torch.save({'model': state, 'n_cls': CLASSES, 'epoch': 3}, str(directory / 'checkpoint.pth'))
  with open(directory / 'variant.yml', 'w') as f:
    yaml.dump(_variant_yml(decoder), f)  # Writes image_size as !!python/tuple.
  return state


def test_variant_yml_reads_tuples_and_refuses_other_python_objects(tmp_path):
  _write_official(tmp_path)
  assert '!!python/tuple' in (tmp_path / 'variant.yml').read_text()
  variant = pretrained.read_variant_yml(str(tmp_path / 'variant.yml'))
  assert variant['net_kwargs']['image_size'] == (CROP, CROP)
  evil = tmp_path / 'evil.yml'
  evil.write_text('net_kwargs: !!python/object/apply:os.system ["touch owned"]\n')
  with pytest.raises(UserError, match='cannot read .* as YAML'):
    pretrained.read_variant_yml(str(evil))


def test_load_pretrained_reads_official_files_and_converted_npz(tmp_path):
  state = _write_official(tmp_path)
  params, fields = pretrained.load_official(str(tmp_path / 'checkpoint.pth'))
  np.testing.assert_array_equal(params['decoder']['proj_patch'], state['decoder.proj_patch'])
  # The same model, fresh, then filled from each file kind.
  model = models.build_segmenter(fields)
  fresh = _fresh(model)
  from_pth = pretrained.load_pretrained(fresh, str(tmp_path / 'checkpoint.pth'), model)
  weights.write_npz(str(tmp_path / 'converted.npz'), params)
  from_npz = pretrained.load_pretrained(fresh, str(tmp_path / 'converted.npz'), model)
  jax.tree.map(np.testing.assert_array_equal, from_pth, params)
  jax.tree.map(np.testing.assert_array_equal, from_npz, params)
  # Fine-tuning at another crop: the position embeddings follow the model's grid.
  bigger = models.build_segmenter(dict(fields, image_size=48))
  moved = pretrained.load_pretrained(_fresh(bigger, 48), str(tmp_path / 'converted.npz'), bigger)
  expected = torch_resize_pos_embed(state['encoder.pos_embed'], (4, 4), (6, 6), 1).numpy()
  np.testing.assert_allclose(
      moved['encoder']['Transformer']['posembed_input']['pos_embedding'], expected, atol=1e-6)
  other = models.build_segmenter(dict(fields, num_classes=9))
  with pytest.raises(UserError, match='does not fit the model .*num_classes'):
    pretrained.load_pretrained(_fresh(other), str(tmp_path / 'converted.npz'), other)


@pytest.mark.slow
def test_convert_script_writes_params_and_config(tmp_path):
  _write_official(tmp_path, 'linear')
  out = str(tmp_path / 'seg.npz')
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'scripts', 'convert_segmenter_checkpoint.py'),
       str(tmp_path / 'checkpoint.pth'), out], capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=ROOT))
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'unused: encoder.head.bias, encoder.head.weight' in result.stdout
  config = json.loads((tmp_path / 'seg.json').read_text())
  assert config['model']['decoder'] == 'linear' and config['model']['image_size'] == [CROP, CROP]
  assert config['normalization'] == {'mean': [0.5] * 3, 'std': [0.5] * 3}
  assert config['inference'] == {'im_size': CROP, 'window_size': CROP, 'window_stride': CROP - 8}
  assert set(weights.unflatten(weights.read_npz(out))) == {'encoder', 'decoder'}



def test_convert_script_errors_are_one_line(tmp_path, monkeypatch):
  script = os.path.join(ROOT, 'scripts', 'convert_segmenter_checkpoint.py')
  monkeypatch.setattr(sys, 'argv', [script, str(tmp_path / 'nothing.pth'), 'out.npz'])
  with pytest.raises(SystemExit, match=r"^error: checkpoint .*nothing.pth' does not exist$"):
    runpy.run_path(script, run_name='__main__')


# -------------------------------------------------------------------- encoder from ViT .npz


def _vit_npz(path, seed=0):
  """A random ViT (official .npz layout, 48 px -> a 6 x 6 grid, pre_logits and head)."""
  vit = vit_models.VisionTransformer(num_classes=10, patch_size=PATCH, hidden_size=D,
                                     num_layers=LAYERS, num_heads=HEADS, mlp_dim=4 * D,
                                     representation_size=D)
  shapes = jax.eval_shape(vit.init, jax.random.PRNGKey(0), jnp.zeros((1, 48, 48, 3)))['params']
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda x: (0.1 * rng.standard_normal(x.shape)).astype(np.float32),
                        nn.meta.unbox(shapes))
  vit_weights.write_vit_npz(path, params)
  return params


@pytest.mark.slow
def test_encoder_from_vit_npz_matches_timms_loader(tmp_path, caplog):
  path = str(tmp_path / 'vit.npz')
  vit = _vit_npz(path)
  model = models.build_segmenter(dict(hidden_size=D, num_layers=LAYERS, num_heads=HEADS,
                                      mlp_dim=4 * D, patch_size=PATCH, image_size=CROP,
                                      num_classes=CLASSES, decoder='mask_transformer'))
  fresh = nn.meta.unbox(jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(0), jnp.zeros((1, CROP, CROP, 3))))['params']
  with caplog.at_level(logging.INFO):
    params = pretrained.init_encoder_from_vit(fresh, path)
  log = caplog.text
  assert 'Dropping head' in log and 'Dropping pre_logits' in log
  assert 'Resizing position embeddings (1, 37, 64) -> (1, 17, 64)' in log
  jax.tree.map(np.testing.assert_array_equal, params['decoder'], fresh['decoder'])
  np.testing.assert_array_equal(params['encoder']['embedding']['kernel'],
                                vit['embedding']['kernel'])
  # The same file through timm's loader (v1.0: bilinear, no antialias) into a timm ViT at the
  # crop size, with Segmenter's LayerNorm eps: the same patch tokens.
  reference = timm.models.vision_transformer.VisionTransformer(
      img_size=CROP, patch_size=PATCH, embed_dim=D, depth=LAYERS, num_heads=HEADS,
      num_classes=10, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-5)).eval()
  timm.models.vision_transformer._load_weights(reference, path)
  expected_pos = torch_resize_pos_embed(
      torch.from_numpy(vit['Transformer']['posembed_input']['pos_embedding']), (6, 6), (4, 4), 1)
  np.testing.assert_allclose(reference.pos_embed.detach().numpy(), expected_pos.numpy(),
                             atol=1e-6)
  np.testing.assert_allclose(params['encoder']['Transformer']['posembed_input']['pos_embedding'],
                             expected_pos.numpy(), atol=1e-6)
  images = np.random.default_rng(2).uniform(-1, 1, (2, CROP, CROP, 3)).astype(np.float32)
  ours = jax.jit(functools.partial(model.apply, method=models.Segmenter.encode))(
      {'params': params}, images)
  with torch.no_grad():
    expected = reference.forward_features(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(np.asarray(ours).reshape(2, 16, D), expected[:, 1:].numpy(),
                             atol=1e-5)


def test_encoder_from_a_vit_of_another_size_is_a_one_line_error(tmp_path):
  path = str(tmp_path / 'vit.npz')
  _vit_npz(path)
  model = models.build_segmenter(dict(hidden_size=2 * D, num_layers=LAYERS, num_heads=HEADS,
                                      mlp_dim=8 * D, patch_size=PATCH, image_size=CROP,
                                      num_classes=CLASSES, decoder='linear'))
  fresh = _fresh(model)
  with pytest.raises(UserError, match='does not fit the model .*shape differs') as error:
    pretrained.init_encoder_from_vit(fresh, path)
  assert '\n' not in str(error.value)
  with pytest.raises(UserError, match='cannot read checkpoint'):
    pretrained.init_encoder_from_vit(fresh, str(tmp_path / 'missing.npz'))


def test_deit_encoder_from_a_timm_pth_keeps_both_tokens_apart_when_resizing(tmp_path):
  deit = timm.models.deit.VisionTransformerDistilled(
      img_size=48, patch_size=PATCH, embed_dim=D, depth=LAYERS, num_heads=HEADS)
  state = {k: torch.randn(v.shape) for k, v in deit.state_dict().items()}
  torch.save({'model': state}, str(tmp_path / 'deit.pth'))  # As FB's DeiT releases.
  model = models.build_segmenter(dict(hidden_size=D, num_layers=LAYERS, num_heads=HEADS,
                                      mlp_dim=4 * D, patch_size=PATCH, image_size=CROP,
                                      distilled=True, num_classes=CLASSES, decoder='linear'))
  params = pretrained.load_pretrained(_fresh(model), str(tmp_path / 'deit.pth'), model)
  expected = torch_resize_pos_embed(state['pos_embed'], (6, 6), (4, 4), 2).numpy()
  np.testing.assert_allclose(params['encoder']['Transformer']['posembed_input']['pos_embedding'],
                             expected, atol=1e-6)
  np.testing.assert_array_equal(params['encoder']['dist'], state['dist_token'].numpy())
  np.testing.assert_array_equal(
      params['encoder']['Transformer']['encoderblock_1']['MlpBlock_0']['Dense_0']['kernel'],
      state['blocks.1.mlp.fc1.weight'].numpy().T)


def test_seg_b_dagger_starts_from_a_deit_pth_and_decodes_patch_tokens_only(tmp_path):
  """Seg-B†-Mask/16's start (configs/segmenter_ade20k.py:deit_b16_mask, shrunk): a distilled
  DeiT .pth in timm's layout as config.init_from (heads dropped, its 6x6 grid resized to the
  crop's 4x4), then a forward whose mask decoder reads timm's tokens without cls and dist."""
  from helpers import load_config
  from vit_jax.framework import registry
  config = load_config('segmenter_ade20k', 'deit_b16_mask')
  assert config.model.variant == 'DeiT-B/16' and config.input.normalization == 'deit'
  config.model.update(variant=None, distilled=True, hidden_size=D, num_layers=LAYERS,
                      num_heads=HEADS, mlp_dim=4 * D, patch_size=PATCH, image_size=CROP,
                      num_classes=CLASSES, decoder_layers=1)
  config.input.crop_size = CROP
  task = registry.make_task(config)
  assert task.model.num_prefix_tokens == 2

  make_timm = functools.partial(  # Segmenter's blocks: LayerNorm eps 1e-5.
      timm.models.deit.VisionTransformerDistilled, patch_size=PATCH, embed_dim=D, depth=LAYERS,
      num_heads=HEADS, num_classes=1000, norm_layer=functools.partial(torch.nn.LayerNorm,
                                                                      eps=1e-5))
  torch.manual_seed(0)
  release = make_timm(img_size=48)
  state = {k: torch.randn(v.shape) * 0.1 + ('norm' in k and k.endswith('weight'))  # LN scale ~1.
           for k, v in release.state_dict().items()}
  torch.save({'model': state}, str(tmp_path / 'deit_distilled.pth'))  # As DeiT releases.
  rng = np.random.default_rng(1)  # Random decoder weights without compiling an init.
  fresh = jax.tree.map(lambda x: 0.1 * rng.standard_normal(x.shape, np.float32), _fresh(task.model))
  params = task.pretrained_params(fresh, str(tmp_path / 'deit_distilled.pth'))
  assert 'head' not in params['encoder'] and 'head_dist' not in params['encoder']
  jax.tree.map(np.testing.assert_array_equal, params['decoder'], fresh['decoder'])

  images = np.random.default_rng(0).uniform(-2, 2, (2, CROP, CROP, 3)).astype(np.float32)
  logits = jax.eval_shape(functools.partial(task.model.apply, train=False), {'params': params},
                          images)
  assert logits.shape == (2, CROP, CROP, CLASSES)

  at_crop = make_timm(img_size=CROP).eval()
  state['pos_embed'] = torch_resize_pos_embed(state['pos_embed'], (6, 6), (4, 4), 2)
  at_crop.load_state_dict(state)
  with torch.no_grad():
    tokens = at_crop.forward_features(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  patch_tokens = jnp.asarray(tokens[:, 2:].numpy())  # 16 patches: cls and dist dropped.
  expected = jax.jit(functools.partial(task.model.decoder.apply, train=False))(
      {'params': params['decoder']}, patch_tokens)
  ours = jax.jit(functools.partial(task.model.apply, method=models.Segmenter.patch_logits))(
      {'params': params}, images)
  assert np.isfinite(ours).all() and np.std(ours) > 0.1
  np.testing.assert_allclose(np.asarray(ours).reshape(2, 16, CLASSES), expected, atol=1e-4)
