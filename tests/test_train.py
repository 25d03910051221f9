"""The shared train loop: resume equals an uninterrupted run, exact eval, accumulation, the
offline main job end to end."""

import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from helpers import (ROOT, assert_one_line_error, assert_prediction_pictures, load_config,
                     optimised_code_env, run_module, tiny_digits_config)
from vit_jax.classification import input as classification_input
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import checkpoint, interrupts, optim, train
from vit_jax.framework.errors import UserError


class Preempted(Exception):
  pass


class PreemptedTask(ClassificationTask):
  """Its train stream dies after `stop_after` batches, as a preempted job would."""

  def __init__(self, config, stop_after):
    super().__init__(config)
    self.stop_after = stop_after

  def train_input(self, start_example):
    stream = super().train_input(start_example)
    for _ in range(self.stop_after):
      yield next(stream)
    raise Preempted()


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(tmp_path):
  config = tiny_digits_config(**{'model.dropout_rate': 0.1, 'keep_checkpoints': 5})
  uninterrupted = str(tmp_path / 'uninterrupted')
  train.train_and_evaluate(config, uninterrupted, ClassificationTask(config))

  interrupted = str(tmp_path / 'interrupted')
  with pytest.raises(Preempted):
    train.train_and_evaluate(config, interrupted, PreemptedTask(config, stop_after=4))
  assert sorted(os.listdir(os.path.join(interrupted, 'checkpoints'))) == ['3']
  train.train_and_evaluate(config, interrupted, ClassificationTask(config))

  expected = checkpoint.load_state(uninterrupted, 6)
  got = checkpoint.load_state(interrupted, 6)
  assert int(got['step']) == 6
  # Same data position, RNG (dropout is on) and optimizer state: bitwise-equal params.
  jax.tree.map(np.testing.assert_array_equal, got['params'], expected['params'])
  jax.tree.map(np.testing.assert_array_equal, got['opt_state'], expected['opt_state'])


@pytest.mark.slow
def test_eval_accuracy_equals_independent_count(workdir):
  # Eval batch 64 divides neither the 360 test nor the 1437 training images; the training split
  # is scored as a second eval (config.evals) at the same steps.
  config = tiny_digits_config(total_steps=20, evals=(('train', 'train'),))
  task = ClassificationTask(config)
  metrics = train.train_and_evaluate(config, workdir, task)
  assert metrics['num_examples'] == 360 and metrics['train_num_examples'] == 1437
  assert json.load(open(os.path.join(workdir, 'final_metrics.json'))) == metrics

  params = checkpoint.load_state(workdir, 20)['params']
  preprocess = classification_input.eval_preprocess(config.input)
  for split, key in (('test', 'accuracy'), ('train', 'train_accuracy')):
    data = classification_input.digits_arrays(split)
    images = np.stack([preprocess({'image': tf.constant(im), 'label': 0})['image'].numpy()
                       for im in data['image']])
    logits = task.model.apply({'params': params}, images)
    assert metrics[key] == pytest.approx(np.mean(logits.argmax(-1) == data['label']))


@pytest.mark.slow
def test_gradient_accumulation_equals_full_batch():
  params = {}
  for accum in (1, 4):
    config = tiny_digits_config(**{'optim.accum_steps': accum, 'model.dropout_rate': 0.0})
    task = ClassificationTask(config)
    tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
    state = train.init_state(task, tx, jax.random.PRNGKey(0))
    step = jax.jit(train.make_train_step(task, tx, schedule, accum))
    batch = next(task.train_input(0))
    for _ in range(2):
      state, metrics = step(state, batch)
    params[accum] = state.params
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), params[1], params[4])


@pytest.mark.slow
def test_digits_main_job_reaches_95_percent(workdir, tmp_path):
  cache = tmp_path / 'xla_cache'
  result = run_module(['vit_jax.main', '--config=configs/vit_digits.py', f'--workdir={workdir}',
                       f'--compilation_cache={cache}'], env=optimised_code_env())  # 1500 steps.
  assert result.returncode == 0, result.stderr[-3000:]
  assert list(cache.glob('jit_train_step-*'))  # A rerun takes the compiled step from here.
  metrics = json.load(open(os.path.join(workdir, 'final_metrics.json')))
  assert metrics['num_examples'] == 360
  assert metrics['accuracy'] >= 0.95
  assert 'Final eval' in result.stdout and 'accuracy=' in result.stdout
  assert 'train_loss=' in result.stderr and 'steps_per_sec' in result.stderr  # Progress.

  # The console: a few start-up lines, progress from the first step, where the results are.
  lines = result.stderr.splitlines()
  first_progress = next(i for i, line in enumerate(lines) if 'train_loss=' in line)
  start_up = '\n'.join(lines[:first_progress])
  assert first_progress <= 20, start_up
  params = checkpoint.load_state(workdir, 1500)['params']
  for fact in (f'{sum(x.size for x in jax.tree.leaves(params)):,} parameters',
               "Data: 1,437 training examples; eval 'test': 360", 'Steps 1..1500',
               f'tensorboard --logdir {workdir}'):
    assert fact in start_up, start_up
  assert f'Results in {workdir}: final_metrics.json, checkpoints/1500' in result.stdout
  for noise in ('oneDNN', "Unable to initialize backend 'tpu'", 'Dense_0/kernel',
                'Hyperparameters'):
    assert noise not in result.stderr, noise
  # The details are in the workdir: the parameter table in the log, every config value.
  log = open(os.path.join(workdir, 'train.log')).read()
  assert 'Dense_0/kernel' in log and 'Hyperparameters' in log
  expected_config = json.loads(load_config('vit_digits').to_json())
  assert json.load(open(os.path.join(workdir, 'config.json'))) == expected_config

  # TensorBoard: the first 4 test digits, true and predicted labels and attention, each eval.
  pictures = assert_prediction_pictures(workdir, steps=[500, 1000, 1500])
  assert any(not np.array_equal(p[500], p[1500]) for p in pictures.values())  # They follow.


class PoisonedTask(ClassificationTask):
  """Its 4th training batch is all NaN pixels."""

  def train_input(self, start_example):
    first = start_example // self.config.input.batch_size + 1
    for step, batch in enumerate(super().train_input(start_example), start=first):
      yield dict(batch, image=np.full_like(batch['image'], np.nan)) if step == 4 else batch


def test_non_finite_loss_stops_naming_the_step_and_saves_nothing_after_it(workdir):
  config = tiny_digits_config(checkpoint_every=2, log_every=5, total_steps=6)
  with pytest.raises(UserError, match='diverged at step 4'):
    train.train_and_evaluate(config, workdir, PoisonedTask(config))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']
  saved = checkpoint.load_state(workdir, 2)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(saved['params']))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_same_command_continues(workdir):
  args = [sys.executable, '-m', 'vit_jax.main', '--config=configs/vit_digits.py',
          f'--workdir={workdir}', '--config.log_every=5', '--config.checkpoint_every=1000']
  job = subprocess.Popen(args + ['--config.total_steps=100000'], cwd=ROOT,
                         stderr=subprocess.PIPE, text=True)
  for line in job.stderr:  # Wait for training to be under way.
    if 'train_loss=' in line:
      break
  job.send_signal(signal.SIGTERM)
  rest = job.stderr.read()
  assert job.wait(timeout=120) == 143
  step = int(re.search(r'preempted at step (\d+)', rest).group(1))
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == [str(step)]

  resumed = subprocess.run(args + [f'--config.total_steps={step + 2}'], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'Resumed from {workdir} at step {step}' in resumed.stderr
  assert 'Finished 2 steps' in resumed.stdout


@pytest.mark.slow
def test_ctrl_c_saves_the_step_and_a_second_run_in_the_workdir_stops(workdir):
  args = [sys.executable, '-m', 'vit_jax.main', '--config=configs/vit_digits.py',
          f'--workdir={workdir}', '--config.log_every=5', '--config.checkpoint_every=1000',
          '--config.total_steps=100000']
  job = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
  for line in job.stderr:  # Wait for training to be under way.
    if 'train_loss=' in line:
      break
  second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert_one_line_error(second, f'workdir {workdir} is in use by a running job (pid {job.pid} on ',
                        'pass another --workdir')

  job.send_signal(signal.SIGINT)
  rest = job.stderr.read()
  assert job.wait(timeout=120) == 130
  step = int(re.search(r'preempted at step (\d+) \(SIGINT\)', rest).group(1))
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == [str(step)]


@pytest.mark.slow
def test_ctrl_c_during_start_up_exits_130_without_a_traceback(workdir):
  job = subprocess.Popen([sys.executable, '-m', 'vit_jax.main', '--config=configs/vit_digits.py',
                          f'--workdir={workdir}'], cwd=ROOT, stderr=subprocess.PIPE, text=True)
  for line in job.stderr:
    if 'Config:' in line:  # Config parsed; the task and model not built yet.
      break
  job.send_signal(signal.SIGINT)
  rest = job.stderr.read()
  assert job.wait(timeout=120) == 130
  assert 'Traceback' not in rest
  assert rest.strip().splitlines()[-1].startswith('interrupted outside a training step')


def _ctrl_c_inside_a_gc_callback():
  """Ctrl-C whose handler runs inside a garbage-collector callback, as JAX's does at start-up."""
  def callback(phase, info):
    if phase == 'start':
      signal.raise_signal(signal.SIGINT)  # Its handler runs here, inside the callback.
  gc.callbacks.append(callback)
  try:
    gc.collect()
  finally:
    gc.callbacks.remove(callback)


@pytest.fixture
def pythons_ctrl_c_handler():
  """Python's own SIGINT handler, as in a job (pytest-xdist's workers ignore SIGINT)."""
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, previous)


def test_ctrl_c_that_python_drops_in_a_gc_callback_is_raised_when_start_up_ends(
    monkeypatch, pythons_ctrl_c_handler):
  dropped = []  # What Python prints as "Exception ignored in ...".
  monkeypatch.setattr(sys, 'unraisablehook', lambda unraisable: dropped.append(unraisable.exc_type))
  _ctrl_c_inside_a_gc_callback()  # Python's own handler: the KeyboardInterrupt is lost.
  assert dropped == [KeyboardInterrupt]
  with pytest.raises(KeyboardInterrupt):
    with interrupts.StartUp():
      _ctrl_c_inside_a_gc_callback()
      went_on = True  # Start-up goes on to its end, as before; the run stops there.
  assert went_on and dropped == [KeyboardInterrupt]  # No second "Exception ignored" traceback.
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_hook_installed_during_start_up_stays_after_it(monkeypatch, pythons_ctrl_c_handler):
  """The checkpoint module installs an unraisable hook for good, around the one before it."""
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', lambda unraisable: seen.append('first'))
  with interrupts.StartUp():
    inner = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: (seen.append('installed'), inner(unraisable))
  sys.unraisablehook(None)
  assert seen == ['installed', 'first']


def test_a_second_signal_exits_at_once(monkeypatch):
  exits = []
  monkeypatch.setattr(os, '_exit', exits.append)
  notice = train._PreemptionNotice()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    assert notice.reached(1) and not exits  # The first one waits for the step's checkpoint.
    os.kill(os.getpid(), signal.SIGINT)
    assert exits == [130]
  finally:
    notice.close()


class EvalDataLostTask(ClassificationTask):
  """Its eval data reads at start-up, then fails at the first eval."""

  eval_reads = 0

  def eval_input(self, split=None):
    self.eval_reads += 1
    if self.eval_reads > 1:
      raise UserError('the eval data went away')
    return super().eval_input(split)


def test_checkpoint_of_a_step_is_saved_before_its_eval(workdir):
  config = tiny_digits_config(eval_every=3, checkpoint_every=3)
  with pytest.raises(UserError, match='the eval data went away'):
    train.train_and_evaluate(config, workdir, EvalDataLostTask(config))
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['3']


def test_eval_data_problem_stops_the_run_before_training(tmp_path, workdir):
  for split, classes in (('train', ('cat', 'dog')), ('test', ('bird', 'cat', 'dog'))):
    for name in classes:
      os.makedirs(tmp_path / split / name)
      Image.new('RGB', (8, 8)).save(tmp_path / split / name / '0.png')
  config = tiny_digits_config(**{'model.num_classes': 2, 'input.batch_size': 2,
                                 'input.eval_batch_size': 2})
  config.input.update(source='folder', data_dir=str(tmp_path), channels=3)
  with pytest.raises(UserError, match=r"class folders \['bird'\] in .*test are not in"):
    train.train_and_evaluate(config, workdir, ClassificationTask(config))
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))


@pytest.mark.slow
def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
  config = tiny_digits_config(**{'model.dropout_rate': 0.1, 'keep_checkpoints': 5})
  uninterrupted = str(tmp_path / 'uninterrupted')
  train.train_and_evaluate(config, uninterrupted, ClassificationTask(config))

  damaged = str(tmp_path / 'damaged')
  shutil.copytree(os.path.join(uninterrupted, 'checkpoints'), os.path.join(damaged, 'checkpoints'))
  for root, _, files in os.walk(os.path.join(damaged, 'checkpoints', '6', 'state')):
    for name in files:  # Truncate every array file of the latest checkpoint, as a kill would.
      with open(os.path.join(root, name), 'r+b') as f:
        f.truncate(7)
  os.makedirs(os.path.join(damaged, 'checkpoints', '6.unreadable'))  # An earlier run's.
  train.train_and_evaluate(config, damaged, ClassificationTask(config))  # Redoes steps 4..6.

  assert {'6.unreadable', '6.unreadable.1'} <= set(os.listdir(os.path.join(damaged,
                                                                           'checkpoints')))
  expected = checkpoint.load_state(uninterrupted, 6)
  got = checkpoint.load_state(damaged, 6)
  jax.tree.map(np.testing.assert_array_equal, got['params'], expected['params'])


@pytest.mark.slow
def test_checkpoint_of_another_model_stops_the_run_and_stays_in_place(workdir):
  config = tiny_digits_config(keep_checkpoints=5)
  train.train_and_evaluate(config, workdir, ClassificationTask(config))
  directory = os.path.join(workdir, 'checkpoints')
  saved = {name: sorted(os.listdir(os.path.join(directory, name)))
           for name in os.listdir(directory)}
  wider = tiny_digits_config(keep_checkpoints=5, total_steps=9, **{'model.mlp_dim': 96})
  for _ in range(2):  # The same line again on a rerun: nothing was renamed.
    with pytest.raises(UserError, match=(
        r'checkpoint 6 in .* does not fit the config \(9 arrays differ, e\.g\. '
        r'params/Transformer/encoderblock_0/MlpBlock_0/Dense_0/bias: checkpoint \(64,\), config '
        r'\(96,\);.*\): run with the config it was written with, or pass a new --workdir')):
      train.train_and_evaluate(wider, workdir, ClassificationTask(wider))
    assert {name: sorted(os.listdir(os.path.join(directory, name)))
            for name in os.listdir(directory)} == saved


@pytest.mark.slow
def test_sigkill_at_three_points_then_rerun_gives_bit_identical_params(tmp_path):
  """A real kill -9 at three different steps; each time the same command is run again."""
  def command(workdir):
    return [sys.executable, '-m', 'vit_jax.main', '--config=configs/vit_digits.py',
            f'--workdir={workdir}', '--config.total_steps=40', '--config.log_every=1',
            '--config.eval_every=1000', '--config.checkpoint_every=5',
            '--config.keep_checkpoints=20']

  reference = str(tmp_path / 'reference')
  assert subprocess.run(command(reference), cwd=ROOT, capture_output=True,
                        timeout=600).returncode == 0
  killed = str(tmp_path / 'killed')
  for kill_at in (7, 18, 31):  # Steps between checkpoints: work since the last one is lost.
    job = subprocess.Popen(command(killed), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    for line in job.stderr:
      if '] learning_rate=' in line and f'[{kill_at}]' in line:
        break
    job.kill()
    job.wait(timeout=60)
  assert subprocess.run(command(killed), cwd=ROOT, capture_output=True,
                        timeout=600).returncode == 0
  expected = checkpoint.load_state(reference, 40)
  got = checkpoint.load_state(killed, 40)
  jax.tree.map(np.testing.assert_array_equal, got['params'], expected['params'])
  jax.tree.map(np.testing.assert_array_equal, got['opt_state'], expected['opt_state'])
