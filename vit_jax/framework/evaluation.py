"""Evaluation off the critical path.

The eval steps of a split are dispatched at once, in the caller's thread (they must read the
train state before the next train step donates it); pulling their outputs to the host and the
host-side metric (accuracy, COCOeval, mIoU) run on one worker thread while training goes on.
The outputs come out of the eval step replicated, so process 0 alone computes the metric and the
other processes only take part in the device work. The same goes for the pictures of the
predictions on a few fixed examples (`Task.draw`): one small jitted forward, drawn on the worker.
Eval batches go to the devices ahead of their step as training's do (`prefetch.to_devices`,
`config.prefetch_batches`).
"""

import collections
import concurrent.futures
from typing import Callable, Optional

import jax
import numpy as np
from absl import logging

from vit_jax.framework import prefetch
from vit_jax.framework import task as task_lib


def _to_host(x: jax.Array) -> np.ndarray:
  # A replicated array spanning several processes is whole on each of them.
  return np.asarray(x.addressable_data(0) if x.is_fully_replicated else x)


def _score(task: task_lib.Task, eval_step: Callable, state, batch_sharding, split: str,
           executor: concurrent.futures.Executor,
           prefetch_size: int) -> concurrent.futures.Future:
  """Dispatches every eval batch of `split`, each copied to the devices while the step before
  it runs (up to `prefetch_size` batches ahead); a future of its metrics (None off process 0)."""
  evaluator = task.evaluator(split) if jax.process_index() == 0 else None
  updates = []
  for batch in prefetch.to_devices(task.eval_input(split), batch_sharding, prefetch_size):
    outputs = eval_step(state, batch)
    if evaluator is not None:
      updates.append(executor.submit(
          lambda o: evaluator.update(jax.tree.map(_to_host, o)), outputs))

  def result():
    for update in updates:  # Done already (one worker, in order); re-raises a failed update.
      update.result()
    return evaluator.result() if evaluator is not None else None
  return executor.submit(result)


def evaluate(task: task_lib.Task, eval_step: Callable, state, batch_sharding,
             split: Optional[str] = None, prefetch_size: int = 2) -> Optional[dict[str, float]]:
  """Scores `split` (default: the task's first eval split) once and waits for the metrics;
  every example counts exactly once (padding is masked out). None off process 0.
  prefetch_size: `config.prefetch_batches` (`prefetch.to_devices`)."""
  split = split or next(iter(task.eval_splits.values()))
  with concurrent.futures.ThreadPoolExecutor(1) as executor:
    return _score(task, eval_step, state, batch_sharding, split, executor,
                  prefetch.checked_size(prefetch_size)).result()


class BackgroundEvaluation:
  """The task's eval splits, scored while training goes on; metrics (and the pictures of the
  first split's predictions) written in step order."""

  def __init__(self, task: task_lib.Task, eval_step: Callable, batch_sharding, writer,
               draw_step: Optional[Callable] = None, prefetch_size: int = 2):
    """draw_step: jitted (state, examples) -> `task.draw_outputs`, replicated; None: no
    pictures. prefetch_size: `config.prefetch_batches` (`prefetch.to_devices`)."""
    self._task, self._eval_step, self._batch_sharding = task, eval_step, batch_sharding
    self._prefetch_size = prefetch.checked_size(prefetch_size)
    self._writer, self._draw_step = writer, draw_step
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='eval')
    self._pending = collections.deque()  # (step, eval name, future), oldest first.
    self._examples = None  # The drawn examples, read at the first eval.
    self._drawing_failed = False  # Then the forward still runs (every process takes part).
    self.latest: dict[str, dict[str, float]] = {}  # Eval name -> its latest metrics.

  def start(self, step: int, state) -> None:
    for index, (name, split) in enumerate(self._task.eval_splits.items()):
      metrics = _score(self._task, self._eval_step, state, self._batch_sharding, split,
                       self._executor, self._prefetch_size)
      pictures = self._draw(state) if index == 0 else None
      # One worker runs in order: `metrics` is done when this runs.
      self._pending.append((step, name, self._executor.submit(
          lambda m, p: (m.result(), p() if p else {}), metrics, pictures)))

  def _draw(self, state) -> Optional[Callable[[], dict]]:
    """Dispatches the drawing forward now (the state is donated by the next train step); a
    function that draws its outputs on the host (on process 0; None elsewhere or no drawing)."""
    if self._draw_step is None:
      return None
    if self._examples is None:
      self._examples = self._task.drawn_examples() or {}
    if not self._examples:
      return None
    examples = self._examples
    outputs = self._draw_step(state, {k: v for k, v in examples.items() if k != '_mask'})
    if jax.process_index() > 0 or self._drawing_failed:
      return None

    def draw():
      real = examples['_mask'].astype(bool)
      try:
        return self._task.draw(jax.tree.map(lambda x: x[real], examples),
                               jax.tree.map(lambda x: _to_host(x)[real], outputs))
      except Exception:  # pylint: disable=broad-except
        # A picture is not worth the run: say what failed and go on training.
        logging.exception('Drawing the predictions failed; training goes on without them.')
        self._drawing_failed = True
        return {}
    return draw

  def write_finished(self, wait: bool = False) -> None:
    """Writes the metrics of the evals that have finished (all of them with `wait`)."""
    while self._pending and (wait or self._pending[0][2].done()):
      step, name, future = self._pending.popleft()
      metrics, pictures = future.result()
      if metrics is not None:
        self._writer.write_scalars(step, {f'{name}_{k}': v for k, v in metrics.items()})
        self.latest[name] = metrics
      if pictures:
        self._writer.write_images(step, {f'{name}_predictions/{k}': v
                                         for k, v in pictures.items()})

  def final_metrics(self) -> dict[str, float]:
    """The main eval's metrics as they are, the others' prefixed with their names."""
    final = {}
    for name, metrics in self.latest.items():
      final.update({k if name == 'eval' else f'{name}_{k}': v for k, v in metrics.items()})
    return final

  def close(self) -> None:
    self._executor.shutdown(wait=True, cancel_futures=True)
