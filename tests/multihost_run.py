"""One process of a multi-process digits run on 127.0.0.1 (jax.distributed over gloo).

Run by test_multihost.py:  python tests/multihost_run.py PROCESS_ID NUM_PROCESSES PORT WORKDIR
[KEY=VALUE ...] (PROCESS_ID -1: a plain single-process run, the reference; KEY=VALUE: config
changes, values as Python literals). Every process logs its metrics, learning rate included.
"""

import ast
import sys

import jax
from absl import logging

from helpers import tiny_digits_config
from vit_jax import train
from vit_jax.classification import ClassificationTask


def main(process_id, num_processes, port, workdir, *changes):
  logging.set_verbosity(logging.INFO)
  logging.set_stderrthreshold(logging.INFO)
  if int(process_id) >= 0:
    jax.distributed.initialize(f'127.0.0.1:{port}', int(num_processes), int(process_id),
                               initialization_timeout=60)
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
  train.train_and_evaluate(config, workdir, ClassificationTask(config))
  print(f'process {jax.process_index()} of {jax.process_count()} on {jax.device_count()} devices')


if __name__ == '__main__':
  main(*sys.argv[1:])
