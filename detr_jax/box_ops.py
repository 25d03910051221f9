"""Box conversions, IoU and generalized IoU (Rezatofighi et al. 2019) on the last axis.

Boxes are (cx, cy, w, h) or (x0, y0, x1, y1) along the last axis; any leading axes broadcast.
The original (detr util/box_ops.py) asserts that boxes are well formed, which kills training on
the first NaN or degenerate prediction (detr issues #101, #28, #509). Here nothing is asserted:
inverted boxes count as empty, every denominator is guarded, so finite boxes always give finite
values and finite gradients, and real boxes give the original's numbers.
"""

import jax.numpy as jnp

# Denominators below this are replaced by it. A 1-pixel box in a 1333-pixel image has a
# normalised area of 5.6e-7, so only degenerate boxes ever reach the guard.
_TINY = 1e-9


def cxcywh_to_xyxy(boxes):
  cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def _extent(lo, hi):
  """Width or height; an inverted interval is empty rather than negative."""
  return jnp.maximum(hi - lo, 0.)


def box_area(boxes):
  """Area of (x0, y0, x1, y1) boxes [..., 4] -> [...]; inverted boxes have area 0."""
  return _extent(boxes[..., 0], boxes[..., 2]) * _extent(boxes[..., 1], boxes[..., 3])


def _safe_divide(numerator, denominator):
  return numerator / jnp.maximum(denominator, _TINY)


def _iou_parts(a, b):
  """IoU, union and the enclosing box's area of boxes `a` and `b` that broadcast together."""
  inter = (_extent(jnp.maximum(a[..., 0], b[..., 0]), jnp.minimum(a[..., 2], b[..., 2])) *
           _extent(jnp.maximum(a[..., 1], b[..., 1]), jnp.minimum(a[..., 3], b[..., 3])))
  union = box_area(a) + box_area(b) - inter
  enclosing = (_extent(jnp.minimum(a[..., 0], b[..., 0]), jnp.maximum(a[..., 2], b[..., 2])) *
               _extent(jnp.minimum(a[..., 1], b[..., 1]), jnp.maximum(a[..., 3], b[..., 3])))
  return _safe_divide(inter, union), union, enclosing


def _giou(a, b):
  iou, union, enclosing = _iou_parts(a, b)
  return iou - _safe_divide(enclosing - union, enclosing)


def pairwise_generalized_box_iou(boxes1, boxes2):
  """GIoU in [-1, 1] of every pair of xyxy boxes: [..., N, 4], [..., M, 4] -> [..., N, M]."""
  return _giou(boxes1[..., :, None, :], boxes2[..., None, :, :])


def generalized_box_iou(boxes1, boxes2):
  """GIoU of matched pairs of xyxy boxes: [..., 4], [..., 4] -> [...] (the original's diagonal
  of the pairwise matrix, without computing the rest)."""
  return _giou(boxes1, boxes2)
