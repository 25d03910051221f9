"""Swin weights: the official `.pth` files (both layouts) into our params, and ours back to timm's.

Names (reference/swin.md §3; Linear weights transposed, the fused qkv split per head):
  patch_embed.proj.{weight (C,3,4,4), bias}   -> patch_embed/proj/{kernel (4,4,3,C), bias}
  patch_embed.norm, norm, *.norm1, *.norm2    -> .../{scale, bias}
  layers.i.blocks.j.attn.qkv (3C, C), rows q, k, v -> layers_i/blocks_j/attn/{query,key,value}
                                                  {kernel (C, heads, 32), bias (heads, 32)}
  layers.i.blocks.j.attn.proj                 -> layers_i/blocks_j/attn/proj {kernel (heads, 32, C)}
  layers.i.blocks.j.attn.relative_position_bias_table -> the same name, as it is
  layers.i.blocks.j.mlp.fc1 / fc2             -> layers_i/blocks_j/mlp/fc1 / fc2
  layers.i.downsample.{norm, reduction}       -> layers_i/downsample/... (timm >= 0.9: at the start
                                                  of stage i; the original: the end of stage i-1)
  head.fc (timm >= 0.9) / head (the original) -> head
The original's buffers (`relative_position_index`, `attn_mask`) are recomputed, not loaded. The
heads of a block are read off its table's shape, so no config is needed. A scanned model
(model.scan) keeps each stage's blocks 0, 2, 4, ... stacked under `blocks/plain` and 1, 3, 5, ...
under `blocks/shifted`; files are per block either way.
"""

import re

import numpy as np
from absl import logging

from vit_jax.classification import swin_22k_to_1k
from vit_jax.classification.swin import PAIR
from vit_jax.framework.errors import UserError
from vit_jax.framework.weights import (Params, fill, first_names, flatten, join_torch_qkv,
                                       read_npz, read_pth, split_torch_qkv,
                                       torch_out_projection, unflatten)

BLOCKS = 'blocks'  # Our repeated blocks' name (weights.fill's `layers`).
TABLE = 'relative_position_bias_table'
_BUFFERS = re.compile(r'.*\.(relative_position_index|attn_mask)')
_LEAF = {'weight': 'kernel', 'bias': 'bias'}
_NORM_LEAF = {'weight': 'scale', 'bias': 'bias'}
_PER_BLOCK = re.compile(r'(?P<stage>layers_\d+)/blocks_(?P<index>\d+)/(?P<rest>.+)')
_PAIRED = re.compile(r'(?P<stage>layers_\d+)/blocks/(?P<kind>plain|shifted)/(?P<rest>.+)')


def pair_blocks(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Per-block params (flat `layers_i/blocks_j/...`) -> a scanned model's pairs (blocks 2k
  under `blocks/plain`, 2k+1 under `blocks/shifted`, stacked over k); the rest as it is."""
  out, stacks = {}, {}
  for key, value in flat.items():
    match = _PER_BLOCK.fullmatch(key)
    if not match:
      out[key] = value
      continue
    index = int(match['index'])
    name = f'{match["stage"]}/blocks/{PAIR[index % 2]}/{match["rest"]}'
    stacks.setdefault(name, {})[index // 2] = np.asarray(value)
  for name, by_pair in stacks.items():
    plain = name.replace('/blocks/shifted/', '/blocks/plain/')
    if sorted(by_pair) != list(range(len(by_pair))) or len(stacks[plain]) != len(by_pair):
      raise UserError(f'cannot scan the blocks of {name.split("/")[0]}: a scanned stage needs '
                      'an even number of blocks 0..n-1 (or set model.scan=False)')
    out[name] = np.stack([by_pair[k] for k in range(len(by_pair))])
  return out


def unpair_blocks(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """pair_blocks' inverse (per-block params as they are)."""
  out = {}
  for key, value in flat.items():
    match = _PAIRED.fullmatch(key)
    if not match:
      out[key] = value
      continue
    offset = PAIR.index(match['kind'])
    out.update({f'{match["stage"]}/blocks_{2 * k + offset}/{match["rest"]}': np.asarray(v)
                for k, v in enumerate(value)})
  return out


def timm_layout(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A Swin state dict in timm's layout (>= 0.9) without buffers: the original's
  (`layers.i.downsample` ending stage i, `head.`) renamed as timm's checkpoint_filter_fn does."""
  original = 'layers.0.downsample.reduction.weight' in state_dict
  out = {}
  for key, value in state_dict.items():
    if _BUFFERS.fullmatch(key):
      continue
    if original:
      key = re.sub(r'^layers\.(\d+)\.downsample', lambda m: f'layers.{int(m[1]) + 1}.downsample',
                   key)
      key = re.sub(r'^head\.', 'head.fc.', key)
    out[key] = value
  return out


# Modules (timm's names) whose tensors are plain Linear / LayerNorm / conv weights and biases.
_PLAIN = re.compile(r'patch_embed\.(proj|norm)|norm\d?|head\.fc|'
                    r'layers\.\d+\.downsample\.(norm|reduction)|'
                    r'layers\.\d+\.blocks\.\d+\.(norm1|norm2|attn\.proj|mlp\.fc1|mlp\.fc2)')


def _our_module(torch_module: str) -> str:
  """'layers.1.blocks.0.attn' -> 'layers_1/blocks_0/attn'; 'head.fc' -> 'head'."""
  ours = re.sub(r'\.(\d+)', r'_\1', torch_module).replace('.', '/')
  return 'head' if ours == 'head/fc' else ours


def _torch_module(our_module: str) -> str:
  torch_module = re.sub(r'_(\d+)', r'.\1', our_module).replace('/', '.')
  return 'head.fc' if torch_module == 'head' else torch_module


def from_torch(state_dict: dict[str, np.ndarray], source: str = 'the state dict') -> Params:
  """An official or timm Swin state dict (numpy) as our parameter tree."""
  state = timm_layout(state_dict)
  heads = lambda attn: state[f'{attn}.{TABLE}'].shape[1]  # attn: a block's 'layers.i...attn'.
  flat, unknown = {}, []
  for key, value in state.items():
    module, _, leaf = key.rpartition('.')
    ours = _our_module(module)
    if leaf == TABLE:
      flat[f'{ours}/{TABLE}'] = value
    elif module.endswith('.attn.qkv'):
      flat.update({f'{ours[:-len("/qkv")]}/{name}': part for name, part in
                   split_torch_qkv(value, heads(module[:-len('.qkv')])).items()})
    elif module.endswith('.attn.proj') and leaf == 'weight':
      flat[f'{ours}/kernel'] = torch_out_projection(value, heads(module[:-len('.proj')]))
    elif _PLAIN.fullmatch(module) and leaf in _LEAF:
      if module.rpartition('.')[2].startswith('norm'):
        flat[f'{ours}/{_NORM_LEAF[leaf]}'] = value
      elif leaf == 'weight':  # Linear (out, in) -> (in, out); conv (out, in, h, w) -> HWIO.
        flat[f'{ours}/kernel'] = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
      else:
        flat[f'{ours}/bias'] = value
    else:
      unknown.append(key)
  if unknown:
    raise UserError(f'{source} has tensors that are not a Swin Transformer\'s: '
                    f'{first_names(unknown)}')
  return unflatten(flat)


def to_timm(params: Params) -> dict[str, np.ndarray]:
  """Our Swin params as a timm (>= 0.9) state dict of numpy arrays, which timm's
  `SwinTransformer` loads with `load_state_dict`."""
  flat = unpair_blocks({k: np.asarray(v) for k, v in flatten(params).items()})
  out = {}
  for name, value in flat.items():
    module, _, leaf = name.rpartition('/')
    torch_module = _torch_module(module)
    torch_leaf = 'weight' if leaf in ('kernel', 'scale') else leaf
    if module.endswith('attn/query'):
      attn = module[:-len('/query')]
      out[f'{_torch_module(attn)}.qkv.{torch_leaf}'] = join_torch_qkv(
          [flat[f'{attn}/{part}/{leaf}'] for part in ('query', 'key', 'value')])
    elif module.endswith(('attn/key', 'attn/value')):
      continue  # Joined with the query's.
    elif module.endswith('attn/proj') and leaf == 'kernel':
      out[f'{torch_module}.weight'] = value.reshape(-1, value.shape[-1]).T
    elif leaf == 'kernel':
      out[f'{torch_module}.weight'] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    else:
      out[f'{torch_module}.{torch_leaf}'] = value
  return out


# --------------------------------------------------------------- relative position tables


def _torch_bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] weights of torch's bicubic interpolation along one axis
  (align_corners=False: sampled at pixel centres, Keys' cubic with a = -0.75, edges clamped)."""
  a = -0.75
  src = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
  base = np.floor(src)
  t = src - base
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1.
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2.
  weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
  matrix = np.zeros((size_out, size_in))
  for offset in range(4):
    index = np.clip(base + offset - 1, 0, size_in - 1).astype(int)
    np.add.at(matrix, (np.arange(size_out), index), weights[:, offset])
  return matrix


def resize_table(table: np.ndarray, rows: int) -> np.ndarray:
  """A ((2w-1)^2, heads) relative position bias table resized to `rows` = (2w'-1)^2 rows, each
  head's (2w-1) x (2w-1) grid by torch's bicubic interpolation, as the original's
  `load_pretrained` does for fine-tuning at another window."""
  side_in, side_out = int(round(np.sqrt(table.shape[0]))), int(round(np.sqrt(rows)))
  if side_in ** 2 != table.shape[0] or side_out ** 2 != rows:
    raise UserError(f'cannot resize a relative position bias table of {table.shape[0]} rows to '
                    f'{rows}: both must be squares (2w-1)^2')
  matrix_in = _torch_bicubic_matrix(side_in, side_out)
  grids = table.T.reshape(-1, side_in, side_in).astype(np.float64)
  resized = matrix_in @ grids @ matrix_in.T  # [heads, side_out, side_out]
  return resized.reshape(-1, rows).T.astype(table.dtype)


def read_swin(path: str) -> Params:
  """Our params from an official or timm `.pth`, or from an `.npz` of ours (weights.write_npz)."""
  if path.endswith('.npz'):
    return unflatten(read_npz(path))
  return from_torch(read_pth(path), f'checkpoint {path}')


def _is_22k_to_1k(loaded, wanted) -> bool:
  return (np.shape(loaded.get('head/bias')) == (swin_22k_to_1k.NUM_22K_CLASSES,) and
          np.shape(wanted.get('head/bias')) == (len(swin_22k_to_1k.INDICES),))


def load_swin(fresh: Params, path: str) -> Params:
  """Fine-tuning start: `fresh` filled from the Swin checkpoint at `path`. Relative position
  tables of another window are resized (torch bicubic, as the original); a head for another
  class count starts at zero, as the original re-initialises it, but a 21841-class (22K) head
  read into 1000 classes keeps the ImageNet-1k classes' rows, as the original does
  (swin_22k_to_1k); a backbone keeps its stage norms as initialised and leaves the
  classifier's norm and head out."""
  loaded = unpair_blocks(flatten(read_swin(path)))  # Compared per block, then laid out as
  wanted = unpair_blocks(flatten(fresh))  # the model wants them.
  resized = [k for k in loaded if k.endswith(TABLE) and k in wanted
             and loaded[k].shape != wanted[k].shape and loaded[k].shape[1] == wanted[k].shape[1]]
  if resized:
    logging.info('Resizing %d relative position bias tables %s -> %s (bicubic).', len(resized),
                 loaded[resized[0]].shape, wanted[resized[0]].shape)
  loaded.update({k: resize_table(np.asarray(loaded[k]), wanted[k].shape[0]) for k in resized})
  if any(_PAIRED.fullmatch(k) for k in flatten(fresh)):
    loaded = pair_blocks(loaded)
  head_differs = any(k in wanted and np.shape(loaded[k]) != np.shape(wanted[k])
                     for k in loaded if k.startswith('head/'))
  if head_differs and _is_22k_to_1k(loaded, wanted):
    logging.info('Keeping the ImageNet-1k rows of the 22K head (the original\'s map22kto1k).')
    loaded['head/kernel'] = np.asarray(loaded['head/kernel'])[:, list(swin_22k_to_1k.INDICES)]
    loaded['head/bias'] = np.asarray(loaded['head/bias'])[list(swin_22k_to_1k.INDICES)]
  elif head_differs:
    fresh = unflatten({k: np.zeros_like(v) if k.startswith('head/') else v
                       for k, v in flatten(fresh).items()})
  # A backbone (classifier 'features') has fresh stage norms instead of the final norm and head.
  backbone = any(re.fullmatch(r'norm\d/.*', k) for k in wanted)
  optional = (r'head/.*',) + ((r'norm\d?/.*',) if backbone else ())
  return fill(fresh, unflatten(loaded), optional=optional, layers=BLOCKS,
              source=f'checkpoint {path}',
              fix='check config.model (variant, window_size, embed_dim, depths, num_heads)')
