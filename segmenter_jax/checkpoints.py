"""Segmenter weights: the encoder from ViT checkpoints, and the official Segmenter releases.

- `init_encoder_from_vit`: an official ViT `.npz` (AugReg, i21k, ...; read by vit_jax's
  `load_npz`) fills `params['encoder']`; `head` and `pre_logits` are dropped and the position
  embeddings resized to the crop's grid as the original does (bilinear, align_corners off).
- `init_encoder_from_timm`: the same from a timm/DeiT `.pth` state dict (Segmenter's DeiT
  backbones), class and distillation tokens kept apart when resizing.
- `convert_official`: an official `checkpoint.pth` state dict plus its `variant.yml` -> our
  params and model config fields; every tensor is mapped or named as unused (the encoder's
  1000-class `head` and DeiT's `head_dist`), anything else is an error.
- `load_pretrained`: any of the above (or a converted `.npz`) by file, for `config.init_from`.

`.pth` files are opened with torch.load(weights_only=True) only: a pickle that carries code is
refused.

Official names -> ours (reference/segmenter.md §5.3; H heads, hd = d / H):
  encoder.cls_token / dist_token / pos_embed -> encoder/cls / dist /
      Transformer/posembed_input/pos_embedding
  encoder.patch_embed.proj.{weight (O,I,kh,kw), bias} -> encoder/embedding/{kernel (kh,kw,I,O),
      bias}
  {encoder,decoder}.blocks.i.norm1 / norm2 -> .../LayerNorm_0 / LayerNorm_1 {scale, bias}
  ....attn.qkv.weight (3d, d) -> .../MultiHeadDotProductAttention_0/{query,key,value}/kernel
      (d, H, hd), rows split q, k, v; qkv.bias -> .../bias (H, hd)
  ....attn.proj -> .../MultiHeadDotProductAttention_0/out/kernel (H, hd, d)
  ....mlp.fc1 / fc2 -> .../MlpBlock_0/Dense_0 / Dense_1; linear weights are transposed
  encoder.norm -> encoder/Transformer/encoder_norm
  decoder.head (linear decoder), decoder.proj_dec, decoder.decoder_norm, decoder.mask_norm,
  decoder.cls_emb -> the same names; decoder.proj_patch / proj_classes are used as x @ P in the
  original and kept as they are (no transpose).
"""

import os
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import yaml
from absl import logging
from flax import traverse_util

from segmenter_jax import models
from vit_jax import pretrained
from vit_jax.errors import UserError
from vit_jax.models import resize_position_embeddings

Params = dict[str, Any]

# Unused in segmentation: the ImageNet heads the official encoder keeps.
UNUSED_OFFICIAL = ('encoder.head.weight', 'encoder.head.bias', 'encoder.head_dist.weight',
                   'encoder.head_dist.bias')
# Input normalisation of each backbone family (`normalization` in variant.yml).
NORMALIZATION = {'vit': dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
                 'deit': dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))}

_BLOCK_LEAVES = {
    'norm1': 'LayerNorm_0', 'norm2': 'LayerNorm_1',
    'attn.proj': 'MultiHeadDotProductAttention_0/out',
    'mlp.fc1': 'MlpBlock_0/Dense_0', 'mlp.fc2': 'MlpBlock_0/Dense_1'}
_PARAM_LEAF = {'weight': 'kernel', 'bias': 'bias'}


def _flat(tree: Params) -> dict[str, np.ndarray]:
  return traverse_util.flatten_dict(nn.meta.unbox(tree), sep='/')


def _tree(flat: dict[str, np.ndarray]) -> Params:
  return traverse_util.unflatten_dict(flat, sep='/')


# -------------------------------------------------------------------------------- reading files


def load_pth(path: str) -> dict[str, np.ndarray]:
  """The state dict in a `.pth` (`{'model': state_dict, ...}` or a bare state dict) as numpy,
  read with torch.load(weights_only=True): anything but plain tensors is refused."""
  import torch  # Only needed for .pth files.
  try:
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
  except FileNotFoundError:
    raise UserError(f'checkpoint {path!r} does not exist') from None
  except Exception as e:  # UnpicklingError and friends: the file carries more than tensors.
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise UserError(f'refusing to load {path!r}: it is not a plain weights file '
                    f'(torch.load with weights_only=True failed: {first_line[:200]})') from None
  state = checkpoint.get('model', checkpoint) if isinstance(checkpoint, dict) else None
  if not isinstance(state, dict) or not state:
    raise UserError(f'{path!r} holds no state dict (expected tensors or {{"model": ...}})')
  return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, 'detach')}


class _VariantLoader(yaml.SafeLoader):
  """Safe YAML plus the one Python tag variant.yml uses (`image_size` is a dumped tuple)."""


_VariantLoader.add_constructor('tag:yaml.org,2002:python/tuple',
                               lambda loader, node: tuple(loader.construct_sequence(node)))


def read_variant_yml(path: str) -> dict:
  """An official `variant.yml` as a dict (no arbitrary Python objects are built)."""
  try:
    with open(path) as f:
      return yaml.load(f, Loader=_VariantLoader)
  except FileNotFoundError:
    raise UserError(f'{path!r} does not exist: the official checkpoint.pth comes with a '
                    'variant.yml in the same folder; pass its path') from None
  except yaml.YAMLError as e:
    raise UserError(f'cannot read {path!r} as YAML: {str(e).splitlines()[0]}') from None


def save_params(path: str, params: Params) -> None:
  """Our params as an `.npz` of '/'-joined names (`encoder/embedding/kernel`, ...)."""
  np.savez(path, **{k: np.asarray(v) for k, v in _flat(params).items()})


def load_params(path: str) -> Params:
  try:
    with np.load(path, allow_pickle=False) as files:
      return _tree(dict(files))
  except (OSError, ValueError) as e:
    raise UserError(f'cannot read checkpoint {path!r}: {e}') from None


# ------------------------------------------------------------------------ official -> ours


def _net_kwargs(variant_yml: dict) -> dict:
  net = variant_yml.get('net_kwargs', variant_yml)
  if not isinstance(net, dict) or 'd_model' not in net or 'decoder' not in net:
    raise UserError('variant.yml has no net_kwargs with d_model and decoder: is it the '
                    'variant.yml of an official Segmenter checkpoint?')
  return net


def model_fields(variant_yml: dict) -> dict:
  """build_segmenter fields of the model an official variant.yml describes."""
  net = _net_kwargs(variant_yml)
  decoder = net['decoder']
  name = decoder.get('name')
  if name not in models.DECODERS:
    raise UserError(f'variant.yml names decoder {name!r}; known: {models.DECODERS}')
  d = int(net['d_model'])
  fields = dict(
      hidden_size=d, num_layers=int(net['n_layers']), num_heads=int(net['n_heads']),
      mlp_dim=int(net.get('d_ff') or 4 * d), patch_size=int(net['patch_size']),
      image_size=tuple(int(s) for s in net['image_size']), distilled=bool(net.get('distilled')),
      num_classes=int(net.get('n_cls') or decoder['n_cls']), decoder=name,
      dropout_rate=float(net.get('dropout', 0.0)),
      drop_path_rate=float(net.get('drop_path_rate', 0.0)))
  if name == 'mask_transformer':
    fields.update(decoder_layers=int(decoder['n_layers']),
                  decoder_num_heads=int(decoder.get('n_heads') or d // 64),
                  decoder_dropout_rate=float(decoder.get('dropout', 0.0)),
                  decoder_drop_path_rate=float(decoder.get('drop_path_rate', 0.0)))
  return fields


def input_normalization(variant_yml: dict) -> dict:
  """mean and std (per channel, for images in [0, 1]) the checkpoint was trained with."""
  norm = _net_kwargs(variant_yml).get('normalization', 'vit')
  if norm not in NORMALIZATION:
    raise UserError(f'variant.yml names normalization {norm!r}; known: {sorted(NORMALIZATION)}')
  return NORMALIZATION[norm]


def _block(prefix: str, key: str, value: np.ndarray, num_heads: int) -> dict[str, np.ndarray]:
  """One tensor of a timm/Segmenter block (`key` relative to the block) -> our leaves."""
  module, leaf = key.rsplit('.', 1)
  if module == 'attn.qkv':
    out = {}
    for name, part in zip(('query', 'key', 'value'), np.split(value, 3)):
      base = f'{prefix}/MultiHeadDotProductAttention_0/{name}'
      if leaf == 'weight':
        out[f'{base}/kernel'] = part.T.reshape(part.shape[1], num_heads, -1)
      else:
        out[f'{base}/bias'] = part.reshape(num_heads, -1)
    return out
  if module not in _BLOCK_LEAVES:
    raise KeyError(key)
  target = f'{prefix}/{_BLOCK_LEAVES[module]}'
  if module.startswith('norm'):
    return {f'{target}/{"scale" if leaf == "weight" else "bias"}': value}
  if module == 'attn.proj' and leaf == 'weight':
    return {f'{target}/kernel': value.T.reshape(num_heads, -1, value.shape[0])}
  return {f'{target}/{_PARAM_LEAF[leaf]}': value.T if leaf == 'weight' else value}


def _encoder_leaves(key: str, value: np.ndarray, num_heads: int) -> dict[str, np.ndarray]:
  """One tensor of a timm-layout ViT state dict (no prefix) -> our `encoder/...` leaves."""
  block = re.fullmatch(r'blocks\.(\d+)\.(.+)', key)
  if block:
    return _block(f'encoder/Transformer/encoderblock_{block[1]}', block[2], value, num_heads)
  simple = {'cls_token': 'encoder/cls', 'dist_token': 'encoder/dist',
            'pos_embed': 'encoder/Transformer/posembed_input/pos_embedding',
            'patch_embed.proj.bias': 'encoder/embedding/bias',
            'norm.weight': 'encoder/Transformer/encoder_norm/scale',
            'norm.bias': 'encoder/Transformer/encoder_norm/bias'}
  if key in simple:
    return {simple[key]: value}
  if key == 'patch_embed.proj.weight':
    return {'encoder/embedding/kernel': value.transpose(2, 3, 1, 0)}
  raise KeyError(key)


def _decoder_leaves(key: str, value: np.ndarray, num_heads: int) -> dict[str, np.ndarray]:
  """One tensor of the official decoder (no prefix) -> our `decoder/...` leaves."""
  block = re.fullmatch(r'blocks\.(\d+)\.(.+)', key)
  if block:
    return _block(f'decoder/blocks_{block[1]}', block[2], value, num_heads)
  if key in ('cls_emb', 'proj_patch', 'proj_classes'):
    return {f'decoder/{key}': value}  # Used as x @ P: no transpose.
  module, leaf = key.rsplit('.', 1)
  if module in ('decoder_norm', 'mask_norm'):
    return {f'decoder/{module}/{"scale" if leaf == "weight" else "bias"}': value}
  if module in ('head', 'proj_dec'):
    return {f'decoder/{module}/{_PARAM_LEAF[leaf]}': value.T if leaf == 'weight' else value}
  raise KeyError(key)


def _expected_shapes(fields: dict) -> dict[str, tuple]:
  model = models.build_segmenter(fields)
  size = fields['image_size']
  images = jax.ShapeDtypeStruct((1,) + tuple(size) + (3,), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
  return {k: tuple(v.shape) for k, v in _flat(shapes['params']).items()}


def _names(names, limit=3) -> str:
  names = sorted(names)
  more = f' and {len(names) - limit} more' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more


def _check_fit(have: dict[str, np.ndarray], want: dict[str, tuple], what: str, fix: str) -> None:
  missing, extra = set(want) - set(have), set(have) - set(want)
  mismatched = {f'{k} {have[k].shape} vs {want[k]}' for k in set(want) & set(have)
                if tuple(have[k].shape) != tuple(want[k])}
  if missing or extra or mismatched:
    details = '; '.join(f'{label}: {_names(names)}' for label, names in
                        (('missing', missing), ('unexpected', extra),
                         ('shape differs', mismatched)) if names)
    raise UserError(f'{what} does not fit the model ({details}): {fix}')


def convert_official(state_dict: dict, variant_yml: dict) -> tuple[Params, dict]:
  """An official Segmenter state dict (`torch.load(...)['model']`, tensors or numpy) and its
  variant.yml -> (params, build_segmenter fields)."""
  fields = model_fields(variant_yml)
  flat, unknown = {}, []
  for key, value in state_dict.items():
    value = np.asarray(value.detach().float().numpy() if hasattr(value, 'detach') else value)
    part, _, rest = key.partition('.')
    if key in UNUSED_OFFICIAL:
      logging.info('Unused official tensor %s %s (the ImageNet head).', key, value.shape)
      continue
    try:
      if part == 'encoder':
        flat.update(_encoder_leaves(rest, value, fields['num_heads']))
      elif part == 'decoder':
        flat.update(_decoder_leaves(rest, value, fields.get('decoder_num_heads', 1)))
      else:
        raise KeyError(key)
    except KeyError:
      unknown.append(key)
  if unknown:
    raise UserError(f'official state dict has tensors with no place in Segmenter: '
                    f'{_names(unknown)} (is it a Segmenter checkpoint.pth?)')
  _check_fit(flat, _expected_shapes(fields), 'official state dict',
             'check that variant.yml belongs to this checkpoint.pth')
  return _tree(flat), fields


def load_official(pth_path: str, variant_yml_path: Optional[str] = None) -> tuple[Params, dict]:
  """convert_official on files; variant.yml defaults to the one beside checkpoint.pth."""
  variant_yml_path = variant_yml_path or os.path.join(os.path.dirname(pth_path), 'variant.yml')
  return convert_official(load_pth(pth_path), read_variant_yml(variant_yml_path))


# ------------------------------------------------------------------------- encoder from ViT


def _square_grid(tokens: int, what: str) -> tuple[int, int]:
  side = int(round(np.sqrt(tokens)))
  if side * side != tokens:
    raise UserError(f'{what}: {tokens} position embeddings are not a square grid; pass grid=')
  return side, side


def _fill(params: Params, loaded: dict[str, np.ndarray], source: str,
          grid: Optional[tuple[int, int]], scope: str = 'encoder/') -> Params:
  """params with everything under `scope` replaced by `loaded` (flat), the position
  embeddings resized to `grid` if they were made for another."""
  fresh = _flat(params)
  want = {k: np.shape(v) for k, v in fresh.items() if k.startswith(scope)}
  key = 'encoder/Transformer/posembed_input/pos_embedding'
  old, new_shape = loaded.get(key), want.get(key)
  # Only the grid may differ; other mismatches are reported with the rest by _check_fit.
  if (old is not None and new_shape is not None and old.shape != new_shape
      and old.shape[-1] == new_shape[-1]):
    prefix = sum(k in want for k in ('encoder/cls', 'encoder/dist'))
    old_grid = _square_grid(old.shape[1] - prefix, source)
    new_grid = tuple(grid) if grid else _square_grid(new_shape[1] - prefix, 'the model')
    if new_grid[0] * new_grid[1] + prefix != new_shape[1]:
      raise UserError(f'{source}: position embeddings {old.shape} cannot become {new_shape} '
                      f'(grid {new_grid}): check config.model (variant, image_size)')
    logging.info('Resizing position embeddings %s -> %s: grid %s -> %s, bilinear '
                 '(align_corners off) as Segmenter does.', old.shape, new_shape, old_grid,
                 new_grid)
    loaded = dict(loaded, **{key: np.asarray(resize_position_embeddings(
        jnp.asarray(old), old_grid, new_grid, prefix))})
  _check_fit(loaded, want, source,
             'check config.model (variant, decoder, num_classes, image_size)')
  fresh.update({k: np.asarray(v, dtype=np.asarray(fresh[k]).dtype) for k, v in loaded.items()})
  return _tree(fresh)


def init_encoder_from_vit(params: Params, npz_path: str,
                          grid: Optional[tuple[int, int]] = None) -> Params:
  """Fresh Segmenter params with the encoder from an official ViT `.npz`.

  `head` and `pre_logits` are dropped; position embeddings are resized to `grid` (default: the
  square grid of the model's own position embeddings, i.e. the crop's); every decision is
  logged. Anything that does not fit raises a one-line UserError.
  """
  restored = pretrained.load_npz(npz_path)
  for name in ('head', 'pre_logits'):
    if name in restored:
      logging.info('Dropping %s from %s: Segmenter has its own decoder.', name, npz_path)
      del restored[name]
  encoder = {f'encoder/{k}': v for k, v in _flat(restored).items()}
  logging.info('Encoder from %s (%d tensors); the decoder keeps its fresh init.', npz_path,
               len(encoder))
  return _fill(params, encoder, f'ViT checkpoint {npz_path}', grid)


def init_encoder_from_timm(params: Params, state_dict: dict, num_heads: int,
                           grid: Optional[tuple[int, int]] = None, source: str = 'timm ViT'
                           ) -> Params:
  """As init_encoder_from_vit, from a timm-layout ViT/DeiT state dict (the DeiT backbones);
  `head` and `head_dist` are dropped."""
  encoder, unknown = {}, []
  for key, value in state_dict.items():
    if key.split('.')[0] in ('head', 'head_dist', 'pre_logits', 'fc_norm'):
      logging.info('Dropping %s from %s: Segmenter has its own decoder.', key, source)
      continue
    try:
      encoder.update(_encoder_leaves(key, np.asarray(value), num_heads))
    except KeyError:
      unknown.append(key)
  if unknown:
    raise UserError(f'{source} has tensors that are not a plain ViT: {_names(unknown)}')
  return _fill(params, encoder, source, grid)


def load_pretrained(params: Params, path: str, model: models.Segmenter) -> Params:
  """`config.init_from` for Segmenter: an official ViT `.npz` (encoder only), a timm/DeiT
  `.pth` (encoder only), an official Segmenter `checkpoint.pth` (variant.yml beside it), or
  our converted `.npz` (whole model); position embeddings resized to `model`'s crop grid."""
  num_heads, grid = model.encoder.num_heads, model.encoder.posemb_grid
  if path.endswith('.pth'):
    state = load_pth(path)
    if not any(k.startswith('encoder.') for k in state):
      return init_encoder_from_timm(params, state, num_heads, grid, f'ViT checkpoint {path}')
    variant = read_variant_yml(os.path.join(os.path.dirname(path), 'variant.yml'))
    loaded, _ = convert_official(state, variant)
  else:
    ours = False
    try:
      with np.load(path, allow_pickle=False) as files:
        ours = any(k.startswith('encoder/') for k in files.files)
    except (OSError, ValueError):
      pass  # A remote (gs://) or unreadable file: the ViT loader reads it or says why.
    if not ours:
      return init_encoder_from_vit(params, path, grid)
    loaded = load_params(path)
  logging.info('Whole model (encoder and decoder) from %s.', path)
  return _fill(params, _flat(loaded), f'checkpoint {path}', grid, scope='')
