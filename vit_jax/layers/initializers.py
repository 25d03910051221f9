"""Initialisers the models share: logical axis names on an initialiser, and PyTorch's default."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def partitioned(init, names):
  """`init` whose parameter carries the logical axis `names` (see framework/sharding.py)."""
  return nn.with_logical_partitioning(init, names)


def torch_default(fan_in: int):
  """PyTorch's default Conv/Linear init, weights and biases alike: U(+-1/sqrt(fan_in))."""
  bound = 1 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
