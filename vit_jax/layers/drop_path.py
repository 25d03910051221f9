"""Stochastic depth (timm's DropPath), for every model with residual blocks."""

import flax.linen as nn
import jax
import jax.numpy as jnp


def drop_path(module: nn.Module, x, rate, train: bool):
  """`x`, a residual branch of `module`, dropped for whole examples with probability `rate` and
  the kept ones scaled by 1 / (1 - rate). `rate` is a Python float, or traced (a per-layer rate
  scanned in under nn.scan, where nn.Dropout cannot take it); the mask is drawn with the
  module's 'dropout' rng."""
  if isinstance(rate, (int, float)):
    return nn.Dropout(rate, broadcast_dims=tuple(range(1, x.ndim)))(x, deterministic=not train)
  if not train:
    return x
  keep = 1.0 - rate
  kept = jax.random.bernoulli(module.make_rng('dropout'), keep,
                              (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(kept, x / keep.astype(x.dtype), 0).astype(x.dtype)
