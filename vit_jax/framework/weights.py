"""Pretrained weights: reading `.npz` / `.pth` files and fitting them into a fresh model.
(Train-state checkpoints of a run are `vit_jax.framework.checkpoint`, orbax.)

Every model loads the same way: a rename table turns the file's names into ours (ViT's in
`vit_jax.classification.vit_weights`, DETR's and Segmenter's in their packages), then `fill` puts
the loaded arrays into the fresh params, resizing position embeddings to the model's grid and
logging each decision once.
"""

import argparse
import dataclasses
import io
import re
import zipfile
from typing import Any, Iterable, Optional

import flax.linen as nn
import numpy as np
from absl import logging
from flax import traverse_util

from vit_jax.framework import paths
from vit_jax.framework.errors import UserError
from vit_jax.layers.position_embeddings import resize_posemb

Params = dict[str, Any]

def flatten(tree: Params) -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}; logical-partitioning boxes are unboxed."""
  return traverse_util.flatten_dict(nn.meta.unbox(tree), sep='/')


def unflatten(flat: dict[str, Any]) -> Params:
  return traverse_util.unflatten_dict(flat, sep='/')


# -------------------------------------------------------------------------------- files


def read_npz(path: str) -> dict[str, np.ndarray]:
  """The arrays of an `.npz` (a local path or URL) by name; pickled objects are refused."""
  try:
    data = paths.read_bytes(path)
    if not data.startswith(b'PK'):  # np.load would try it as a pickle and blame that.
      raise ValueError('not an .npz (zip) file')
    with np.load(io.BytesIO(data), allow_pickle=False) as files:
      arrays = dict(files)  # A zip member that is not an .npy comes back as bytes.
    if any(name.endswith('data.pkl') for name in arrays):  # torch.save's zip layout.
      raise ValueError('it is a PyTorch file (torch.save), not an .npz: give it a .pth name '
                       'if it holds a state dict of this model, or convert it to .npz')
    others = [name for name, value in arrays.items() if not isinstance(value, np.ndarray)]
    if others:
      raise ValueError(f'not an .npz of arrays ({others[0]!r} is not an .npy)')
    return arrays
  except (zipfile.BadZipFile, EOFError):  # A zip's index is at its end: a cut file loses it.
    raise UserError(f'cannot read checkpoint {path!r}: the .npz is truncated or damaged; '
                    'download or write it again') from None
  except (OSError, ValueError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    where = (': without access to it, download it and pass its local path instead, e.g. '
             '--config.init_from=/path/to/file.npz' if paths.is_url(path) else '')
    raise UserError(f'cannot read checkpoint {path!r}: {reason}{where}') from None


def write_npz(path: str, tree: Params) -> None:
  """`tree` (nested or already flat) as an `.npz` of '/'-joined names (a local path or URL)."""
  buffer = io.BytesIO()  # zip needs seeking, which object-store writers do not offer.
  np.savez(buffer, **{k: np.asarray(v) for k, v in flatten(tree).items()})
  with paths.open(path, 'wb') as f:
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
  """The state dict in a `.pth` (a local path or URL; `{'model': state_dict, ...}` or a bare
  state dict) as numpy.

  torch.load(weights_only=True): tensors and plain containers only, so a file that carries
  code is refused before any of it runs. `argparse.Namespace` is allowed too: it is an
  attribute bag, and the original DETR training checkpoints store their `args` in one.
  """
  import torch  # Only needed for .pth files.
  try:
    with torch.serialization.safe_globals([argparse.Namespace]), paths.open(path, 'rb') as f:
      checkpoint = torch.load(f, map_location='cpu', weights_only=True)
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
# in_proj_*, timm's attn.qkv); vit_jax.layers.attention keeps them apart and per head.


def split_torch_qkv(value: np.ndarray, num_heads: int) -> dict[str, np.ndarray]:
  """A fused (3d, d) weight or (3d,) bias, rows q then k then v -> {'query/kernel': (d, heads,
  d/heads), ...} or {'query/bias': (heads, d/heads), ...}."""
  if value.ndim == 2:
    return {f'{name}/kernel': part.T.reshape(part.shape[1], num_heads, -1)
            for name, part in zip(('query', 'key', 'value'), np.split(value, 3))}
  return {f'{name}/bias': part.reshape(num_heads, -1)
          for name, part in zip(('query', 'key', 'value'), np.split(value, 3))}


def join_torch_qkv(parts: list[np.ndarray]) -> np.ndarray:
  """split_torch_qkv's inverse: [query, key, value] kernels (d, heads, d/heads) or biases
  (heads, d/heads) -> the fused (3d, d) weight or (3d,) bias."""
  return np.concatenate([part.reshape(part.shape[0], -1).T if part.ndim == 3
                         else part.reshape(-1) for part in parts])


def torch_out_projection(weight: np.ndarray, num_heads: int) -> np.ndarray:
  """The (d, d) output projection weight -> our (heads, d/heads, d) kernel."""
  return weight.T.reshape(num_heads, -1, weight.shape[0])


# ------------------------------------------------------------------- position embeddings


@dataclasses.dataclass(frozen=True)
class PosembResize:
  """Where a model keeps its position embeddings and how a checkpoint's are fitted to them.
  grid: the model's patch grid; None means square."""
  name: str
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

def _scanned(layers: str) -> re.Pattern:
  return re.compile(rf'(?P<block>(?:^|.*/)(?:{layers}))/(?P<rest>.+)')


def _per_layer(layers: str) -> re.Pattern:
  return re.compile(rf'(?P<block>(?:^|.*/)(?:{layers}))_(?P<index>\d+)/(?P<rest>.+)')


def is_scanned(flat: dict[str, Any], layers: str) -> bool:
  scanned = _scanned(layers)
  return any(scanned.fullmatch(k) for k in flat)


def stack_layers(flat: dict[str, Any], layers: str) -> dict[str, Any]:
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


def unstack_layers(flat: dict[str, Any], layers: str) -> dict[str, Any]:
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
                       layers: str) -> dict[str, Any]:
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
         fix: str = 'check config.model against it', layers: str) -> Params:
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
