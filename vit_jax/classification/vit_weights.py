"""ViT's weight files: the official `.npz` layout (google-research/vision_transformer, big_vision,
timm's loader) and timm's state-dict layout (DeiT's released `.pth` files, timm's `deit_*` and
`vit_*` models, Segmenter's encoders).

Official ViT files (gs://vit_models/imagenet21k, augreg, ...) store '/'-joined keys with pre-Linen
module numbering: inside an encoder block `LayerNorm_0`, `MultiHeadDotProductAttention_1`,
`LayerNorm_2`, `MlpBlock_3`, where Linen counts per class (`LayerNorm_1`, `..._0`, `MlpBlock_0`).
Hybrid checkpoints store GroupNorm scale and bias as (1, 1, 1, C).
"""

import re

import numpy as np

from vit_jax.framework.errors import UserError
from vit_jax.framework.weights import (PosembResize, Params, fill, first_names, flatten,
                                       join_torch_qkv, read_npz, read_pth, split_torch_qkv,
                                       torch_out_projection, unflatten, unstack_layers,
                                       write_npz)

VIT_POSEMB = 'Transformer/posembed_input/pos_embedding'
VIT_LAYERS = 'encoderblock'


# Encoder-block children in creation order, Linen name -> pre-Linen name.
_BLOCK_TO_PRE_LINEN = {
    'LayerNorm_0': 'LayerNorm_0',
    'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1',
    'LayerNorm_1': 'LayerNorm_2',
    'MlpBlock_0': 'MlpBlock_3',
}
_PREFIXES = ('opt/target/', 'params/')


def _natural_key(name: str):
  return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]


def _to_linen(tree: Params) -> Params:
  """Renumbers `Class_N` children per class in natural order (pre-Linen counted per parent)."""
  out, counters = {}, {}
  for name in sorted(tree, key=_natural_key):
    value = tree[name]
    match = re.fullmatch(r'(.+)_(\d+)', name)
    if match and isinstance(value, dict) and not match.group(1).startswith(('encoderblock',)):
      cls = match.group(1)
      name = f'{cls}_{counters.get(cls, 0)}'
      counters[cls] = counters.get(cls, 0) + 1
    out[name] = _to_linen(value) if isinstance(value, dict) else value
  return out


def _squeeze_group_norms(tree: Params) -> Params:
  """(1, 1, 1, C) GroupNorm parameters of hybrid checkpoints -> (C,)."""
  return {name: _squeeze_group_norms(v) if isinstance(v, dict)
          else (v.reshape(-1) if name in ('scale', 'bias') and v.ndim == 4 else v)
          for name, v in tree.items()}


def from_official_vit(flat: dict[str, np.ndarray]) -> Params:
  """The arrays of an official (or our) ViT `.npz` as a parameter tree with our Linen names."""
  for prefix in _PREFIXES:
    if any(k.startswith(prefix) for k in flat):
      flat = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  # i21k+i1k fine-tuned files keep an empty pre_logits entry.
  flat = {k: v for k, v in flat.items() if v.size or not k.startswith('pre_logits')}
  return _squeeze_group_norms(_to_linen(unflatten(flat)))


def to_official_vit(params: Params) -> dict[str, np.ndarray]:
  """Our ViT params with official names (pre-Linen block names, hybrid GroupNorm as 1x1x1xC),
  as vision_transformer, big_vision and timm's loaders read them (a scanned encoder's blocks
  are written per layer)."""
  out = {}
  for key, value in unstack_layers(flatten(params), VIT_LAYERS).items():
    value, parts = np.asarray(value), key.split('/')
    if len(parts) > 2 and parts[0] == 'Transformer' and parts[1].startswith('encoderblock_'):
      parts[2] = _BLOCK_TO_PRE_LINEN.get(parts[2], parts[2])
    if re.fullmatch(r'gn_\w+|gn\d', parts[-2] if len(parts) > 1 else '') and value.ndim == 1:
      value = value.reshape(1, 1, 1, -1)
    out['/'.join(parts)] = value
  return out


def read_vit_npz(path: str) -> Params:
  """An official (or our) ViT `.npz`, local or gs://, as our parameter tree."""
  return from_official_vit(read_npz(path))


def write_vit_npz(path: str, params: Params) -> None:
  """Our ViT params as an official-layout `.npz` (timm's loader reads it)."""
  write_npz(path, to_official_vit(params))


# ---------------------------------------------------------------------- timm's layout
# timm names -> ours (reference/deit.md §1.5; H heads, hd = D / H; Linear weights transposed):
#   cls_token, dist_token -> cls, dist          pos_embed -> Transformer/posembed_input/pos_embedding
#   patch_embed.proj.{weight (D,3,P,P), bias} -> embedding/{kernel (P,P,3,D), bias}
#   blocks.i.norm1 / norm2 -> Transformer/encoderblock_i/LayerNorm_0 / LayerNorm_1 {scale, bias}
#   blocks.i.attn.qkv (3D, D), rows q, k, v -> .../MultiHeadDotProductAttention_0/{query,key,value}
#       {kernel (D, H, hd), bias (H, hd)}
#   blocks.i.attn.proj -> .../MultiHeadDotProductAttention_0/out {kernel (H, hd, D), bias}
#   blocks.i.mlp.fc1 / fc2 -> .../MlpBlock_0/Dense_0 / Dense_1
#   norm -> Transformer/encoder_norm            head, head_dist -> head, head_dist

_BLOCK_LEAVES = {
    'norm1': 'LayerNorm_0', 'norm2': 'LayerNorm_1',
    'attn.proj': 'MultiHeadDotProductAttention_0/out',
    'mlp.fc1': 'MlpBlock_0/Dense_0', 'mlp.fc2': 'MlpBlock_0/Dense_1'}
_PARAM_LEAF = {'weight': 'kernel', 'bias': 'bias'}
_NORM_LEAF = {'weight': 'scale', 'bias': 'bias'}
_VIT_LEAVES = {'cls_token': 'cls', 'dist_token': 'dist', 'pos_embed': VIT_POSEMB,
               'patch_embed.proj.bias': 'embedding/bias',
               'norm.weight': 'Transformer/encoder_norm/scale',
               'norm.bias': 'Transformer/encoder_norm/bias'}
_HEADS = ('head', 'head_dist')


def timm_block_leaves(prefix: str, key: str, value: np.ndarray, num_heads: int
                 ) -> dict[str, np.ndarray]:
  """One tensor of a timm transformer block (`key` relative to the block, e.g. 'attn.qkv.weight')
  -> our leaves under `prefix`; KeyError for a tensor a block does not have."""
  module, leaf = key.rsplit('.', 1)
  if module == 'attn.qkv':
    return {f'{prefix}/MultiHeadDotProductAttention_0/{name}': part
            for name, part in split_torch_qkv(value, num_heads).items()}
  if module not in _BLOCK_LEAVES:
    raise KeyError(key)
  target = f'{prefix}/{_BLOCK_LEAVES[module]}'
  if module.startswith('norm'):
    return {f'{target}/{_NORM_LEAF[leaf]}': value}
  if module == 'attn.proj' and leaf == 'weight':
    return {f'{target}/kernel': torch_out_projection(value, num_heads)}
  return {f'{target}/{_PARAM_LEAF[leaf]}': value.T if leaf == 'weight' else value}


def timm_vit_leaves(key: str, value: np.ndarray, num_heads: int) -> dict[str, np.ndarray]:
  """One tensor of a timm ViT/DeiT state dict -> our flat leaves; KeyError if it has no place."""
  block = re.fullmatch(r'blocks\.(\d+)\.(.+)', key)
  if block:
    return timm_block_leaves(f'Transformer/encoderblock_{block[1]}', block[2], value, num_heads)
  if key in _VIT_LEAVES:
    return {_VIT_LEAVES[key]: value}
  if key == 'patch_embed.proj.weight':
    return {'embedding/kernel': value.transpose(2, 3, 1, 0)}
  module, _, leaf = key.rpartition('.')
  if module in _HEADS and leaf in _PARAM_LEAF:
    return {f'{module}/{_PARAM_LEAF[leaf]}': value.T if leaf == 'weight' else value}
  raise KeyError(key)


def from_timm(state_dict: dict, num_heads: int, source: str = 'timm state dict') -> Params:
  """A timm ViT/DeiT state dict (tensors or numpy) as our parameter tree."""
  flat, unknown = {}, []
  for key, value in state_dict.items():
    value = np.asarray(value.detach().float().numpy() if hasattr(value, 'detach') else value)
    try:
      flat.update(timm_vit_leaves(key, value, num_heads))
    except KeyError:
      unknown.append(key)
  if unknown:
    raise UserError(f'{source} has tensors that are not a plain ViT/DeiT: '
                    f'{first_names(unknown)}')
  return unflatten(flat)


def to_timm(params: Params) -> dict[str, np.ndarray]:
  """Our ViT/DeiT params (per-layer or scanned) as a timm state dict of numpy arrays, which
  timm's `VisionTransformer` / `VisionTransformerDistilled` load with `load_state_dict`."""
  ours = unstack_layers(flatten(params), VIT_LAYERS)
  to_timm_name = {v: k for k, v in _VIT_LEAVES.items()}
  out, blocks = {}, {}
  for name, value in ours.items():
    value = np.asarray(value)
    block = re.fullmatch(r'Transformer/encoderblock_(\d+)/(.+)', name)
    if block:
      blocks.setdefault(int(block[1]), {})[block[2]] = value
    elif name in to_timm_name:
      out[to_timm_name[name]] = value
    elif name == 'embedding/kernel':
      out['patch_embed.proj.weight'] = value.transpose(3, 2, 0, 1)
    elif name.split('/')[0] in _HEADS and name.count('/') == 1:
      module, leaf = name.split('/')
      out[f'{module}.{"weight" if leaf == "kernel" else "bias"}'] = (
          value.T if leaf == 'kernel' else value)
    else:
      raise UserError(f'{name} has no place in timm\'s ViT layout (a hybrid or pre_logits model '
                      'is not a timm ViT/DeiT)')
  for i, block in sorted(blocks.items()):
    out.update(_timm_block(f'blocks.{i}', block))
  return out


def _timm_block(prefix: str, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Our block leaves (relative names) -> timm's block tensors under `prefix`."""
  attention = 'MultiHeadDotProductAttention_0'
  out = {f'{prefix}.attn.qkv.weight': join_torch_qkv(
             [block[f'{attention}/{n}/kernel'] for n in ('query', 'key', 'value')]),
         f'{prefix}.attn.qkv.bias': join_torch_qkv(
             [block[f'{attention}/{n}/bias'] for n in ('query', 'key', 'value')])}
  out_kernel = block[f'{attention}/out/kernel']
  out[f'{prefix}.attn.proj.weight'] = out_kernel.reshape(-1, out_kernel.shape[-1]).T
  out[f'{prefix}.attn.proj.bias'] = block[f'{attention}/out/bias']
  for module, ours in _BLOCK_LEAVES.items():
    if module == 'attn.proj':
      continue
    leaves = _NORM_LEAF if module.startswith('norm') else _PARAM_LEAF
    for leaf, our_leaf in leaves.items():
      value = block[f'{ours}/{our_leaf}']
      out[f'{prefix}.{module}.{leaf}'] = value.T if our_leaf == 'kernel' else value
  return out


def read_timm_pth(path: str, num_heads: int) -> Params:
  """A DeiT release `.pth` (`{'model': state_dict}`) or a saved timm state dict as our params."""
  return from_timm(read_pth(path), num_heads, f'checkpoint {path}')


def prefix_tokens(vit_params: Params) -> int:
  """The tokens a ViT puts before its patches (class and DeiT's distillation token): the rows of
  its position embeddings that are not on the patch grid."""
  return sum(name in vit_params for name in ('cls', 'dist'))


def load_vit(fresh: Params, path: str, posemb_resize: str = 'zoom',
             num_heads: int | None = None) -> Params:
  """ViT fine-tuning start: `fresh` filled from the official-layout `.npz` at `path`, or from a
  timm/DeiT `.pth` (then `num_heads` splits its fused qkv). A head for another class count
  stays as initialised, pre_logits goes when the model has no representation layer, and the
  position embeddings are resized to the model's grid (its prefix tokens kept as they are)."""
  if path.endswith('.pth'):
    loaded = read_timm_pth(path, num_heads)
  else:
    loaded = read_vit_npz(path)
  return fill(fresh, loaded, layers=VIT_LAYERS,
              optional=(r'head/.*', r'head_dist/.*', r'pre_logits/.*'),
              resize=PosembResize(VIT_POSEMB, prefix_tokens(fresh), posemb_resize),
              source=f'checkpoint {path}',
              fix='check config.model (variant, classifier, distilled, representation_size)')
