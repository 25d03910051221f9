"""Checkpointer: only a checkpoint that does not read is set aside, quietly and under a new name."""

import gc
import glob
import os
import sys

import jax
import numpy as np

from vit_jax.framework import checkpoint


def _state(seed):
  rng = np.random.default_rng(seed)  # Random: the stored chunks do not compress to nothing.
  return {f'w{i}': rng.normal(size=(64, 32)).astype(np.float32) for i in range(16)}


def test_checkpoint_whose_arrays_do_not_read_is_set_aside_with_one_warning(tmp_path, caplog,
                                                                           monkeypatch):
  directory = str(tmp_path / 'checkpoints')
  saver = checkpoint.Checkpointer(directory, every_steps=1, keep=5)
  for step in (1, 2):
    saver.save(step, _state(step), {'examples_seen': step})
  saver.wait()
  saver.close()
  for path in glob.glob(os.path.join(directory, '2', 'state', 'ocdbt.process_0', 'd', '*')):
    with open(path, 'r+b') as f:  # The arrays' data cut short; their metadata still reads.
      f.truncate(7)
  os.makedirs(os.path.join(directory, '2.unreadable'))  # Set aside by an earlier run.

  printed = []  # What Python would print as 'Exception ignored in ...' with a traceback.
  monkeypatch.setattr(sys, 'unraisablehook', printed.append)
  restorer = checkpoint.Checkpointer(directory, every_steps=1, keep=5)
  step, state, meta = restorer.restore_latest(jax.tree.map(np.zeros_like, _state(0)))
  restorer.close()
  gc.collect()

  assert (step, meta) == (1, {'examples_seen': 1})
  jax.tree.map(np.testing.assert_array_equal, state, _state(1))
  assert sorted(os.listdir(directory)) == ['1', '2.unreadable', '2.unreadable.1']
  warnings = [r.getMessage() for r in caplog.records if 'unreadable' in r.getMessage()]
  assert len(warnings) == 1 and 'set aside as' in warnings[0] and '2.unreadable.1' in warnings[0]
  assert not printed  # Not a traceback per abandoned array read.
