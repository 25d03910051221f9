"""THE train loop, shared by classification, detection and segmentation.

It knows nothing about labels, boxes or masks: a `Task` supplies the model, the loss, the eval
outputs, the host-side metric, the pictures of its predictions and the input. The loop does the
rest: mesh and shardings, sharded init, the jitted train step (with gradient accumulation),
batches copied to the devices ahead of their step (`config.prefetch_batches`, default 2),
periodic exact evaluation, orbax checkpoints with resume, clu logging (a few lines on the
console, every line in `WORKDIR/train.log`, curves and pictures for TensorBoard),
`WORKDIR/config.json` and `WORKDIR/final_metrics.json`.
"""

import dataclasses
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from jax.experimental import multihost_utils

from vit_jax.framework import checkpoint as checkpoint_lib
from vit_jax.framework import durations, evaluation, interrupts, logs, optim, paths, prefetch
from vit_jax.framework import sharding
from vit_jax.framework import task as task_lib
from vit_jax.framework import workdir as workdir_lib
from vit_jax.framework.errors import UserError

Batch = task_lib.Batch


class Preempted(Exception):
  """The job was asked to stop (SIGTERM, or Ctrl-C's SIGINT); a checkpoint of the last step was
  written. `signal` is the signal's number, for the exit status."""

  def __init__(self, step: int, signum: int = signal.SIGTERM):
    super().__init__(f'preempted at step {step} ({signal.Signals(signum).name}): a checkpoint of '
                     f'step {step} was saved; run the same command again to continue')
    self.step = step
    self.signal = signum


class _PreemptionNotice:
  """Turns SIGTERM and SIGINT into a flag the loop checks between steps (one process); a second
  signal ends the process at once. On several processes, JAX's preemption sync point makes
  every host stop at the same step (SIGTERM)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal = None  # The first signal received.
    self._previous = {}
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}

  def _on_signal(self, signum, frame):
    if self.signal is not None:  # Asked twice: the user does not want to wait for the save.
      print(f'{signal.Signals(signum).name} again: stopped without saving the step in progress',
            file=sys.stderr, flush=True)
      os._exit(128 + signum)
    self.signal = signum

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal = signal.SIGTERM
    return self.signal is not None

  def close(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  model_state: Any  # Non-trainable variable collections, e.g. frozen batch-norm statistics.
  opt_state: Any
  rng: jax.Array


def _split_microbatches(batch: Batch, k: int) -> Batch:
  """(B, ...) -> (k, B/k, ...), micro-batch j taking examples j, j+k, ... so that each device
  keeps its own examples (no resharding)."""
  def split(x):
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:])
    return jnp.moveaxis(x, 1, 0)
  return jax.tree.map(split, batch)


def make_train_step(task: task_lib.Task, tx: optax.GradientTransformation, schedule,
                    accum_steps: int):
  """The jittable update: gradients summed over `accum_steps` micro-batches, one optimizer update.

  As big_vision: the scan carries one gradient tree (not one per micro-batch) and the optimizer
  state holds no accumulated-gradient copy. Each micro-batch's loss and metrics are its share of
  the global batch's (the task divides by `loss_normalizers` of the whole batch), so their sums
  equal one step on the whole batch.
  """

  def train_step(state: TrainState, batch: Batch, frozen: dict | None = None):
    """frozen: the task's frozen variables (`Task.frozen_variables`), read by its loss."""
    rng = jax.random.fold_in(state.rng, state.step)
    normalizers = task.loss_normalizers(batch)

    def grads_and_metrics(batch, rng):
      def loss_fn(params):
        variables = {'params': params, **state.model_state, **(frozen or {})}
        return task.loss(variables, batch, rng, normalizers)
      (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      return grads, dict(metrics, loss=loss)

    if accum_steps == 1:
      grads, metrics = grads_and_metrics(batch, rng)
    else:
      def add_micro_batch(grad_sum, inputs):
        micro_batch, index = inputs
        grads, metrics = grads_and_metrics(micro_batch, jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, grad_sum, grads), metrics
      grads, metrics = jax.lax.scan(
          add_micro_batch, jax.tree.map(jnp.zeros_like, state.params),
          (_split_microbatches(batch, accum_steps), jnp.arange(accum_steps)))
      metrics = jax.tree.map(lambda shares: shares.sum(0), metrics)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['learning_rate'] = schedule(state.step)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def jit_train_step(task: task_lib.Task, tx, schedule, accum_steps: int, shardings: TrainState,
                   batch_sharding, frozen_shardings=None):
  """The train step as the loop runs it (also compiled ahead of time by
  vit_jax.framework.fit_report); with `frozen_shardings`, the frozen variables are its third
  argument."""
  in_shardings = (shardings, batch_sharding)
  if frozen_shardings is not None:
    in_shardings += (frozen_shardings,)
  return jax.jit(make_train_step(task, tx, schedule, accum_steps), in_shardings=in_shardings,
                 out_shardings=(shardings, None), donate_argnums=0)


def frozen_variables(task: task_lib.Task, mesh, rules) -> tuple[dict, dict]:
  """(the task's frozen variables on the devices, their shardings): laid out by their logical
  axis names as the params are, read once per run (a resumed run reads them again)."""
  boxed = task.frozen_variables()
  shardings = sharding.variable_shardings(boxed, mesh, rules, check_rules=False)
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  values = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, boxed,
                        is_leaf=is_box)  # nn.meta.unbox would constrain host arrays to the mesh.
  return jax.device_put(values, shardings), shardings


def checked_accum_steps(config, mesh, rules) -> int:
  """config.optim.accum_steps, after checking that the train and eval batches split evenly
  over the batch shards of `mesh` (and the train batch over the micro-batches)."""
  accum_steps = int(config.optim.get('accum_steps', 1) or 1)  # Micro-batches per step.
  shards = _batch_shards(mesh, rules)
  if accum_steps < 1 or config.input.batch_size % (accum_steps * shards):
    raise UserError(f'config.input.batch_size ({config.input.batch_size}) must be a multiple of '
                    f'config.optim.accum_steps ({accum_steps}) x the batch shards ({shards}): '
                    'change either (accum_steps >= 1)')
  if config.input.eval_batch_size % shards:
    fitting = math.ceil(config.input.eval_batch_size / shards) * shards
    raise UserError(f'config.input.eval_batch_size ({config.input.eval_batch_size}) must be a '
                    f'multiple of the {shards} batch shards: pass '
                    f'--config.input.eval_batch_size={fitting}')
  return accum_steps


def init_state(task: task_lib.Task, tx, rng) -> TrainState:
  """A fresh train state: the task's variables, optimizer state, step 0, the training RNG."""
  init_rng, train_rng = jax.random.split(rng)
  variables = nn.meta.unbox(task.init_variables(init_rng))
  params = variables.pop('params')
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                    opt_state=tx.init(params), rng=train_rng)


def state_shardings(task: task_lib.Task, tx, rng, mesh, rules) -> tuple[TrainState, TrainState]:
  """(abstract state, NamedShardings) with params and optimizer state laid out by the rules."""
  abstract_variables = jax.eval_shape(task.init_variables, rng)
  variable_shardings = sharding.variable_shardings(abstract_variables, mesh, rules)
  params_shardings = variable_shardings.pop('params')
  abstract_state = jax.eval_shape(lambda r: init_state(task, tx, r), rng)
  shardings = TrainState(
      step=sharding.replicated(mesh),
      params=params_shardings,
      model_state=variable_shardings,
      opt_state=sharding.optimizer_shardings(tx, abstract_state.params, params_shardings, mesh),
      rng=sharding.replicated(mesh))
  return abstract_state, shardings


def _check_init_from(path) -> None:
  """A local `config.init_from` must exist before a model is built to receive it (remote paths
  are checked when read)."""
  if path and not paths.exists(path):
    raise UserError(f'config.init_from {path!r} does not exist: pass the path of a downloaded '
                    'checkpoint as --config.init_from=PATH')


def _stop_if_not_finite(checked: list) -> None:
  for step, loss, grad_norm in checked:
    if not (np.isfinite(loss) and np.isfinite(grad_norm)):
      raise UserError(f'training diverged at step {step}: loss {loss}, gradient norm {grad_norm}; '
                      'nothing from that step on was saved: lower config.optim.lr and restart '
                      '(the run resumes from the last checkpoint)')


def _write_json(path: str, data: dict) -> None:
  if jax.process_index() == 0:
    paths.write_text(path, json.dumps(data, indent=2, sort_keys=True))


def _scalars(metrics: dict) -> dict[str, float]:
  return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def train_and_evaluate(config, workdir: str, task: task_lib.Task) -> dict[str, float]:
  """Trains `task` as `config` says, resuming from `workdir` if it holds a checkpoint.

  Returns the final eval metrics (also written to `workdir/final_metrics.json`); host-side
  metrics are computed on process 0, the other processes get only the step.
  """
  workdir_lib.prepare(workdir)
  # train.log and TensorBoard's files grow as the run goes: in object storage, which cannot
  # append, they are written to a local folder and uploaded from there (`logdir`).
  mirror = paths.Mirror(workdir)
  try:
    with workdir_lib.run_lock(workdir), logs.to_file(mirror.local):
      return _train_and_evaluate(config, workdir, task, mirror.local)
  finally:
    mirror.close()


def _train_and_evaluate(config, workdir: str, task: task_lib.Task,
                        logdir: str) -> dict[str, float]:
  # A Ctrl-C that Python dropped during start-up stops the run before its first step.
  with interrupts.StartUp() as start_up:
    plan = _plan(config, task)
    with jax.set_mesh(plan.mesh), nn.logical_axis_rules(plan.rules):
      tx, schedule = optim.make_optimizer(config.optim, plan.steps.total, plan.steps.epochs)
      rng = jax.random.PRNGKey(config.seed)
      abstract_state, shardings = state_shardings(task, tx, rng, plan.mesh, plan.rules)
      batch_sharding = sharding.batch_sharding(plan.mesh, plan.rules)
      checkpointer = checkpoint_lib.Checkpointer(
          paths.join(workdir, 'checkpoints'), plan.steps.checkpoint_every,
          config.keep_checkpoints)
      state, examples_seen = _restore_or_initialize(config, workdir, task, tx, rng, abstract_state,
                                                    shardings, checkpointer)
      # Accepted: only now the run's files (a rejected start or resume leaves the workdir as it
      # was: the config the checkpoints were written with, no empty TensorBoard file).
      if jax.process_index() == 0:  # Every value of the run's config, resolved.
        paths.write_text(paths.join(workdir, 'config.json'),
                         config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
      writer = _make_writer(logdir)
      first_step = int(jax.device_get(state.step))
      _log_start(config, workdir, task, state.params, plan, first_step)
      if first_step == 0:
        logging.info('Parameters:\n%s', parameter_overview.get_parameter_overview(
            state.params, include_stats=jax.process_count() == 1), **logs.FILE_ONLY)
        writer.write_hparams(_flatten_config(config))

      frozen, frozen_shardings = frozen_variables(task, plan.mesh, plan.rules)
      step_with_frozen = jit_train_step(task, tx, schedule, plan.accum_steps, shardings,
                                        batch_sharding, frozen_shardings)
      train_step = lambda state, batch: step_with_frozen(state, batch, frozen)
      eval_step, draw_step = _eval_steps(task, shardings, batch_sharding, plan.mesh)
      evals = evaluation.BackgroundEvaluation(task, eval_step, batch_sharding, writer, draw_step,
                                              plan.prefetch_size)
      start_up.end()  # From here on, the loop's preemption notice takes the signals.
      start_time = time.time()
      try:  # Whatever stops the loop, in-flight checkpoints are finished, not lost.
        _loop(config, logdir, plan, task, state, examples_seen, train_step, batch_sharding, evals,
              checkpointer, writer)
      finally:
        evals.close()
        checkpointer.wait()
        checkpointer.close()
        writer.flush()

  eval_metrics = evals.final_metrics()
  final = dict(eval_metrics, step=plan.steps.total)
  _write_json(paths.join(workdir, 'final_metrics.json'), final)
  if jax.process_index() == 0:
    summary = (f'Finished {plan.steps.total - first_step} steps in '
               f'{time.time() - start_time:.1f} s. Final eval: '
               + ', '.join(f'{k}={v:.4f}' for k, v in sorted(eval_metrics.items())))
    logging.info(summary, **logs.FILE_ONLY)  # The console has it from print.
    print(summary, flush=True)
  return final


@dataclasses.dataclass(frozen=True)
class _Plan:
  """What the config asks of the loop, checked before anything is built or written."""
  mesh: jax.sharding.Mesh
  rules: Any
  steps: durations.Steps
  num_train_examples: int
  accum_steps: int
  prefetch_size: int


def _plan(config, task: task_lib.Task) -> _Plan:
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.sharding_rules)
  sharding.check_rules(rules, mesh)
  num_train_examples = task.num_train_examples()
  if config.input.batch_size > num_train_examples:
    logging.warning('config.input.batch_size %d is larger than the training split (%d '
                    'examples): every step repeats examples.', config.input.batch_size,
                    num_train_examples)
  plan = _Plan(mesh, rules, durations.resolve(config, num_train_examples), num_train_examples,
               checked_accum_steps(config, mesh, rules),
               prefetch.checked_size(config.prefetch_batches))
  task.check_inputs()
  return plan


def _restore_or_initialize(config, workdir: str, task: task_lib.Task, tx, rng, abstract_state,
                           shardings: TrainState, checkpointer) -> tuple[TrainState, int]:
  """(state, examples seen): the workdir's last checkpoint, else a fresh state (filled from
  `config.init_from` when set)."""
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state, shardings)
  restored = checkpointer.restore_latest(target)
  if restored is not None:
    step, state, meta = restored
    logging.info('Resumed from %s at step %d (%d examples seen).', workdir, step,
                 int(meta['examples_seen']))
    return state, int(meta['examples_seen'])
  _check_init_from(config.init_from)
  state = jax.jit(lambda r: init_state(task, tx, r), out_shardings=shardings)(rng)
  if config.init_from:
    variables = multihost_utils.process_allgather(
        {'params': state.params, **state.model_state}, tiled=True)
    variables = task.pretrained_variables(variables, config.init_from)
    params = variables.pop('params')
    state = state.replace(params=jax.device_put(params, shardings.params),
                          model_state=jax.device_put(variables, shardings.model_state))
  return state, 0


def _eval_steps(task: task_lib.Task, shardings: TrainState, batch_sharding, mesh):
  """(eval step, draw step), jitted: the task's eval outputs of a sharded batch with its mask,
  and its `draw_outputs` on the few replicated drawn examples."""
  variables = lambda s: {'params': s.params, **s.model_state}
  eval_step = jax.jit(lambda s, b: dict(task.eval_outputs(variables(s), b), _mask=b['_mask']),
                      in_shardings=(shardings, batch_sharding),
                      out_shardings=sharding.replicated(mesh))
  draw_step = jax.jit(lambda s, b: task.draw_outputs(variables(s), b),
                      in_shardings=(shardings, sharding.replicated(mesh)),
                      out_shardings=sharding.replicated(mesh))
  return eval_step, draw_step


def _loop(config, logdir: str, plan: _Plan, task: task_lib.Task, state: TrainState,
          examples_seen: int, train_step, batch_sharding, evals, checkpointer, writer) -> None:
  """The steps from the state's to the last: train, log, check, save, evaluate, and stop at a
  preemption notice with the step saved."""
  num_steps, first_step = plan.steps.total, int(jax.device_get(state.step))
  report = periodic_actions.ReportProgress(
      num_train_steps=num_steps, writer=writer, every_steps=config.log_every)
  hooks = [report]
  if config.profile and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(logdir=logdir, num_profile_steps=5))
  # Exactly the batches the remaining steps use, each on the devices before its step.
  train_iter = prefetch.to_devices(
      itertools.islice(task.train_input(start_example=examples_seen), num_steps - first_step),
      batch_sharding, plan.prefetch_size)
  pending_metrics = []  # Device scalars since the last log step, averaged when logged.
  unchecked = []  # (step, loss, grad norm) not yet checked for finiteness.
  preemption = _PreemptionNotice()
  try:
    for step in range(first_step + 1, num_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = train_step(state, next(train_iter))
      examples_seen += config.input.batch_size
      pending_metrics.append(metrics)
      unchecked.append((step, metrics['loss'], metrics['grad_norm']))
      for hook in hooks:
        hook(step)
      last = step == num_steps
      preempted = preemption.reached(step)
      # The run's first step too: the first progress line comes as soon as training runs.
      log_now = step % config.log_every == 0 or last or step == first_step + 1
      save_now = checkpointer.is_due(step) or last or preempted
      if log_now or save_now:  # Never log or save a state that went non-finite.
        _stop_if_not_finite(jax.device_get(unchecked))
        unchecked = []
      if log_now:
        averaged = jax.tree.map(lambda *x: np.mean(x), *jax.device_get(pending_metrics))
        writer.write_scalars(step, {f'train_{k}' if k != 'learning_rate' else k: v
                                    for k, v in _scalars(averaged).items()})
        pending_metrics = []
      if save_now:  # Before the eval: an eval that fails must not cost the step.
        checkpointer.save(step, state, {'examples_seen': examples_seen})
      if (step % plan.steps.eval_every == 0 or last) and not preempted:
        with report.timed('eval'):
          evals.start(step, state)
      evals.write_finished()
      if preempted:
        raise Preempted(step, preemption.signal)

    if first_step == num_steps:  # Resumed at the end: report the final state again.
      evals.start(num_steps, state)
    evals.write_finished(wait=True)
  finally:
    preemption.close()


class _ConsoleWriter(metric_writers.LoggingWriter):
  """clu's logging writer, with the hyperparameters and image shapes in the log file only."""

  def write_hparams(self, hparams):
    logging.info('Hyperparameters: %s', hparams, **logs.FILE_ONLY)

  def write_images(self, step, images):
    logging.info('[%d] Images: %s', step, {k: v.shape for k, v in images.items()},
                 **logs.FILE_ONLY)


def _make_writer(logdir: str) -> metric_writers.MetricWriter:
  """Metrics to the log (every process) and to TensorBoard in `logdir` (process 0)."""
  writers = [_ConsoleWriter()]
  if jax.process_index() == 0:
    writers.append(metric_writers.SummaryWriter(logdir))
  return metric_writers.AsyncMultiWriter(writers)


def _log_start(config, workdir: str, task: task_lib.Task, params, plan: _Plan,
               first_step: int) -> None:
  """The few start-up lines a person reads: model, data, steps, where everything goes."""
  count = sum(x.size for x in jax.tree.leaves(params))
  devices = jax.devices()
  logging.info('Model %s: %s parameters; mesh %s over %d %s device(s), %d process(es).',
               config.model.get('variant') or config.model.name, f'{count:,}',
               dict(plan.mesh.shape), len(devices), devices[0].platform, jax.process_count())
  evals = ', '.join(f'{name} {split!r}: {task.eval_source(split).global_num_examples:,}'
                    for name, split in task.eval_splits.items())
  logging.info('Data: %s training examples; %s.', f'{plan.num_train_examples:,}', evals)
  steps = plan.steps
  epochs = steps.total * config.input.batch_size / max(plan.num_train_examples, 1)
  logging.info('Steps %d..%d, %d examples each (%.1f epochs); eval every %d, checkpoint every %d.',
               first_step + 1, steps.total, config.input.batch_size, epochs, steps.eval_every,
               steps.checkpoint_every)
  logging.info('Workdir %s: config.json, %s (the full log), checkpoints/; TensorBoard: '
               'tensorboard --logdir %s', workdir, os.path.basename(logs.log_file(workdir)),
               workdir)


def _batch_shards(mesh, rules) -> int:
  """How many pieces the batch is split into (the mesh axes the 'batch' rule names)."""
  batch_axes = nn.logical_to_mesh_axes(('batch',), rules)[0]
  batch_axes = batch_axes if isinstance(batch_axes, tuple) else (batch_axes,)
  return math.prod(mesh.shape[a] for a in batch_axes if a is not None)


def _flatten_config(config, prefix='') -> dict:
  flat = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      flat.update(_flatten_config(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value if isinstance(value, (int, float, str, bool)) else str(value)
  return flat
