"""Official ViT `.npz` checkpoints, both ways, and fine-tuning from them.

The official files (gs://vit_models/imagenet21k, augreg, ...) store '/'-joined keys with
pre-Linen module numbering: inside an encoder block `LayerNorm_0`, `MultiHeadDotProductAttention_1`,
`LayerNorm_2`, `MlpBlock_3`, where Linen counts per class (`LayerNorm_1`, `..._0`, `MlpBlock_0`).
Hybrid checkpoints store GroupNorm scale and bias as (1, 1, 1, C). `load_npz` and `save_npz`
translate between that format and our parameter tree.
"""

import io
import re
from typing import Any

import numpy as np
import scipy.ndimage
import tensorflow as tf
from absl import logging

from vit_jax.errors import UserError

Params = dict[str, Any]

# Encoder-block children in creation order, Linen name -> pre-Linen name.
_BLOCK_TO_PRE_LINEN = {
    'LayerNorm_0': 'LayerNorm_0',
    'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1',
    'LayerNorm_1': 'LayerNorm_2',
    'MlpBlock_0': 'MlpBlock_3',
}
_PREFIXES = ('opt/target/', 'params/')


def _unflatten(flat: dict[str, np.ndarray]) -> Params:
  tree: Params = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split('/')
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def _flatten(tree: Params, prefix: str = '') -> dict[str, np.ndarray]:
  flat = {}
  for name, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{name}/'))
    else:
      flat[f'{prefix}{name}'] = np.asarray(value)
  return flat


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


def load_npz(path: str) -> Params:
  """An official (or our) ViT `.npz` as a parameter tree with our (Linen) names."""
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:  # Local paths and gs://vit_models/... alike.
      flat = dict(np.load(io.BytesIO(f.read()), allow_pickle=False))
  except (OSError, ValueError, tf.errors.OpError) as e:
    raise UserError(f'cannot read checkpoint {path!r}: {e}') from None
  for prefix in _PREFIXES:
    if any(k.startswith(prefix) for k in flat):
      flat = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  # i21k+i1k fine-tuned files keep an empty pre_logits entry.
  flat = {k: v for k, v in flat.items() if v.size or not k.startswith('pre_logits')}
  return _squeeze_group_norms(_to_linen(_unflatten(flat)))


def save_npz(path: str, params: Params) -> None:
  """Writes params in the official format (pre-Linen block names, hybrid GroupNorm as 1x1x1xC),
  readable by vision_transformer, big_vision and timm's loaders."""
  out = {}
  for key, value in _flatten(params).items():
    parts = key.split('/')
    if len(parts) > 2 and parts[0] == 'Transformer' and parts[1].startswith('encoderblock_'):
      parts[2] = _BLOCK_TO_PRE_LINEN.get(parts[2], parts[2])
    if re.fullmatch(r'gn_\w+|gn\d', parts[-2] if len(parts) > 1 else '') and value.ndim == 1:
      value = value.reshape(1, 1, 1, -1)
    out['/'.join(parts)] = value
  buffer = io.BytesIO()  # zip needs seeking, which GFile writers do not offer.
  np.savez(buffer, **out)
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(buffer.getvalue())


def resize_posemb(posemb: np.ndarray, num_tokens: int, num_prefix_tokens: int = 1,
                  method: str = 'zoom') -> np.ndarray:
  """(1, prefix + g_old**2, D) -> (1, prefix + g_new**2, D); the class-token row is kept apart.

  method 'zoom' is the original: scipy.ndimage.zoom(order=1) on the grid (bilinear through the
  corner pixels). 'bilinear' samples at pixel centres (align_corners=False), as torch/timm
  users may expect.
  """
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
  old, new = int(round(np.sqrt(len(grid)))), int(round(np.sqrt(num_tokens - num_prefix_tokens)))
  if old * old != len(grid) or new * new != num_tokens - num_prefix_tokens:
    raise UserError(f'cannot resize position embeddings of {posemb.shape[1]} tokens to '
                    f'{num_tokens}: the patch grids are not square')
  grid = grid.reshape(old, old, -1)
  if method == 'zoom':
    grid = scipy.ndimage.zoom(grid, (new / old, new / old, 1), order=1)
  elif method == 'bilinear':
    import jax  # Only this option needs it here.
    grid = np.asarray(jax.image.resize(grid, (new, new, grid.shape[-1]), 'bilinear',
                                       antialias=False))
  else:
    raise UserError(f'unknown position-embedding resize {method!r}: use zoom or bilinear')
  return np.concatenate([prefix, grid.reshape(1, new * new, -1)], axis=1).astype(posemb.dtype)


def load_pretrained(init_params: Params, path: str, posemb_resize: str = 'zoom') -> Params:
  """Fine-tuning start: `init_params` (the new model, fresh) filled from the checkpoint at `path`.

  - the head is kept from `init_params` (zeros) when the class count differs;
  - `pre_logits` is dropped when the new model has no representation layer;
  - position embeddings are resized to the new grid;
  each decision is logged. Anything else that does not fit is an error naming the parameters.
  """
  restored = load_npz(path)

  if 'pre_logits' in restored and 'pre_logits' not in init_params:
    logging.info('Dropping pre_logits from %s: the model has no representation layer.', path)
    del restored['pre_logits']
  if 'head' in init_params and 'head' in restored and (
      restored['head']['kernel'].shape != init_params['head']['kernel'].shape):
    logging.info('Re-initialising the head (zeros): checkpoint has %d classes, model %d.',
                 restored['head']['kernel'].shape[-1], init_params['head']['kernel'].shape[-1])
    restored['head'] = {k: np.asarray(v) for k, v in init_params['head'].items()}
  posemb_path = ('Transformer', 'posembed_input', 'pos_embedding')
  try:
    old = restored['Transformer']['posembed_input']['pos_embedding']
    new = init_params['Transformer']['posembed_input']['pos_embedding']
  except KeyError:
    old = new = None
  if old is not None and old.shape != tuple(new.shape):
    prefix = 1 if 'cls' in init_params else 0
    logging.info('Resizing position embeddings %s -> %s (%s).', old.shape, new.shape,
                 posemb_resize)
    restored[posemb_path[0]][posemb_path[1]][posemb_path[2]] = resize_posemb(
        old, new.shape[1], prefix, posemb_resize)

  want, have = _flatten(init_params), _flatten(restored)
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want))
  mismatched = sorted(k for k in set(want) & set(have) if want[k].shape != have[k].shape)
  if missing or extra or mismatched:
    details = '; '.join(f'{label}: {", ".join(names[:3])}{" ..." if len(names) > 3 else ""}'
                        for label, names in (('missing', missing), ('unexpected', extra),
                                             ('shape differs', mismatched)) if names)
    raise UserError(f'checkpoint {path} does not fit the model ({details}): check '
                    'config.model (variant, classifier, representation_size)')
  return _unflatten({k: have[k].astype(want[k].dtype) for k in want})
