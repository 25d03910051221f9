"""Two processes of 2 CPU devices each (jax.distributed on 127.0.0.1) train the digits ViT like
one process of 4 devices: same loss trajectory, same final parameters."""

import re
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from vit_jax.framework import checkpoint
from helpers import (MULTIHOST_SCRIPT, ROOT, assert_prediction_pictures, free_port, multihost_env,
                     run_two_processes)
from mesh_run import train_losses

# Each test starts jax.distributed processes that train or wait for a peer.
pytestmark = pytest.mark.slow


def test_two_processes_match_one(tmp_path):
  single = str(tmp_path / 'single')
  reference = subprocess.run([sys.executable, MULTIHOST_SCRIPT, '-1', '1', '0', single],
                             env=multihost_env(4), capture_output=True, text=True, timeout=300)
  assert reference.returncode == 0, reference.stderr[-3000:]

  multi = str(tmp_path / 'multi')
  outputs = run_two_processes(multi, 'draw_examples=2')  # Both hosts run the drawing forward.
  assert 'process 0 of 2 on 4 devices' in outputs[0][0]
  assert 'process 1 of 2 on 4 devices' in outputs[1][0]
  assert_prediction_pictures(multi, steps=[6], count=2)  # Drawn by process 0.

  # Cross-process all-reduces sum in another order: float32 round-off only.
  np.testing.assert_allclose(train_losses(multi), train_losses(single), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               checkpoint.load_state(multi, 6)['params'],
               checkpoint.load_state(single, 6)['params'])


def test_uneven_host_splits_give_every_host_the_same_steps_and_schedule(tmp_path):
  # 1437 training digits: the hosts hold 719 and 718. 0.0334 epochs of batch 16 are
  # 1437 * 0.0334 / 16 = 2.9998 -> 3 steps; from a host's own count times 2 they would be
  # 3.0018 -> 4 steps on host 0 and 2.9977 -> 3 on host 1, and the run would hang at the end.
  outputs = run_two_processes(str(tmp_path), 'total_steps=None', 'total_epochs=0.0334',
                              'input.batch_size=16', 'optim.schedule.warmup_steps=2')
  rates = [re.findall(r'\[(\d+)\].*learning_rate=([0-9.e-]+)', err) for _, err in outputs]
  assert [step for step, _ in rates[0]] == ['1', '2', '3']
  assert rates[0] == rates[1]
  assert len({rate for _, rate in rates[0]}) == 3  # Warmup then decay: the schedule moves.


def test_a_process_that_never_joins_is_a_clear_error_not_a_hang(tmp_path):
  started = time.time()
  result = subprocess.run(
      [sys.executable, '-m', 'vit_jax.main', '--config=configs/vit_digits.py',
       f'--workdir={tmp_path}', '--distributed', f'--coordinator_address=127.0.0.1:{free_port()}',
       '--num_processes=2', '--process_id=0', '--distributed_timeout=5'],
      cwd=ROOT, env=multihost_env(1), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: not every process joined jax.distributed within 5 s'), last
  assert time.time() - started < 60
