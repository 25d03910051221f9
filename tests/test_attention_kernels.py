"""The attention kernels (vit_jax/layers/attention_kernels.py) against the reference `attend`.

The TPU Pallas flash kernel runs here in Pallas's TPU interpret mode (the kernel's own code,
block by block, on CPU); cuDNN's needs an NVIDIA GPU and is skipped without one.
"""

import jax
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.framework import loop_config
from vit_jax.framework.errors import UserError
from vit_jax.layers.attention import MultiHeadAttention, attend
from vit_jax.layers.attention_kernels import kernel_attend, resolve

# Max abs error over max |reference|: float32 kernels differ from `attend` only in summation
# order; bfloat16 inputs give outputs and gradients rounded to bfloat16 (8 bits, 2^-8 = 0.4%),
# compared with the float32 reference on the same (rounded) inputs.
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}


def _inputs(queries, keys, dtype, heads=2, head_dim=64, seed=0):
  q, k, v, cotangent = (jax.random.normal(r, (1, heads, n, head_dim)) for r, n in zip(
      jax.random.split(jax.random.key(seed), 4), (queries, keys, keys, queries)))
  q = q / np.sqrt(head_dim)  # The caller scales the query.
  # DETR's padding: the last keys of the image are padding.
  key_mask = jnp.arange(keys)[None, :] < keys - keys // 5
  return [x.astype(dtype) for x in (q, k, v)], cotangent.astype(dtype), key_mask


def _value_and_grads(fn, inputs, cotangent):
  out, pull = jax.vjp(fn, *inputs)
  return [out] + list(pull(cotangent))


def _relative_errors(ours, reference):
  return [float(jnp.abs(a.astype(jnp.float32) - b).max() / jnp.abs(b).max())
          for a, b in zip(ours, reference)]


@pytest.mark.slow  # Interpret mode: about 20 s for the four cases on 2 cores.
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('queries, keys', [(256, 256), (100, 200)])
def test_pallas_flash_matches_attend(dtype, queries, keys):
  """Outputs and the q, k, v gradients of the TPU flash kernel (interpret mode) with a key
  padding mask: self-attention over 256 tokens, and DETR-shaped cross-attention (100 queries
  over 200 keys, both padded to the kernel's 128-blocks inside)."""
  inputs, cotangent, key_mask = _inputs(queries, keys, dtype)
  with pltpu.force_tpu_interpret_mode():
    ours = _value_and_grads(lambda q, k, v: kernel_attend('pallas_flash', q, k, v, key_mask),
                            inputs, cotangent)
  mask = key_mask[:, None, None, :]
  reference = _value_and_grads(lambda q, k, v: attend(q, k, v, mask),
                               [x.astype(jnp.float32) for x in inputs],
                               cotangent.astype(jnp.float32))
  assert all(a.dtype == dtype for a in ours)
  errors = _relative_errors(ours, reference)
  assert max(errors) < TOLERANCE[dtype], errors
  # Masked keys get no gradient.
  assert not jnp.any(ours[2][..., ~key_mask[0], :]) and not jnp.any(ours[3][..., ~key_mask[0], :])


def test_attention_module_kernel_matches_reference():
  """MultiHeadAttention with model.attention='pallas_flash' is the reference's function: DETR's
  cross-attention (separate query and key inputs, key positions, a key padding mask), and in
  training with attention dropout it falls back to the reference (same weights dropped)."""
  rng = np.random.default_rng(0)
  queries, memory = (jnp.asarray(rng.normal(size=(2, n, 32)), jnp.float32) for n in (10, 40))
  key_mask = jnp.asarray(np.arange(40)[None] < np.array([[40], [25]]))
  module = lambda impl: MultiHeadAttention(2, dropout_rate=0.1, attention=impl)
  call = lambda impl, variables, train: module(impl).apply(
      variables, queries, memory, key_pos=memory * 0.5, key_mask=key_mask, train=train,
      rngs={'dropout': jax.random.key(1)})
  variables = module('xla').init(jax.random.key(0), queries, memory, train=False)
  with pltpu.force_tpu_interpret_mode():
    ours = {train: call('pallas_flash', variables, train) for train in (False, True)}
  for train in (False, True):
    np.testing.assert_allclose(ours[train], call('xla', variables, train), atol=2e-6)


def test_resolve_and_config_key():
  assert loop_config.defaults().model.attention == 'auto'
  assert resolve('auto', jnp.float32) == 'xla'  # This CPU: today's path.
  assert resolve('auto', jnp.bfloat16, backend='cpu') == 'xla'
  assert resolve('auto', jnp.float32, backend='tpu') == 'pallas_flash'
  assert resolve('auto', jnp.bfloat16, backend='gpu') == 'cudnn'
  assert resolve('auto', jnp.float32, backend='gpu') == 'xla'  # cuDNN has no float32 kernel.
  with pytest.raises(UserError, match='unknown model.attention'):
    resolve('flash', jnp.float32)
  with pytest.raises(UserError, match='cudnn needs model.dtype bfloat16'):
    resolve('cudnn', jnp.float32)


@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='cuDNN attention needs an NVIDIA GPU')
def test_cudnn_matches_attend():
  inputs, cotangent, key_mask = _inputs(100, 200, jnp.bfloat16)
  ours = _value_and_grads(lambda q, k, v: kernel_attend('cudnn', q, k, v, key_mask),
                          inputs, cotangent)
  reference = _value_and_grads(lambda q, k, v: attend(q, k, v, key_mask[:, None, None, :]),
                               [x.astype(jnp.float32) for x in inputs],
                               cotangent.astype(jnp.float32))
  errors = _relative_errors(ours, reference)
  assert max(errors) < TOLERANCE[jnp.bfloat16], errors
