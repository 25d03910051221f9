"""Eval off the critical path: the host-side metric runs on a worker thread while training goes on,
and its metrics are still written for the step they belong to; batches prefetched to the devices
change no metric."""

import threading

import jax
import numpy as np
import optax
import pytest

from helpers import tiny_digits_config
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import evaluation, sharding, train


class MetricWaitsForTraining(ClassificationTask):
  """The metric of the eval at step 2 can only finish once training has fetched the batch of step
  3: a loop that waited for the metric before training on would never get there."""

  def __init__(self, config):
    super().__init__(config)
    self.step_3_fetched = threading.Event()
    self.metric_threads = []

  def train_input(self, start_example):
    for index, batch in enumerate(super().train_input(start_example)):
      if index == 2:  # The batch of step 3.
        self.step_3_fetched.set()
      yield batch

  def evaluator(self, split):
    task, evaluator = self, super().evaluator(split)

    class Waiting(type(evaluator)):
      def result(self):
        task.metric_threads.append(threading.current_thread())
        assert task.step_3_fetched.wait(timeout=120), 'training waited for the eval metric'
        return super().result()

    evaluator.__class__ = Waiting
    return evaluator


@pytest.mark.slow
def test_training_goes_on_while_the_metric_is_computed(workdir):
  config = tiny_digits_config(total_steps=4, eval_every=2, checkpoint_every=1000)
  task = MetricWaitsForTraining(config)
  metrics = train.train_and_evaluate(config, workdir, task)
  assert metrics['num_examples'] == 360 and metrics['step'] == 4
  assert len(task.metric_threads) == 2  # Steps 2 and 4.
  assert threading.main_thread() not in task.metric_threads


def test_eval_with_prefetch_gives_the_same_metrics_as_without():
  config = tiny_digits_config()  # 360 eval examples in batches of 64: the last one is padded.
  task = ClassificationTask(config)
  state = train.init_state(task, optax.identity(), jax.random.PRNGKey(0))
  mesh = sharding.make_mesh(config.mesh)
  batch_sharding = sharding.batch_sharding(mesh, sharding.logical_rules(config.sharding_rules))
  eval_step = jax.jit(lambda s, b: dict(task.eval_outputs({'params': s.params}, b),
                                        _mask=b['_mask']))
  copied_when_needed = evaluation.evaluate(task, eval_step, state, batch_sharding,
                                           prefetch_size=0)
  prefetched = evaluation.evaluate(task, eval_step, state, batch_sharding, prefetch_size=2)
  assert prefetched == copied_when_needed  # Bit for bit: the same batches, steps and sums.

  # Independently: the model on the host batches, real (unpadded) examples only.
  correct = count = 0
  for batch in task.eval_input():
    real = batch['_mask'].astype(bool)
    logits = task.model.apply({'params': state.params}, batch['image'], train=False)
    correct += int((np.asarray(logits).argmax(-1) == batch['label'])[real].sum())
    count += int(real.sum())
  assert count == prefetched['num_examples'] == 360
  assert prefetched['accuracy'] == pytest.approx(correct / count, abs=1e-12)
