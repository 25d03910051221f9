"""Multi-scale deformable attention (Zhu et al. 2021; fundamentalvision/Deformable-DETR MSDeformAttn).

Each query looks at P points on each of the L feature levels, per head: it predicts the points'
offsets from a reference point and their weights (a softmax over the L * P points of a head),
and takes the weighted sum of the value maps sampled bilinearly there.

`deformable_sample` is the operator (the original's `ms_deform_attn_core_pytorch` / CUDA
kernel), in plain JAX: per level, one gather from a table that holds each pixel's four
bilinear corners side by side (scenic's packing), which XLA compiles on every backend and
shards over the batch; its gradient gathers the corners again (`_sample_level`) and
scatter-adds theirs into the table. Sampling follows
grid_sample(bilinear, zeros, align_corners=False): a location x in [0, 1] is pixel x * W - 0.5
and corners outside the map contribute zero. It runs in float32 whatever the model's dtype: the
original's kernel has no half path, and bfloat16 locations would be off by a pixel in 100.
"""

import math
from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.framework.errors import UserError
from vit_jax.layers.initializers import partitioned

SpatialShapes = Sequence[tuple[int, int]]  # (H, W) per level, highest resolution first.


def _corner_table(value_map):
  """[B, H, W, M, D] -> [B, M, (H + 1) * (W + 1), 4 * D]: row (y + 1) * (W + 1) + x + 1 holds
  the four corners (y, x), (y, x + 1), (y + 1, x), (y + 1, x + 1) of a cell whose top-left
  corner (y, x) is in [-1, H - 1] x [-1, W - 1], corners off the map being zero."""
  b, h, w, m, d = value_map.shape
  padded = jnp.pad(value_map, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)))
  corners = jnp.stack([padded[:, :-1, :-1], padded[:, :-1, 1:], padded[:, 1:, :-1],
                       padded[:, 1:, 1:]], axis=-2)  # [B, H + 1, W + 1, M, 4, D]
  return corners.transpose(0, 3, 1, 2, 4, 5).reshape(b, m, (h + 1) * (w + 1), 4 * d)


def _gather_corners(table, row):
  """[B, M, R, 4 * D] table, [B, M, Q, P] rows -> the points' corners [B, M, Q, P, 4, D]."""
  b, m, q, points = row.shape
  corners = jnp.take_along_axis(table, row.reshape(b, m, q * points, 1), axis=2,
                                mode='promise_in_bounds')
  return corners.reshape(b, m, q, points, 4, -1)


@jax.custom_vjp
def _sample_level(table, row, corner_weights):
  """[B, M, R, 4 * D] table, [B, M, Q, P] rows, [B, M, Q, P, 4] corner weights -> [B, M, Q, D]:
  each point's four corners gathered from the table and summed with their weights.

  As a multiply-and-sum XLA fuses the gather into it and never writes the corners (1.8x faster
  than an einsum on the CPU). The gradient gathers them again instead of keeping them: a
  layer's corners are [M, Q, P, 4, D] per level and image (2.4 GB over the four levels of the
  1333 x 1333 canvas, against the tables' 0.15 GB), and its einsums are 1.7x faster on the CPU
  than autodiff of the multiply-and-sum."""
  return (_gather_corners(table, row) * corner_weights[..., None]).sum((3, 4))


def _sample_level_forward(table, row, corner_weights):
  return _sample_level(table, row, corner_weights), (table, row, corner_weights)


def _sample_level_backward(residuals, grad):
  # The barrier keeps XLA from merging this gather with the forward pass's (CSE), which would
  # keep the corners after all.
  table, row, corner_weights = jax.lax.optimization_barrier(residuals)
  corners, scatter = jax.vjp(lambda t: _gather_corners(t, row), table)  # scatter-adds corners.
  grad_table, = scatter(jnp.einsum('bmqd,bmqpc->bmqpcd', grad, corner_weights))
  return grad_table, None, jnp.einsum('bmqpcd,bmqd->bmqpc', corners, grad)


_sample_level.defvjp(_sample_level_forward, _sample_level_backward)


def deformable_sample(value, spatial_shapes: SpatialShapes, locations, weights):
  """The weighted sum of bilinear samples of every level's value map, per query and head.

  Args:
    value: [B, S, M, D] the levels' maps flattened row-major and concatenated (S = sum H * W).
    spatial_shapes: the levels' (H, W), static.
    locations: [B, Q, M, L, P, 2] sampling points (x, y), 0 and 1 being the map's outer edges.
    weights: [B, Q, M, L, P] each point's weight.

  Returns:
    [B, Q, M * D] in float32 (float64 if the inputs are), channel m * D + d (heads
    concatenated, as the original).
  """
  dtype = jnp.result_type(jnp.float32, value, locations, weights)
  value, locations, weights = (x.astype(dtype) for x in (value, locations, weights))
  b, s, m, d = value.shape
  q = locations.shape[1]
  if s != sum(h * w for h, w in spatial_shapes):
    raise ValueError(f'value has {s} tokens but the spatial shapes {spatial_shapes} hold '
                     f'{sum(h * w for h, w in spatial_shapes)}')
  out = jnp.zeros((b, m, q, d), dtype)
  start = 0
  for level, (h, w) in enumerate(spatial_shapes):
    table = _corner_table(value[:, start:start + h * w].reshape(b, h, w, m, d))
    start += h * w
    # [B, Q, M, P] -> [B, M, Q, P]: the table's layout.
    x = jnp.moveaxis(locations[:, :, :, level, :, 0], 2, 1) * w - 0.5
    y = jnp.moveaxis(locations[:, :, :, level, :, 1], 2, 1) * h - 0.5
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = x - x0, y - y0
    # A cell whose top-left corner is off [-1, W - 1] x [-1, H - 1] has no corner on the map.
    on_map = (x0 >= -1) & (x0 <= w - 1) & (y0 >= -1) & (y0 <= h - 1)
    row = ((jnp.clip(y0, -1, h - 1) + 1) * (w + 1) + jnp.clip(x0, -1, w - 1) + 1).astype(
        jnp.int32)
    bilinear = jnp.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], -1)
    point_weight = jnp.moveaxis(weights[:, :, :, level], 2, 1) * on_map  # [B, M, Q, P]
    out += _sample_level(table, row, bilinear * point_weight[..., None])
  return jnp.moveaxis(out, 1, 2).reshape(b, q, m * d)


def sampling_locations(reference, offsets, spatial_shapes: SpatialShapes,
                       reference_is_box: Union[bool, jax.Array] = True):
  """Where each query samples: [B, Q, M, L, P, 2] (x, y) in [0, 1].

  reference: [B, Q, L, 2] points (x, y), or [B, Q, L, 4] boxes (cx, cy, w, h), per level.
  offsets: [B, Q, M, L, P, 2]; a point's are in pixels of each level (divided by (W, H)), a
    box's in units of P / 2 of its size (point p's initial offset p + 1 reaches its edge at P).
  reference_is_box: for a 4-d reference, false (traced or not) to treat it as the point (cx,
    cy) (the decoder's carry keeps points and boxes alike in 4-d).
  """
  xy = reference[:, :, None, :, None, :2]
  normalizer = np.array([[w, h] for h, w in spatial_shapes])[:, None, :].astype(offsets.dtype)
  from_point = xy + offsets / normalizer  # The original's order of operations, for round-off.
  if reference.shape[-1] == 2:
    return from_point
  from_box = xy + offsets / offsets.shape[-2] * reference[:, :, None, :, None, 2:] * 0.5
  return jnp.where(reference_is_box, from_box, from_point)


def _grid_init(num_heads: int, num_levels: int, num_points: int):
  """sampling_offsets' bias: head m points along angle 2 pi m / M, scaled so that its larger
  coordinate is 1, point p at p + 1 times that, on every level; flattened (M, L, P, 2)."""
  def init(key, shape, dtype=jnp.float32):
    del key
    theta = np.arange(num_heads, dtype=np.float32) * np.float32(2 * math.pi / num_heads)
    grid = np.stack([np.cos(theta), np.sin(theta)], -1)
    grid = grid / np.abs(grid).max(-1, keepdims=True)
    grid = grid[:, None, None, :] * np.arange(1, num_points + 1, dtype=np.float32)[:, None]
    grid = np.broadcast_to(grid, (num_heads, num_levels, num_points, 2))
    return jnp.asarray(grid.reshape(shape), dtype)
  return init


_xavier = nn.initializers.xavier_uniform()  # The original's xavier_uniform_ (gain 1).


class MultiScaleDeformableAttention(nn.Module):
  """The original's MSDeformAttn: query [B, Q, D] attends to `source` [B, S, D] (the levels'
  maps flattened and concatenated; `source_mask` [B, S] 1 = image: padding's values are zero).

  Parameters as the original's Linear layers (`sampling_offsets`, `attention_weights`,
  `value_proj`, `output_proj`) with its init: zero offset and weight kernels, offsets' bias on
  the heads' directions (`_grid_init`), uniform weights 1 / (L * P), xavier projections.
  The offsets and weights are computed in float32 whatever `dtype` (they place the samples).
  """
  spatial_shapes: tuple[tuple[int, int], ...]
  num_heads: int = 8
  num_points: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query, reference, source, source_mask, reference_is_box=True):
    b, q, width = query.shape
    if width % self.num_heads:
      raise UserError(f'the model width {width} is not divisible by num_heads '
                      f'{self.num_heads}: choose a head count that divides it')
    heads, levels, points = self.num_heads, len(self.spatial_shapes), self.num_points
    sampling = heads * levels * points

    def dense(features, name, kernel_init, bias_init, names, dtype):
      return nn.Dense(features, dtype=dtype, name=name,
                      kernel_init=partitioned(kernel_init, names),
                      bias_init=partitioned(bias_init, names[1:]))
    value = dense(width, 'value_proj', _xavier, nn.initializers.zeros, ('embed', 'heads'),
                  self.dtype)(source)
    value = jnp.where(source_mask.astype(bool)[..., None], value, 0)
    value = value.reshape(b, source.shape[1], heads, width // heads)
    offsets = dense(2 * sampling, 'sampling_offsets', nn.initializers.zeros,
                    _grid_init(heads, levels, points), ('embed', 'sampling'), jnp.float32)(
        query.astype(jnp.float32)).reshape(b, q, heads, levels, points, 2)
    logits = dense(sampling, 'attention_weights', nn.initializers.zeros, nn.initializers.zeros,
                   ('embed', 'sampling'), jnp.float32)(query.astype(jnp.float32))
    weights = jax.nn.softmax(logits.reshape(b, q, heads, levels * points), -1).reshape(
        b, q, heads, levels, points)
    locations = sampling_locations(reference.astype(jnp.float32), offsets, self.spatial_shapes,
                                   reference_is_box)
    out = deformable_sample(value, self.spatial_shapes, locations, weights)
    return dense(width, 'output_proj', _xavier, nn.initializers.zeros, ('heads', 'embed'),
                 self.dtype)(out.astype(self.dtype))
