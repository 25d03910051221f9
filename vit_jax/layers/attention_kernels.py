"""Attention kernels per backend, chosen by `model.attention`, beside the reference `attend`.

  'auto'          the best one the backend running the model has (the default): cuDNN on GPU for
                  bfloat16 / float16, the Pallas flash kernel on TPU, else 'xla'.
  'xla'           the reference `attend` (vit_jax.layers.attention): plain XLA, the full
                  [batch, heads, queries, keys] float32 weights kept for the backward pass.
  'pallas_flash'  jax.experimental.pallas.ops.tpu.flash_attention (TPU; runs anywhere in Pallas
                  interpret mode): blockwise, the weights never materialised.
  'cudnn'         jax.nn.dot_product_attention(implementation='cudnn') (NVIDIA GPU, bfloat16 or
                  float16 only).

Every kernel takes head-major [B, N, T, H] queries (already scaled by 1/sqrt(H)) and [B, N, S, H]
keys and values with S != T allowed (DETR's cross-attention), and a [B, S] key padding mask; each
keeps the softmax's running max and sum in float32 whatever the input dtype.

Fallbacks to the reference, per call: attention dropout in training (neither kernel draws
dropout inside; `model.attention_dropout_rate=0` turns off that dropout alone, keeping the FFN
and residual dropout), an additive bias (Swin's windows, 49 tokens, where the weights are
small), and 'auto' resolving to 'xla'. A key padding mask must leave each query at least one key (the
reference then spreads the weight evenly; the kernels' sums would be 0).

'auto' resolves for the backend the trace runs on (`jax.default_backend()`): an ahead-of-time
compile for TPU from a CPU host (the fit report) names 'pallas_flash' explicitly.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from vit_jax.framework.errors import UserError

IMPLEMENTATIONS = ('auto', 'xla', 'pallas_flash', 'cudnn')
_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_BLOCK = 128  # The TPU kernel's block over queries and keys; lengths are padded to a multiple.


def attention_name(name) -> str:
  """model.attention, checked: one of IMPLEMENTATIONS."""
  if not isinstance(name, str) or name not in IMPLEMENTATIONS:
    raise UserError(f'unknown model.attention {name!r}: use one of {list(IMPLEMENTATIONS)}')
  return name


def resolve(name: str, dtype, backend: str = None) -> str:
  """The implementation `name` runs as for compute `dtype` on `backend` (default: JAX's)."""
  name, dtype = attention_name(name), jnp.dtype(dtype)
  if name == 'cudnn' and dtype not in _HALF:
    raise UserError(f'model.attention cudnn needs model.dtype bfloat16 or float16, not '
                    f'{dtype.name}: set --config.model.dtype=bfloat16 or model.attention=auto')
  if name != 'auto':
    return name
  backend = backend or jax.default_backend()
  if backend == 'gpu' and dtype in _HALF:
    return 'cudnn'
  return 'pallas_flash' if backend == 'tpu' else 'xla'


def kernel_attend(name: str, query, key, value, key_mask=None):
  """softmax(q k) v by kernel `name` ('pallas_flash' or 'cudnn'): [B, N, T, H] x [B, N, S, H]
  -> [B, N, T, H]; key_mask: None or [B, S], true for keys that may be attended to."""
  if name == 'pallas_flash':
    return _per_shard(_pallas_flash, query, key, value, key_mask)
  if name == 'cudnn':
    return _cudnn(query, key, value, key_mask)
  raise ValueError(f'no kernel {name!r}')


def _pad_to_block(x, axis):
  pad = -x.shape[axis] % _BLOCK
  return jnp.pad(x, [(0, pad if i == axis else 0) for i in range(x.ndim)]) if pad else x


def _mesh_axes(logical: str, size: int, mesh) -> tuple:
  """The mesh axes the logical rules give `logical`, as far as they divide `size`."""
  axes = nn.logical_to_mesh_axes((logical,))[0]
  axes = () if axes is None else axes if isinstance(axes, tuple) else (axes,)
  kept, shards = [], 1
  for axis in axes:
    if axis in mesh.axis_names and size % (shards * mesh.shape[axis]) == 0:
      kept.append(axis)
      shards *= mesh.shape[axis]
  return tuple(kept) or None


def _per_shard(kernel, query, key, value, key_mask):
  """`kernel` on each device's shard: XLA cannot partition a Mosaic kernel, so under a
  multi-device mesh it runs in shard_map over the batch and head axes the logical rules name
  ('batch', 'heads'; every other mesh axis holds a replica)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or math.prod(mesh.shape.values()) == 1:
    return kernel(query, key, value, key_mask)
  batch = _mesh_axes('batch', query.shape[0], mesh)
  spec = P(batch, _mesh_axes('heads', query.shape[1], mesh), None, None)
  if key_mask is None:
    return jax.shard_map(lambda q, k, v: kernel(q, k, v, None), mesh=mesh,
                         in_specs=(spec,) * 3, out_specs=spec, check_vma=False)(
                             query, key, value)
  return jax.shard_map(kernel, mesh=mesh, in_specs=(spec,) * 3 + (P(batch, None),),
                       out_specs=spec, check_vma=False)(query, key, value, key_mask)


def _pallas_flash(query, key, value, key_mask):
  # Imported here: Pallas's TPU module is needed only when this kernel runs.
  from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash  # pylint: disable=g-import-not-at-top
  batch, _, queries, _ = query.shape
  keys = key.shape[2]
  q, k, v = _pad_to_block(query, 2), _pad_to_block(key, 2), _pad_to_block(value, 2)
  segment_ids = None
  if key_mask is not None or k.shape[2] != keys or q.shape[2] != queries:
    # Segment ids mask keys: a query (id 1) sees keys with id 1, not the padding or masked ones
    # (id 0); padded queries see the real keys and are sliced off.
    valid = jnp.ones((batch, keys), bool) if key_mask is None else key_mask.astype(bool)
    kv_ids = _pad_to_block(valid.astype(jnp.int32), 1)
    segment_ids = tpu_flash.SegmentIds(jnp.ones((batch, q.shape[2]), jnp.int32), kv_ids)
  out = tpu_flash.flash_attention(q, k, v, segment_ids=segment_ids, sm_scale=1.0)
  return out[:, :, :queries]


def _cudnn(query, key, value, key_mask):
  token_major = lambda x: jnp.swapaxes(x, 1, 2)  # cuDNN's interface is [B, T, N, H].
  mask = None if key_mask is None else key_mask.astype(bool)[:, None, None, :]
  out = jax.nn.dot_product_attention(token_major(query), token_major(key), token_major(value),
                                     mask=mask, scale=1.0, implementation='cudnn')
  return token_major(out)
