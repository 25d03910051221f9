"""One multi-head attention for ViT, Segmenter and DETR.

Biased per-head projections named like the official checkpoints: `query`, `key`, `value` with
kernels (width, heads, head_dim) and the output projection (heads, head_dim, width), each axis
with a logical name ('embed', 'heads', 'kv') for sharding.

The attention runs head-major: each projection's output is transposed to [batch, heads, tokens,
head_dim] and both attention matmuls are plain batched matmuls over (batch, heads). This is the XLA
formulation `jax.nn.dot_product_attention` uses by default (jax 0.10 picks it on every backend;
its cuDNN kernel needs bf16/fp16 and an explicit opt-in), without its token-major [B, T, N, H]
interface: that one made XLA on CPU vmap over a head-group axis and copy q, k and v into 5-D
layouts around each matmul. On this project's 2-core CPU (loaded) the attention alone took
about half the time in this form; a whole ViT-B/16 train step 2-3% less CPU time, inference
the same within noise. The softmax is in float32; its gradient is written out (`attend`).

The attention weights are computed only when asked for: when the caller makes the
'intermediates' collection mutable they are sown there, before dropout, as `attention_weights`
[batch, heads, queries, keys] (the notebooks' attention maps), e.g.

  _, state = model.apply(variables, images, mutable='intermediates')
"""

import functools
import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.framework.errors import UserError
from vit_jax.layers import attention_kernels
from vit_jax.layers.normalization import without_leading_ones

_xavier = nn.initializers.xavier_uniform()


def flat_xavier(num_in_axes: int):
  """xavier_uniform on the kernel's 2-D (fan_in, fan_out) view, as Flax's DenseGeneral does."""
  def init(key, shape, dtype=jnp.float32):
    flat = (math.prod(shape[:num_in_axes]), math.prod(shape[num_in_axes:]))
    return _xavier(key, flat, dtype).reshape(shape)
  return init


class Projection(nn.Module):
  """einsum(equation, x, kernel) + bias with a multi-axis kernel; the bias has the kernel's axes
  that are not contracted, e.g. 'btd,dnh->bnth' (kernel (d, n, h), bias (n, h)).

  (Flax's DenseGeneral can neither take a logically partitioned kernel init with more than two
  names nor write a transposed output, hence this module.)
  """
  kernel_shape: tuple[int, ...]
  kernel_names: tuple[Optional[str], ...]
  equation: str
  dtype: jnp.dtype = jnp.float32
  kernel_init: Optional[Callable] = None  # Default: xavier_uniform on the 2-D view.

  @nn.compact
  def __call__(self, x):
    inputs, output = self.equation.split('->')
    x_axes, kernel_axes = inputs.split(',')
    num_in = sum(axis in x_axes for axis in kernel_axes)
    init = self.kernel_init or flat_xavier(num_in)
    kernel = self.param('kernel', nn.with_logical_partitioning(init, self.kernel_names),
                        self.kernel_shape)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                           self.kernel_names[num_in:]),
                      self.kernel_shape[num_in:])
    x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    # The product in its natural order (x's free axes, then the kernel's), then a transpose to
    # the output's. Asked for 'bnth' directly, jnp.einsum puts the kernel first and XLA on CPU
    # multiplied [heads * head_dim, width] by [width, tokens], transposed copies of both, at
    # 60% of its matmul rate: this way Seg-B/16 inference is 3% faster, ViT-B/16's train step 4%.
    natural = ''.join(a for a in x_axes + kernel_axes if a in output)
    y = jnp.einsum(f'{inputs}->{natural}', x, kernel)
    y = jnp.transpose(y, [natural.index(a) for a in output])
    # The bias's axes keep their order in the output; it broadcasts over the others.
    bias_axes = kernel_axes[num_in:]
    bias_shape = [bias.shape[bias_axes.index(a)] if a in bias_axes else 1 for a in output]
    return y + bias.reshape(bias_shape)


def _logits(query, key, key_mask, bias):
  """q k + bias in float32, masked keys at float32's minimum: [..., T, S]."""
  logits = jnp.einsum('...th,...sh->...ts', query, key,
                      preferred_element_type=jnp.promote_types(query.dtype, jnp.float32))
  logits = logits.astype(jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if key_mask is not None:
    logits = jnp.where(key_mask, logits, jnp.finfo(jnp.float32).min)
  return logits


def attention_weights(query, key, key_mask=None, bias=None):
  """softmax(q k + bias) in float32, masked keys getting no weight: [B, N, T, H] x [B, N, S, H]
  -> [B, N, T, S] float32. The query comes scaled by 1/sqrt(H); `bias` broadcasts to the
  logits (Swin's relative position bias)."""
  return jax.nn.softmax(_logits(query, key, key_mask, bias), axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def attend(query, key, value, key_mask=None, kept=None, keep_rate: float = 1.0, bias=None):
  """softmax(q k + bias) v: [B, N, T, H], [B, N, S, H], [B, N, S, H] -> [B, N, T, H].

  key_mask: broadcastable to [B, N, T, S], false for keys that get no weight.
  bias: None or a 4-D array broadcastable to [B, N, T, S] added to the logits, with a gradient
  (Swin's relative position bias and its shifted-window mask).
  kept: attention dropout, None or a [B, N, T, S] bool mask of the weights kept, each kept one
  scaled by 1 / keep_rate.

  The gradient is written out (softmax's as p (dp - sum(dp p)), the sum taken from the output as
  FlashAttention does) rather than left to autodiff, whose softmax backward takes four more
  passes over the [T, S] weights and keeps more of them: on XLA CPU a ViT-B/16 train step reads
  and writes 5% fewer bytes.
  """
  return _head_by_head_on_cpu(functools.partial(_attend_primal, keep_rate=keep_rate),
                              query, key, value, key_mask, kept, bias)


def _head_by_head_on_cpu(fn, query, key, *arrays):
  """fn(query, key, *arrays), run head by head where XLA on CPU does that faster: once a head's
  [T, S] weights are large (at least 2^17) and one head's over the batch small (8 MiB). The
  attention alone: Seg-B/16 at 1,025 tokens (1 x 12 heads) 26 against 31 ms, DETR-R50's encoder
  at 850 (1 x 8) 7.6 against 13 ms, 2 x 12 x 401 12 against 15 ms; not ViT-B/16's 8 x 12 x 197
  (14 against 8.5 ms), nor 8 x 16 x 577 (the same). The arguments and the result are
  [B, N, ...] (arguments also [B, 1, ...] or None). `lax.platform_dependent` decides at
  lowering, so accelerators, and TPU programs traced on a CPU host (the fit report), keep one
  batched program. Each head runs on arrays without the head axis, and at batch 1 without the
  batch axis: XLA on CPU runs fusions over leading size-1 axes slower (one head's attention at
  1,025 tokens alone 2.3 against 2.9 ms; Seg-B/16 inference 1.3-2.5% faster, A/B in one
  process; DETR-R50's 2% in median time).
  Only inference: the train step's forward and backward, head by head, were 80 against 90 ms
  alone at 1,025 tokens, but the Seg-B/16 train step no faster (5.0-5.35 against 4.9-5.0 s)."""
  batch, heads, queries = query.shape[:3]
  head_weights = queries * key.shape[2]
  if heads == 1 or head_weights < 2**17 or batch * head_weights * 4 > 2**23:
    return fn(query, key, *arrays)

  def head_by_head(*arrays):
    def head(a, i):  # Without the head axis, then without leading size-1 axes (batch 1).
      if a is None:
        return None
      a = a[:, i if a.shape[1] > 1 else 0]
      return a.reshape(without_leading_ones(a.shape))
    outputs = jnp.stack([fn(*(head(a, i) for a in arrays)) for i in range(heads)], axis=-3)
    return outputs.reshape((batch,) + outputs.shape[-3:])
  return jax.lax.platform_dependent(query, key, *arrays, cpu=head_by_head, default=fn)


def _attend_primal(query, key, value, key_mask, kept, bias, *, keep_rate):
  # Without a gradient to take, the softmax's division waits until after the weights' matmul:
  # it scales [T, H] outputs instead of [T, S] weights (XLA on CPU: ViT-B/16's attention at
  # batch 8 in about 40% less time; Seg-B/16's at 1,025 tokens the same).
  logits = _logits(query, key, key_mask, bias)
  unnormalized = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
  out = jnp.einsum('...ts,...sh->...th',
                   _dropped(unnormalized, kept, keep_rate).astype(value.dtype), value,
                   preferred_element_type=jnp.float32)
  return (out / unnormalized.sum(axis=-1, keepdims=True)).astype(value.dtype)


def _dropped(weights, kept, keep_rate):
  return weights if kept is None else jnp.where(kept, weights / keep_rate, 0)


def _attend_forward(query, key, value, key_mask, kept, keep_rate, bias=None):
  weights = attention_weights(query, key, key_mask, bias)
  out = jnp.einsum('bnts,bnsh->bnth', _dropped(weights, kept, keep_rate).astype(value.dtype),
                   value)
  return out, (query, key, value, key_mask, kept, weights, bias, out)


def _sum_to(grad, like):
  """`grad` summed over the axes the 4-D `like` broadcasts along, in `like`'s dtype."""
  axes = tuple(i for i, size in enumerate(like.shape) if size == 1 and grad.shape[i] != 1)
  return grad.sum(axes, keepdims=True).astype(like.dtype)


def _attend_backward(keep_rate, residuals, grad):
  query, key, value, key_mask, kept, weights, bias, out = residuals
  grad_value = jnp.einsum('bnts,bnth->bnsh',
                          _dropped(weights, kept, keep_rate).astype(grad.dtype), grad)
  grad_dropped = jnp.einsum('bnth,bnsh->bnts', grad, value, preferred_element_type=jnp.float32)
  grad_weights = _dropped(grad_dropped, kept, keep_rate)
  # sum_s(grad_weights * weights) is sum_h(grad * out), as the weights made out: a [T, H]
  # reduction instead of a pass over the [T, S] weights (at batch 1 without the batch axis, which
  # slows XLA on CPU 18x: Seg-B/16's 2.5 against 0.14 ms).
  rows = without_leading_ones(out.shape)
  row_term = (grad.astype(jnp.float32).reshape(rows) * out.astype(jnp.float32).reshape(rows)
              ).sum(-1, keepdims=True).reshape(out.shape[:-1] + (1,))
  grad_logits = weights * (grad_weights - row_term)
  if key_mask is not None:  # Masked logits were constants: no gradient (even in all-masked rows).
    grad_logits = jnp.where(key_mask, grad_logits, 0)
  grad_bias = None if bias is None else _sum_to(grad_logits, bias)
  grad_logits = grad_logits.astype(query.dtype)
  grad_query = jnp.einsum('bnts,bnsh->bnth', grad_logits, key)
  grad_key = jnp.einsum('bnts,bnth->bnsh', grad_logits, query)
  return grad_query, grad_key, grad_value, None, None, grad_bias


attend.defvjp(_attend_forward, _attend_backward)


class MultiHeadAttention(nn.Module):
  """Multi-head attention of `inputs_q` over `inputs_kv` (default: itself).

  query_pos, key_pos: position embeddings added to the query and key inputs only, not to the
  values (DETR); in self-attention `key_pos` defaults to `query_pos`.
  key_mask: [batch, keys], true for keys that may be attended to (DETR's image padding).
  qkv_kernel_init, out_kernel_init: kernel initialisers; default xavier_uniform on the 2-D view
  (the original ViT's); biases start at zero.
  out_name: the output projection's name ('out' in ViT's checkpoints, 'out_proj' in DETR's).
  attention: the implementation (`model.attention`, vit_jax.layers.attention_kernels): 'auto'
  is `attend` on CPU; attention dropout in training always runs `attend`.
  """
  num_heads: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  qkv_kernel_init: Optional[Callable] = None
  out_kernel_init: Optional[Callable] = None
  out_name: str = 'out'
  attention: str = 'auto'

  @nn.compact
  def __call__(self, inputs_q, inputs_kv=None, *, query_pos=None, key_pos=None, key_mask=None,
               train: bool):
    if inputs_kv is None:
      inputs_kv, key_pos = inputs_q, query_pos if key_pos is None else key_pos
    width = inputs_q.shape[-1]
    if width % self.num_heads:
      raise UserError(f'the model width {width} is not divisible by num_heads '
                      f'{self.num_heads}: choose a head count that divides it')
    heads = (self.num_heads, width // self.num_heads)

    def project_in(x, pos, name):
      x = x if pos is None else x + pos
      return Projection((width,) + heads, ('embed', 'heads', 'kv'), 'btd,dnh->bnth',
                        self.dtype, self.qkv_kernel_init, name=name)(x)
    query = project_in(inputs_q, query_pos, 'query') * (1 / math.sqrt(heads[1]))
    key = project_in(inputs_kv, key_pos, 'key')
    value = project_in(inputs_kv, None, 'value')
    mask = None if key_mask is None else key_mask.astype(bool)[:, None, None, :]

    if self.is_mutable_collection('intermediates'):  # Only when the caller asked for them.
      self.sow('intermediates', 'attention_weights',
               attention_weights(query, key, mask).astype(key.dtype))
    kept, keep_rate = None, 1.0 - self.dropout_rate
    if train and self.dropout_rate > 0:
      kept = jax.random.bernoulli(self.make_rng('dropout'), keep_rate,
                                  query.shape[:3] + key.shape[2:3])
    implementation = attention_kernels.resolve(self.attention, query.dtype)
    if kept is None and implementation != 'xla':
      y = attention_kernels.kernel_attend(implementation, query, key, value, key_mask)
    else:
      y = attend(query, key, value, mask, kept, keep_rate)
    return Projection(heads + (width,), ('heads', 'kv', 'embed'), 'bnth,nhd->btd', self.dtype,
                      self.out_kernel_init, name=self.out_name)(y)
