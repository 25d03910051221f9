"""Segmenter's sliding-window inference (segm/model/utils.py), under jit, on fixed-shape batches.

Images of one batch differ in size, so each sits in a fixed canvas with its valid (h, w) beside
it, and every size-dependent step is computed from those sizes on the device:

- `resize_bilinear`: torch's bilinear resize (align_corners=False; no antialiasing, so also
  OpenCV's for downsampling) from each example's valid region to its target size.
- `sliding_window`: the original's window anchors per axis, `[a for a in range(0, L, stride)
  if a < L - window] + [L - window]`; the static canvas bounds how many there can be, and a
  window position no example of the batch uses is skipped (`lax.cond`), so the cost follows the
  real windows. Overlapping window logits are averaged.
- `segment`: per view (scale, flip): keep-ratio resize, short side up to the window, windows,
  logits resized back to the original size, unflipped, softmax; the views' probabilities are
  averaged. One view (scale 1, no flip) is the original's single-scale protocol.

`logits_fn` maps windows [n, window, window, 3] to logits [n, window, window, K].
"""

import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from vit_jax.framework.errors import UserError

LogitsFn = Callable[[jax.Array], jax.Array]


def num_anchors(length: int, window: int, stride: int) -> int:
  """The most window positions an axis of at most `length` pixels can have."""
  return max(math.ceil((length - window) / stride), 0) + 1


def window_anchor(length: jax.Array, index: int | jax.Array, window: int, stride: int):
  """The index-th anchor along an axis of `length` and whether the original uses it.

  Anchors below length - window every `stride`, then length - window itself; an axis shorter
  than the window gets one window at 0 (reaching into the padding)."""
  last = length - window
  anchor = jnp.maximum(jnp.minimum(index * stride, last), 0)
  used = (index == 0) | ((index - 1) * stride < last)
  return anchor, used


def _check_canvas(shape, window):
  if shape[1] < window or shape[2] < window:
    raise UserError(f'canvas {shape[1]}x{shape[2]} is smaller than the {window}-pixel window')


def sliding_window(logits_fn: LogitsFn, images: jax.Array, sizes: jax.Array, *, window: int,
                   stride: int, transposed: Optional[jax.Array] = None) -> jax.Array:
  """Window logits merged as the original's merge_windows, before its final resize.

  images: [B, H, W, C] canvases (H, W >= window); sizes: [B, 2] valid (h, w); transposed: [B],
  true where the canvas holds the image transposed (each window is transposed back for the
  model, and its logits again for the canvas). Returns [B, H, W, K], the mean of the logits
  of every window covering a pixel; zero outside each image.
  """
  batch, height, width, channels = images.shape
  _check_canvas(images.shape, window)
  if stride <= 0:
    raise UserError(f'the window stride must be positive, got {stride}')
  sizes = jnp.maximum(sizes, 1)  # Padding examples have size 0.
  out = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((batch, window, window, channels),
                                                       images.dtype))
  classes = out.shape[-1]
  rows, cols = num_anchors(height, window, stride), num_anchors(width, window, stride)
  take = jax.vmap(lambda x, a, b: jax.lax.dynamic_slice(
      x, (a, b, 0), (window, window, x.shape[-1])))
  add = jax.vmap(lambda acc, x, a, b: jax.lax.dynamic_update_slice(
      acc, jax.lax.dynamic_slice(acc, (a, b, 0), x.shape) + x, (a, b, 0)))

  def swap_where(flags, x):
    if flags is None:
      return x
    return jnp.where(flags[:, None, None, None], jnp.swapaxes(x, 1, 2), x)

  def step(k, carry):
    top, used_row = window_anchor(sizes[:, 0], k // cols, window, stride)
    left, used_col = window_anchor(sizes[:, 1], k % cols, window, stride)
    used = used_row & used_col

    def run(carry):
      total, count = carry
      crops = swap_where(transposed, take(images, top, left))
      logits = swap_where(transposed, logits_fn(crops).astype(jnp.float32))
      weight = used.astype(jnp.float32)[:, None, None, None]
      total = add(total, logits * weight, top, left)
      count = add(count, jnp.broadcast_to(weight, (batch, window, window, 1)), top, left)
      return total, count

    return jax.lax.cond(used.any(), run, lambda carry: carry, carry)

  total = jnp.zeros((batch, height, width, classes), jnp.float32)
  count = jnp.zeros((batch, height, width, 1), jnp.float32)
  total, count = jax.lax.fori_loop(0, rows * cols, step, (total, count))
  return total / jnp.maximum(count, 1.0)


def _source_index(in_size, out_size, length: int):
  """torch's area_pixel_compute_source_index (align_corners=False, linear): per example, the
  two source pixels and the weight of the second for each of `length` outputs."""
  in_size = in_size.astype(jnp.float32)[:, None]
  scale = in_size / out_size.astype(jnp.float32)[:, None]
  source = jnp.maximum(scale * (jnp.arange(length, dtype=jnp.float32) + 0.5) - 0.5, 0.0)
  last = in_size.astype(jnp.int32) - 1
  first = jnp.minimum(jnp.floor(source).astype(jnp.int32), last)
  return first, jnp.minimum(first + 1, last), source - first


def _resize_axis(x, in_size, out_size, length: int, axis: int):
  first, second, weight = _source_index(in_size, out_size, length)
  expand = lambda a: jnp.expand_dims(a, tuple(d for d in range(1, x.ndim) if d != axis))
  gather = lambda index: jnp.take_along_axis(x, expand(index), axis=axis)
  weight = expand(weight)
  return gather(first) * (1.0 - weight) + gather(second) * weight


def resize_bilinear(x: jax.Array, in_sizes: jax.Array, out_sizes: jax.Array,
                    out_shape: Sequence[int]) -> jax.Array:
  """Bilinear resize of each example's valid region, torch's F.interpolate(mode='bilinear',
  align_corners=False) to the pixel (also for downsampling: no antialiasing).

  x: [B, H, W, C]; in_sizes, out_sizes: [B, 2] (h, w); out_shape: the static (H', W') of the
  result, at least every out_size. Outside out_size the result repeats the edge.
  """
  in_sizes, out_sizes = jnp.maximum(in_sizes, 1), jnp.maximum(out_sizes, 1)
  x = _resize_axis(x, in_sizes[:, 0], out_sizes[:, 0], out_shape[0], axis=1)
  return _resize_axis(x, in_sizes[:, 1], out_sizes[:, 1], out_shape[1], axis=2)


def flip_width(x: jax.Array, sizes: jax.Array, transposed: Optional[jax.Array] = None):
  """Mirror each example's valid region along the image's width, which is the canvas rows of a
  transposed example."""
  sizes = jnp.maximum(sizes, 1)

  def mirror(axis, size):
    index = jnp.maximum(size[:, None] - 1 - jnp.arange(x.shape[axis]), 0)
    return jnp.take_along_axis(
        x, jnp.expand_dims(index, tuple(d for d in range(1, x.ndim) if d != axis)), axis=axis)

  cols = mirror(2, sizes[:, 1])
  if transposed is None:
    return cols
  return jnp.where(transposed.astype(bool)[:, None, None, None], mirror(1, sizes[:, 0]), cols)


def segment(logits_fn: LogitsFn, images: jax.Array, sizes: jax.Array, scaled_sizes: jax.Array,
            view_sizes: jax.Array, *, scaled_canvases: Sequence[Sequence[int]],
            view_canvases: Sequence[Sequence[int]], window: int, stride: int,
            flip: bool = False, transposed: Optional[jax.Array] = None) -> jax.Array:
  """Class probabilities at the original resolution, averaged over the views.

  images: [B, H, W, 3] normalised originals in their canvases; sizes [B, 2]; scaled_sizes and
  view_sizes [B, S, 2] for S scales, with their static canvases (segmentation_input's eval
  examples and EvalGeometry). Returns [B, H, W, K].
  """
  total, views = 0.0, 0
  for s, (scaled_canvas, view_canvas) in enumerate(zip(scaled_canvases, view_canvases)):
    scaled = resize_bilinear(images, sizes, scaled_sizes[:, s], scaled_canvas)
    view = resize_bilinear(scaled, scaled_sizes[:, s], view_sizes[:, s], view_canvas)
    for flipped in ((False, True) if flip else (False,)):
      crops = flip_width(view, view_sizes[:, s], transposed) if flipped else view
      logits = sliding_window(logits_fn, crops, view_sizes[:, s], window=window, stride=stride,
                              transposed=transposed)
      logits = resize_bilinear(logits, view_sizes[:, s], sizes, images.shape[1:3])
      if flipped:
        logits = flip_width(logits, sizes, transposed)
      total += jax.nn.softmax(logits, axis=-1)
      views += 1
  return total / views
