"""Pretrained weights: reading `.npz` / `.pth` files, fitting them into a fresh model, and ViT's
official `.npz` layout. (Train-state checkpoints of a run are `vit_jax.checkpoint`, orbax.)

Every task loads the same way: a rename table turns the file's names into ours (ViT's below,
DETR's and Segmenter's in their packages), then `fill` puts the loaded arrays into the fresh
params, resizing position embeddings to the model's grid and logging each decision once.

Official ViT files (gs://vit_models/imagenet21k, augreg, ...) store '/'-joined keys with pre-Linen
module numbering: inside an encoder block `LayerNorm_0`, `MultiHeadDotProductAttention_1`,
`LayerNorm_2`, `MlpBlock_3`, where Linen counts per class (`LayerNorm_1`, `..._0`, `MlpBlock_0`).
Hybrid checkpoints store GroupNorm scale and bias as (1, 1, 1, C).
"""

import argparse
import dataclasses
import io
import re
import zipfile
from typing import Any, Iterable, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import scipy.ndimage
import tensorflow as tf
from absl import logging
from flax import traverse_util

from vit_jax import models
from vit_jax.errors import UserError

Params = dict[str, Any]

VIT_POSEMB = 'Transformer/posembed_input/pos_embedding'


def flatten(tree: Params) -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}; logical-partitioning boxes are unboxed."""
  return traverse_util.flatten_dict(nn.meta.unbox(tree), sep='/')


def unflatten(flat: dict[str, Any]) -> Params:
  return traverse_util.unflatten_dict(flat, sep='/')


# -------------------------------------------------------------------------------- files


def read_npz(path: str) -> dict[str, np.ndarray]:
  """The arrays of an `.npz` (local or gs://) by name; pickled objects are refused."""
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      data = f.read()
    if not data.startswith(b'PK'):  # np.load would try it as a pickle and blame that.
      raise ValueError('not an .npz (zip) file')
    with np.load(io.BytesIO(data), allow_pickle=False) as files:
      return dict(files)
  except (zipfile.BadZipFile, EOFError):  # A zip's index is at its end: a cut file loses it.
    raise UserError(f'cannot read checkpoint {path!r}: the .npz is truncated or damaged; '
                    'download or write it again') from None
  except (OSError, ValueError, tf.errors.OpError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f'cannot read checkpoint {path!r}: {reason}') from None


def write_npz(path: str, tree: Params) -> None:
  """`tree` (nested or already flat) as an `.npz` of '/'-joined names, local or gs://."""
  buffer = io.BytesIO()  # zip needs seeking, which GFile writers do not offer.
  np.savez(buffer, **{k: np.asarray(v) for k, v in flatten(tree).items()})
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(buffer.getvalue())


_ANSI_CODES = re.compile(r'\x1b\[[0-9;]*m')


def _refusal_reason(error: Exception) -> str:
  """torch's own reason in one line: the `WeightsUnpickler error` part, without the advice
  around it (which suggests weights_only=False) or terminal colour codes."""
  text = _ANSI_CODES.sub('', str(error))
  _, marker, reason = text.partition('WeightsUnpickler error:')
  reason = (reason if marker else text).strip().split('\n\n')[0].split('. Please')[0]
  return ' '.join(reason.split()) or type(error).__name__


def read_pth(path: str) -> dict[str, np.ndarray]:
  """The state dict in a `.pth` (`{'model': state_dict, ...}` or a bare state dict) as numpy.

  torch.load(weights_only=True): tensors and plain containers only, so a file that carries
  code is refused before any of it runs. `argparse.Namespace` is allowed too: it is an
  attribute bag, and the original DETR training checkpoints store their `args` in one.
  """
  import torch  # Only needed for .pth files.
  try:
    with torch.serialization.safe_globals([argparse.Namespace]):
      checkpoint = torch.load(path, map_location='cpu', weights_only=True)
  except FileNotFoundError:
    raise UserError(f'checkpoint {path!r} does not exist') from None
  except Exception as e:  # UnpicklingError for code, RuntimeError for a damaged zip, ...
    raise UserError(f'refusing to load {path!r}: it is not a plain weights file '
                    f'(torch.load with weights_only=True: {_refusal_reason(e)})') from None
  state = checkpoint.get('model', checkpoint) if isinstance(checkpoint, dict) else None
  if not isinstance(state, dict) or not state:
    raise UserError(f'{path!r} holds no state dict (expected tensors or {{"model": ...}})')
  return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, 'detach')}


# -------------------------------------------------------------------- torch attention layout
# torch fuses the q, k, v projections into one (3d, d) weight (nn.MultiheadAttention's
# in_proj_*, timm's attn.qkv); vit_jax.attention keeps them apart and per head.


def split_torch_qkv(value: np.ndarray, num_heads: int) -> dict[str, np.ndarray]:
  """A fused (3d, d) weight or (3d,) bias, rows q then k then v -> {'query/kernel': (d, heads,
  d/heads), ...} or {'query/bias': (heads, d/heads), ...}."""
  if value.ndim == 2:
    return {f'{name}/kernel': part.T.reshape(part.shape[1], num_heads, -1)
            for name, part in zip(('query', 'key', 'value'), np.split(value, 3))}
  return {f'{name}/bias': part.reshape(num_heads, -1)
          for name, part in zip(('query', 'key', 'value'), np.split(value, 3))}


def torch_out_projection(weight: np.ndarray, num_heads: int) -> np.ndarray:
  """The (d, d) output projection weight -> our (heads, d/heads, d) kernel."""
  return weight.T.reshape(num_heads, -1, weight.shape[0])


# ------------------------------------------------------------------- position embeddings


def resize_posemb(posemb: np.ndarray, new_grid: tuple[int, int], num_prefix_tokens: int = 1,
                  method: str = 'zoom') -> np.ndarray:
  """(1, prefix + g*g, D) -> (1, prefix + new_grid[0] * new_grid[1], D); the prefix rows (class
  token, DeiT's distillation token, or none) are kept as they are.

  'zoom' is the original ViT's: scipy.ndimage.zoom(order=1), bilinear through the corner
  pixels. 'bilinear' samples at pixel centres (torch align_corners=False), as Segmenter and
  timm do.
  """
  tokens = posemb.shape[1] - num_prefix_tokens
  side = int(round(np.sqrt(tokens)))
  if side * side != tokens:
    raise UserError(f'cannot resize position embeddings {posemb.shape} with {num_prefix_tokens} '
                    f'prefix tokens: the {tokens} others are not a square grid')
  new_grid = tuple(new_grid)
  if method == 'bilinear':
    return np.asarray(models.resize_position_embeddings(
        jnp.asarray(posemb), (side, side), new_grid, num_prefix_tokens))
  if method != 'zoom':
    raise UserError(f'unknown position-embedding resize {method!r}: use zoom or bilinear')
  grid = posemb[0, num_prefix_tokens:].reshape(side, side, -1)
  grid = scipy.ndimage.zoom(grid, (new_grid[0] / side, new_grid[1] / side, 1), order=1)
  return np.concatenate([posemb[:, :num_prefix_tokens], grid.reshape(1, -1, grid.shape[-1])],
                        axis=1).astype(posemb.dtype)


@dataclasses.dataclass(frozen=True)
class PosembResize:
  """Where a model keeps its position embeddings and how a checkpoint's are fitted to them.
  grid: the model's patch grid; None means square."""
  name: str = VIT_POSEMB
  num_prefix_tokens: int = 1
  method: str = 'zoom'
  grid: Optional[tuple[int, int]] = None


# ----------------------------------------------------------- scanned and per-layer blocks
# A model's repeated blocks under nn.scan (model.scan) keep their params stacked on a leading
# 'layers' axis under one name (`encoderblock`); unscanned, and in every checkpoint file, each
# block has its own (`encoderblock_{i}`). Each model names its blocks by a regex of the path
# that ends in the block name (`layers` below): ViT's `encoderblock`, DETR's
# `transformer/(?:encoder|decoder)/layers` (its box head's `bbox_embed/layers_{i}` differ in
# shape and stay apart). Flat names either way: '.../encoderblock/...' or
# '.../encoderblock_3/...'.

VIT_LAYERS = 'encoderblock'


def _scanned(layers: str) -> re.Pattern:
  return re.compile(rf'(?P<block>(?:^|.*/)(?:{layers}))/(?P<rest>.+)')


def _per_layer(layers: str) -> re.Pattern:
  return re.compile(rf'(?P<block>(?:^|.*/)(?:{layers}))_(?P<index>\d+)/(?P<rest>.+)')


def is_scanned(flat: dict[str, Any], layers: str = VIT_LAYERS) -> bool:
  scanned = _scanned(layers)
  return any(scanned.fullmatch(k) for k in flat)


def stack_layers(flat: dict[str, Any], layers: str = VIT_LAYERS) -> dict[str, Any]:
  """Per-layer block params (`encoderblock_{i}/...`, flat) -> stacked (`encoderblock/...`, the
  layer index first); everything else as it is."""
  out, stacks, per_layer = {}, {}, _per_layer(layers)
  for key, value in flat.items():
    match = per_layer.fullmatch(key)
    if match:
      stacks.setdefault(f'{match["block"]}/{match["rest"]}', {})[int(match['index'])] = value
    else:
      out[key] = value
  for key, by_index in stacks.items():
    if sorted(by_index) != list(range(len(by_index))):
      raise UserError(f'cannot stack {key}: blocks {sorted(by_index)} are not 0..n-1')
    out[key] = np.stack([np.asarray(by_index[i]) for i in range(len(by_index))])
  return out


def unstack_layers(flat: dict[str, Any], layers: str = VIT_LAYERS) -> dict[str, Any]:
  """Stacked block params (`encoderblock/...`, flat) -> one `encoderblock_{i}/...` per layer."""
  out, scanned = {}, _scanned(layers)
  for key, value in flat.items():
    match = scanned.fullmatch(key)
    if match:
      value = np.asarray(value)
      out.update({f'{match["block"]}_{i}/{match["rest"]}': value[i] for i in range(len(value))})
    else:
      out[key] = value
  return out


def match_layer_layout(flat: dict[str, Any], like: dict[str, Any],
                       layers: str = VIT_LAYERS) -> dict[str, Any]:
  """`flat` in the block layout of `like` (scanned or per-layer), both flat."""
  if is_scanned(like, layers) and not is_scanned(flat, layers):
    return stack_layers(flat, layers)
  if is_scanned(flat, layers) and not is_scanned(like, layers):
    return unstack_layers(flat, layers)
  return flat


# ------------------------------------------------------------------------ fitting a model


def first_names(names: Iterable[str], limit: int = 3) -> str:
  """'a, b, c and 9 more': the first few of many names, sorted, for one-line messages."""
  names = sorted(names)
  more = f' and {len(names) - limit} more' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more


def check_fit(loaded: dict[str, Any], wanted: dict[str, Any], source: str, fix: str) -> None:
  """One-line UserError listing what is missing, unexpected and of another shape (flat dicts
  of anything with a shape), unless `loaded` has exactly the names and shapes of `wanted`."""
  missing, unexpected = set(wanted) - set(loaded), set(loaded) - set(wanted)
  mismatched = {f'{k} {tuple(np.shape(loaded[k]))} vs {tuple(np.shape(wanted[k]))}'
                for k in set(wanted) & set(loaded)
                if tuple(np.shape(loaded[k])) != tuple(np.shape(wanted[k]))}
  if missing or unexpected or mismatched:
    details = '; '.join(f'{label}: {first_names(names)}' for label, names in
                        (('missing', missing), ('unexpected', unexpected),
                         ('shape differs', mismatched)) if names)
    raise UserError(f'{source} does not fit the model ({details}): {fix}')


def fill(fresh: Params, loaded: Params, *, optional: Iterable[str] = (),
         resize: Optional[PosembResize] = None, source: str = 'the checkpoint',
         fix: str = 'check config.model against it', layers: str = VIT_LAYERS) -> Params:
  """`fresh` (the new model's params, host arrays) with every array of `loaded` in its place.

  optional: regexes (full match on '/'-joined names) of parameters that need not fit: where the
    checkpoint lacks one or has another shape (a head for other classes) it keeps its fresh
    value; one the model lacks (ViT's pre_logits) is not loaded.
  resize: the position embeddings, resampled to the model's grid when their token counts differ.
  layers: the regex naming the model's repeated blocks (see stack_layers): a scanned model
    loads per-layer files and the other way round.
  Each decision is logged once; anything else that does not fit is one UserError naming it.
  """
  wanted = flatten(fresh)
  have = match_layer_layout(flatten(loaded), wanted, layers)
  if resize and resize.name in have and resize.name in wanted:
    old, new = np.shape(have[resize.name]), np.shape(wanted[resize.name])
    if old != new and old[-1] == new[-1]:  # Other mismatches are reported by check_fit.
      grid = resize.grid or (int(round(np.sqrt(new[1] - resize.num_prefix_tokens))),) * 2
      logging.info('Resizing position embeddings %s -> %s (grid %s, %s).', old, new, grid,
                   resize.method)
      have[resize.name] = resize_posemb(np.asarray(have[resize.name]), grid,
                                        resize.num_prefix_tokens, resize.method)
  optional = [re.compile(pattern) for pattern in optional]
  is_optional = lambda name: any(pattern.fullmatch(name) for pattern in optional)
  kept = sorted(k for k in wanted if is_optional(k) and (
      k not in have or np.shape(have[k]) != np.shape(wanted[k])))
  dropped = sorted(k for k in have if k not in wanted and is_optional(k))
  reshaped = [f'{k} {np.shape(have[k])} vs {np.shape(wanted[k])}' for k in kept if k in have]
  if reshaped:
    logging.info('Keeping %d tensors as initialised: %s has other shapes for them (%s).',
                 len(reshaped), source, first_names(reshaped))
  absent = [k for k in kept if k not in have]
  if absent:
    logging.info('Keeping %d tensors as initialised: %s has none for them (%s).',
                 len(absent), source, first_names(absent))
  if dropped:
    logging.info('Not loading %d tensors of %s the model does not have (%s).', len(dropped),
                 source, first_names(dropped))
  not_loaded = set(kept) | set(dropped)
  have = {k: v for k, v in have.items() if k not in not_loaded}
  check_fit(have, {k: v for k, v in wanted.items() if k not in not_loaded}, source, fix)
  logging.info('Loaded %d of the model\'s %d tensors from %s.', len(have), len(wanted), source)
  out = dict(wanted)
  out.update({k: np.asarray(v, dtype=np.asarray(wanted[k]).dtype) for k, v in have.items()})
  return unflatten(out)


# -------------------------------------------------------------------- ViT's official layout

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
  for key, value in unstack_layers(flatten(params)).items():
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
  return fill(fresh, read_vit_npz(path), optional=(r'head/.*', r'pre_logits/.*'),
              resize=PosembResize(VIT_POSEMB, 1 if 'cls' in fresh else 0, posemb_resize),
              source=f'checkpoint {path}',
              fix='check config.model (variant, classifier, representation_size)')
