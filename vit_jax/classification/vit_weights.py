"""ViT's official `.npz` layout (google-research/vision_transformer, big_vision, timm's loader).

Official ViT files (gs://vit_models/imagenet21k, augreg, ...) store '/'-joined keys with pre-Linen
module numbering: inside an encoder block `LayerNorm_0`, `MultiHeadDotProductAttention_1`,
`LayerNorm_2`, `MlpBlock_3`, where Linen counts per class (`LayerNorm_1`, `..._0`, `MlpBlock_0`).
Hybrid checkpoints store GroupNorm scale and bias as (1, 1, 1, C).
"""

import re

import numpy as np

from vit_jax.framework.weights import (PosembResize, Params, fill, flatten, read_npz,
                                       unflatten, unstack_layers, write_npz)

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


def load_vit(fresh: Params, path: str, posemb_resize: str = 'zoom') -> Params:
  """ViT fine-tuning start: `fresh` filled from the `.npz` at `path`. A head for another class
  count stays as initialised (zeros), pre_logits goes when the model has no representation
  layer, and the position embeddings are resized to the model's grid."""
  return fill(fresh, read_vit_npz(path), layers=VIT_LAYERS,
              optional=(r'head/.*', r'pre_logits/.*'), resize=PosembResize(VIT_POSEMB, 1 if 'cls' in fresh else 0, posemb_resize),
              source=f'checkpoint {path}',
              fix='check config.model (variant, classifier, representation_size)')
