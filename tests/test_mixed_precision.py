"""model.dtype='bfloat16' on every task: the first steps' losses follow float32's within bfloat16's
round-off, and the train state (what a checkpoint saves) keeps float32 parameters and optimizer
state."""

import itertools

import jax
import numpy as np
import pytest

from helpers import load_config, tiny_digits_config
from vit_jax.framework import optim, registry, train

STEPS = 3
# bfloat16 keeps 8 significant bits (a rounding costs up to 2^-9 = 0.2%). Measured largest
# relative differences over the 3 steps: classification 1.1e-4, detection 1.2e-4, panoptic
# 1.6e-4, segmentation 5.4e-3 (step 3, where its loss falls fastest); 2% leaves room.
TOLERANCE = 0.02
_SHAPES = {'input.shapes.num_train': 32, 'input.shapes.num_eval': 8, 'input.batch_size': 8,
           'input.eval_batch_size': 8}
CONFIGS = {
    # No warmup: with the zero-initialised head and lr 0 at step 1 the first losses would be
    # ln(10) in any dtype.
    'classification': lambda: tiny_digits_config(**{'optim.schedule.warmup_steps': 0}),
    'detection': lambda: _config('detr_shapes', _SHAPES),
    'panoptic': lambda: _config('detr_panoptic_shapes', _SHAPES),
    'segmentation': lambda: _config('segmenter_shapes', dict(
        _SHAPES, **{'model.hidden_size': 16, 'model.num_layers': 1, 'model.num_heads': 1,
                    'model.mlp_dim': 32})),
}


def _config(name, changes):
  config = load_config(name)
  for key, value in changes.items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def _losses_and_state(task, tx, schedule, state, batches):
  """The loop's train step over `batches` from `state`: its losses and the state after them (what
  a checkpoint saves), without the loop's evals and checkpoint writes."""
  step = jax.jit(train.make_train_step(task, tx, schedule, accum_steps=1))
  losses = []
  for batch in batches:
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  return losses, state


@pytest.mark.slow
@pytest.mark.parametrize('task', sorted(CONFIGS))
def test_bfloat16_losses_follow_float32_and_the_state_stays_float32(task):
  config = CONFIGS[task]()  # model.dtype float32, the default.
  bfloat16_config = config.copy_and_resolve_references()  # A task reads its config when used.
  bfloat16_config.model.dtype = 'bfloat16'
  float32_task, bfloat16_task = registry.make_task(config), registry.make_task(bfloat16_config)
  tx, schedule = optim.make_optimizer(config.optim, total_steps=STEPS)
  # The parameters are float32 in either dtype (param_dtype), so both runs start from this state.
  start = jax.jit(lambda rng: train.init_state(float32_task, tx, rng))(jax.random.PRNGKey(0))
  batches = list(itertools.islice(float32_task.train_input(0), STEPS))
  float32, _ = _losses_and_state(float32_task, tx, schedule, start, batches)
  bfloat16, state = _losses_and_state(bfloat16_task, tx, schedule, start, batches)
  differences = np.abs(np.array(bfloat16) - float32) / np.abs(float32)
  print(f'{task}: float32 losses {float32}, bfloat16 {bfloat16}, relative differences '
        f'{differences.tolist()}')
  assert differences.max() < TOLERANCE
  assert differences.max() > 0  # bfloat16 did compute: float32 would match bit for bit.

  floats = {leaf.dtype for leaf in jax.tree.leaves((state.params, state.opt_state))
            if not np.issubdtype(leaf.dtype, np.integer)}
  assert floats == {np.dtype('float32')}
