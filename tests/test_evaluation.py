"""Eval off the critical path: the host-side metric runs on a worker thread while training goes on,
and its metrics are still written for the step they belong to."""

import threading

from helpers import tiny_digits_config
from vit_jax import train
from vit_jax.classification import ClassificationTask


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


def test_training_goes_on_while_the_metric_is_computed(workdir):
  config = tiny_digits_config(total_steps=4, eval_every=2, checkpoint_every=1000)
  task = MetricWaitsForTraining(config)
  metrics = train.train_and_evaluate(config, workdir, task)
  assert metrics['num_examples'] == 360 and metrics['step'] == 4
  assert len(task.metric_threads) == 2  # Steps 2 and 4.
  assert threading.main_thread() not in task.metric_threads
