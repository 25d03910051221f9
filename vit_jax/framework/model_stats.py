"""Parameter counts and GFLOPs of a Flax model, from shapes and XLA's cost analysis; timing."""

import functools
import statistics
import time
from typing import Callable

import flax.linen as nn
import jax
import numpy as np


def variable_shapes(model: nn.Module, *inputs: jax.ShapeDtypeStruct, **kwargs):
  """The shapes of `model.init`'s variables for `inputs` (one trace, nothing computed);
  `kwargs` go to `model.init` (e.g. train=False)."""
  return jax.eval_shape(functools.partial(model.init, **kwargs), jax.random.PRNGKey(0), *inputs)


def parameter_count(model: nn.Module, *inputs: jax.ShapeDtypeStruct, variables=None,
                    **kwargs) -> int:
  """Number of parameters (collection 'params'), computed from shapes only; `variables`: those
  of `variable_shapes` if already traced."""
  if variables is None:
    variables = variable_shapes(model, *inputs, **kwargs)
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(variables['params']))))


def gflops(model: nn.Module, *inputs: jax.ShapeDtypeStruct, method=None, variables=None,
           **kwargs) -> float:
  """Giga multiply-adds of one forward pass (XLA counts a multiply-add as 2 flops; papers and
  fvcore, DeiT and DETR included, count it as 1). `method` (default `__call__`) is the pass
  counted; `kwargs` go to init and apply; `variables`: `variable_shapes` of the model at inputs
  of these shapes (or any, where its variables do not depend on the input size), which saves
  tracing the model a second time."""
  if variables is None:
    variables = variable_shapes(model, *inputs, **kwargs)
  forward = lambda v, *x: model.apply(v, *x, method=method, **kwargs)
  cost = jax.jit(forward).lower(variables, *inputs).cost_analysis()
  return float(cost['flops']) / 2e9


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
  """Median wall time of `fn()` over `repeats` runs after one warm-up run (which also
  compiles). `fn` must block until its result is ready."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


# ViT paper, Table 1: parameters of each model family.
VIT_PAPER_PARAMS = {'B': 86e6, 'L': 307e6, 'H': 632e6}
VIT_VARIANTS = ('Ti/16', 'S/16', 'S/32', 'B/8', 'B/16', 'B/32', 'L/16', 'L/32', 'H/14',
                'R+Ti/16', 'R26+S/32', 'R26+B/32', 'R50+B/16', 'R50+L/32')
