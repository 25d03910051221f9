"""DETR's Hungarian matcher: the cost on device, the assignment on the host by scipy.

`matching_cost` is the original HungarianMatcher's cost (detr models/matcher.py), computed per
image instead of for the whole flattened batch, made finite (as scenic does) so that a NaN
prediction never crashes the solver. `hungarian_match` hands all (layer, image) problems of a
batch shard to `scipy.optimize.linear_sum_assignment` in one `jax.pure_callback`, solving each on
its real target columns only (a 100 x 7 solve takes ~6 us, a 100 x 100 one ~330 us).

Under a multi-device mesh the callback runs inside `jax.shard_map`, so every device's host solves
its own slice of the batch, concurrently. Under plain jit XLA would instead gather the whole
batch to device 0 for one call, and a Python exception in that call aborts the process after a
minute instead of raising (reference/environment.md §4).
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from scipy import optimize

from detr_jax import box_ops
from vit_jax.framework.errors import UserError


# The focal class cost's guard in log (Deformable DETR's matcher): -log(p + eps) <= -log(eps).
_FOCAL_EPS = 1e-8


def cost_bound(*, class_weight=1., bbox_weight=5., giou_weight=2., focal_alpha=None) -> float:
  """The largest cost two boxes in [0, 1] can have: L1 <= 4, -GIoU <= 1, -probability <= 0
  (the focal class cost <= alpha * -log(eps))."""
  focal = 0. if focal_alpha is None else class_weight * focal_alpha * -math.log(_FOCAL_EPS)
  return 4 * bbox_weight + giou_weight + focal


def matching_cost(logits, pred_boxes, labels, target_boxes, target_mask, *, class_weight=1.,
                  bbox_weight=5., giou_weight=2., focal_alpha=None, focal_gamma=2.):
  """Cost of assigning each query to each target slot.

  Args:
    logits: [..., Q, C] class logits, the last class being no-object (softmax classes), or C
      sigmoid classes when `focal_alpha` is given.
    pred_boxes: [..., Q, 4] normalised (cx, cy, w, h).
    labels: [..., T] int class of each target slot.
    target_boxes: [..., T, 4] normalised (cx, cy, w, h).
    target_mask: [..., T], nonzero on real targets (padding may sit in any slot).
    class_weight, bbox_weight, giou_weight: the original's --set_cost_* (1, 5, 2; Deformable
      DETR's 2, 5, 2).
    focal_alpha, focal_gamma: sigmoid classes (Deformable DETR's matcher, 0.25 and 2): the
      class cost is the focal loss's positive term minus its negative term at the label,
      alpha (1 - p)^gamma (-log(p + eps)) - (1 - alpha) p^gamma (-log(1 - p + eps)).

  Returns:
    [..., Q, T] float32: bbox_weight * L1 + class_weight * class cost - giou_weight * GIoU
    (class cost -p(label), or the focal one), finite everywhere: NaN/inf entries and padded
    slots hold `cost_bound(...)`.
  """
  logits = logits.astype(jnp.float32)
  pred_boxes = pred_boxes.astype(jnp.float32)
  target_boxes = target_boxes.astype(jnp.float32)
  num_queries = logits.shape[-2]
  label_index = jnp.broadcast_to(labels[..., None, :],
                                 labels.shape[:-1] + (num_queries, labels.shape[-1]))
  if focal_alpha is None:
    prob = jax.nn.softmax(logits, axis=-1)
    class_cost = -jnp.take_along_axis(prob, label_index, axis=-1, mode='clip')
  else:
    prob = jnp.take_along_axis(jax.nn.sigmoid(logits), label_index, axis=-1, mode='clip')
    negative = (1 - focal_alpha) * prob**focal_gamma * -jnp.log(1 - prob + _FOCAL_EPS)
    positive = focal_alpha * (1 - prob)**focal_gamma * -jnp.log(prob + _FOCAL_EPS)
    class_cost = positive - negative
  l1_cost = jnp.abs(pred_boxes[..., :, None, :] - target_boxes[..., None, :, :]).sum(-1)
  giou_cost = -box_ops.pairwise_generalized_box_iou(box_ops.cxcywh_to_xyxy(pred_boxes),
                                                    box_ops.cxcywh_to_xyxy(target_boxes))
  cost = bbox_weight * l1_cost + class_weight * class_cost + giou_weight * giou_cost
  bound = cost_bound(class_weight=class_weight, bbox_weight=bbox_weight, giou_weight=giou_weight,
                     focal_alpha=focal_alpha)
  cost = jnp.where(target_mask[..., None, :].astype(bool), cost, bound)
  return jnp.nan_to_num(cost, nan=bound, posinf=bound, neginf=bound)


class MatchingError(RuntimeError):
  """scipy could not solve an assignment; the message names the problem and scipy's reason."""


def _solve_on_host(cost: np.ndarray, mask: np.ndarray, first_image: np.ndarray) -> np.ndarray:
  """cost [L, b, Q, T], mask [L, b, T] -> [L, b, T] int32: the query of each real slot, else -1.

  `first_image`: the batch index of this shard's first image, for error messages.
  """
  cost, mask = np.asarray(cost), np.asarray(mask, bool)
  target_query = np.full(mask.shape, -1, np.int32)
  for index in np.ndindex(mask.shape[:-1]):
    columns = np.flatnonzero(mask[index])
    if not columns.size:
      continue
    try:
      rows, picked = optimize.linear_sum_assignment(cost[index][:, columns])
    except Exception as e:  # The message must survive the trip through XLA: put it in ours.
      raise MatchingError(
          f'Hungarian matching failed for decoder layer {index[-2]}, image '
          f'{int(np.ravel(first_image)[0]) + index[-1]} of the batch ({cost.shape[-2]} queries x '
          f'{columns.size} targets): {type(e).__name__}: {e}') from e
    target_query[index][columns[picked]] = rows
  return target_query


def _solve(cost, mask, axes=()):
  """One host callback for every (layer, image) of the arrays it is given; `axes`: the mesh
  axes that split the batch when called inside shard_map."""
  mask = jnp.broadcast_to(mask, cost.shape[:-2] + mask.shape[-1:])
  first_image = jax.lax.axis_index(axes) * cost.shape[1] if axes else jnp.zeros((), jnp.int32)
  result = jax.ShapeDtypeStruct(mask.shape, jnp.int32)
  # Resolved here, when traced, so tests can swap in a recording or failing solver.
  return jax.pure_callback(_solve_on_host, result, cost, mask, first_image,
                           vmap_method='broadcast_all')


def _shard_axes(mesh, batch_size: int) -> tuple[str, ...]:
  """Mesh axes to split the batch over in the callback: the batch's own axes (so shards are
  where the data already is), then any other axes that still divide it (so devices that hold
  the same shard, e.g. along 'model', each solve a part instead of all solving all of it)."""
  batch_axes = nn.logical_to_mesh_axes(('batch',))[0]
  batch_axes = batch_axes if isinstance(batch_axes, tuple) else (batch_axes,)
  ordered = [a for a in batch_axes if a in mesh.axis_names]
  ordered += [a for a in mesh.axis_names if a not in ordered]
  axes, shards = [], 1
  for axis in ordered:
    if batch_size % (shards * mesh.shape[axis]) == 0:
      axes.append(axis)
      shards *= mesh.shape[axis]
  return tuple(axes)


def hungarian_match(cost, target_mask):
  """The optimal assignment of queries to the real targets of every decoder layer and image.

  Args:
    cost: [L, B, Q, T] finite costs (`matching_cost`).
    target_mask: [B, T], nonzero on real targets; padded slots may sit anywhere.

  Returns:
    [L, B, T] int32: the query matched to each target slot, -1 for padded slots. No gradient.
  """
  if cost.ndim != 4 or target_mask.shape != (cost.shape[1], cost.shape[3]):
    raise ValueError(f'hungarian_match wants cost [L, B, Q, T] and target_mask [B, T], got '
                     f'{cost.shape} and {target_mask.shape}')
  _, batch_size, num_queries, num_slots = cost.shape
  if num_slots > num_queries:
    raise UserError(f'{num_slots} target slots but only {num_queries} queries: DETR predicts at '
                    'most one box per query (keep config.input.max_boxes <= '
                    'config.model.num_queries)')
  cost = jax.lax.stop_gradient(cost.astype(jnp.float32))
  target_mask = jax.lax.stop_gradient(target_mask.astype(bool))
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or math.prod(mesh.shape.values()) == 1:
    return _solve(cost, target_mask)
  # Every mesh axis is manual (a partly manual shard_map cannot hold a callback); devices along
  # axes that do not split the batch get the same shard and solve it alike.
  axes = _shard_axes(mesh, batch_size)
  spec = axes or None
  solve = jax.shard_map(functools.partial(_solve, axes=axes), mesh=mesh,
                        in_specs=(P(None, spec), P(spec)), out_specs=P(None, spec))
  return solve(cost, target_mask)
