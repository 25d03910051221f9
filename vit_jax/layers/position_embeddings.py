"""Position embeddings resampled to another patch grid: on the fly under jit (Segmenter's sliding
windows and padded images) and when a checkpoint is fitted to a model of another resolution."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from vit_jax.framework.errors import UserError


def resize_position_embeddings(posemb, old_grid: tuple[int, int], new_grid: tuple[int, int],
                               num_prefix_tokens: int):
  """(1, prefix + gh*gw, D) on `old_grid` -> the same on `new_grid`, as Segmenter and timm 0.4.12
  do: bilinear at pixel centres (torch align_corners=False), no antialiasing; the prefix rows
  (class / distillation tokens) are kept as they are."""
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
  grid = grid.reshape(old_grid + grid.shape[-1:])
  grid = jax.image.resize(grid, tuple(new_grid) + grid.shape[-1:], 'bilinear', antialias=False)
  return jnp.concatenate([prefix, grid.reshape((1, -1, grid.shape[-1])).astype(prefix.dtype)],
                         axis=1)


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
    return np.asarray(resize_position_embeddings(
        jnp.asarray(posemb), (side, side), new_grid, num_prefix_tokens))
  if method != 'zoom':
    raise UserError(f'unknown position-embedding resize {method!r}: use zoom or bilinear')
  grid = posemb[0, num_prefix_tokens:].reshape(side, side, -1)
  grid = scipy.ndimage.zoom(grid, (new_grid[0] / side, new_grid[1] / side, 1), order=1)
  return np.concatenate([posemb[:, :num_prefix_tokens], grid.reshape(1, -1, grid.shape[-1])],
                        axis=1).astype(posemb.dtype)
