"""One process of a multi-process digits run on 127.0.0.1 (jax.distributed over gloo).

Run by test_multihost.py and test_input_array_record.py:
  python tests/multihost_run.py PROCESS_ID NUM_PROCESSES PORT WORKDIR [KEY=VALUE ...]
(PROCESS_ID -1: a plain single-process run, the reference; KEY=VALUE: config changes,
values as Python literals). Every process logs its metrics, learning rate included.
save_batches=N among the changes: each process also writes to WORKDIR/batches_<process index>.npz
the training batches that the loop gets when it starts at step 0 (N batches) and when it resumes
at step N // 2 (the N - N // 2 others), under the keys from<step>_<name>_<i>.
"""

import ast
import itertools
import os
import sys

import jax
import numpy as np
from absl import logging

from helpers import tiny_digits_config
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import train


def run_config(*changes):
  """The run's config with the KEY=VALUE `changes`; also what a test runs in its own process."""
  # SGD, not Adam: Adam turns round-off in gradients that are exactly zero in theory (the key
  # bias) into full-size steps, which would hide real differences behind noise.
  config = tiny_digits_config(**{'model.dropout_rate': 0.0, 'total_steps': 6,
                                 'optim.name': 'momentum', 'optim.lr': 0.1,
                                 'optim.schedule.warmup_steps': 0})
  for change in changes:
    key, value = change.split('=', 1)
    *parents, leaf = key.split('.')
    target = config
    for parent in parents:
      target = target[parent]
    target[leaf] = ast.literal_eval(value)
  return config


def main(process_id, num_processes, port, workdir, *changes):
  logging.set_verbosity(logging.INFO)
  logging.set_stderrthreshold(logging.INFO)
  if int(process_id) >= 0:
    jax.distributed.initialize(f'127.0.0.1:{port}', int(num_processes), int(process_id),
                               initialization_timeout=60)
  save_batches = [int(c.split('=', 1)[1]) for c in changes if c.startswith('save_batches=')]
  config = run_config(*(c for c in changes if not c.startswith('save_batches=')))
  train.train_and_evaluate(config, workdir, ClassificationTask(config))
  if save_batches:
    saved = {}
    for start in (0, save_batches[0] // 2):
      batches = ClassificationTask(config).train_input(start * config.input.batch_size)
      for i, batch in enumerate(itertools.islice(batches, save_batches[0] - start)):
        saved.update({f'from{start}_{key}_{i}': value for key, value in batch.items()})
    np.savez(os.path.join(workdir, f'batches_{jax.process_index()}.npz'), **saved)
  print(f'process {jax.process_index()} of {jax.process_count()} on {jax.device_count()} devices')


if __name__ == '__main__':
  main(*sys.argv[1:])
