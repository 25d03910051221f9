"""model.dtype='bfloat16' on every task: the first steps' losses follow float32's within bfloat16's
round-off, and the checkpoint keeps float32 parameters and optimizer state."""

import jax
import numpy as np
import pytest

from helpers import load_config, tiny_digits_config
from mesh_run import train_losses
from vit_jax.framework import checkpoint, registry, train

STEPS = 3
# bfloat16 keeps 8 significant bits (a rounding costs up to 2^-9 = 0.2%). Measured largest
# relative differences over the 3 steps: classification 1.1e-4, detection 1.3e-4, panoptic
# 1.7e-4, segmentation 5.3e-3 (step 3, where its loss falls fastest); 2% leaves room.
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


def _train(task, dtype, workdir):
  config = CONFIGS[task]()
  config.model.dtype = dtype
  config.update(total_steps=STEPS, log_every=1, eval_every=STEPS, checkpoint_every=STEPS,
                draw_examples=0)
  train.train_and_evaluate(config, workdir, registry.make_task(config))
  return train_losses(workdir)


@pytest.mark.slow
@pytest.mark.parametrize('task', sorted(CONFIGS))
def test_bfloat16_losses_follow_float32_and_the_checkpoint_stays_float32(task, tmp_path):
  float32 = _train(task, 'float32', str(tmp_path / 'float32'))
  bfloat16 = _train(task, 'bfloat16', str(tmp_path / 'bfloat16'))
  assert len(float32) == len(bfloat16) == STEPS
  differences = np.abs(np.array(bfloat16) - float32) / np.abs(float32)
  print(f'{task}: float32 losses {float32}, bfloat16 {bfloat16}, relative differences '
        f'{differences.tolist()}')
  assert differences.max() < TOLERANCE
  assert differences.max() > 0  # bfloat16 did compute: float32 would match bit for bit.

  state = checkpoint.load_state(str(tmp_path / 'bfloat16'), STEPS)
  floats = {leaf.dtype for leaf in jax.tree.leaves((state['params'], state['opt_state']))
            if not np.issubdtype(leaf.dtype, np.integer)}
  assert floats == {np.dtype('float32')}
