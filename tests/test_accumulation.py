"""Gradient accumulation: `accum_steps=k` makes the same update as one step on the same global
batch, for every task, and the optimizer state keeps no accumulated-gradient copy.

One step of SGD with momentum 0.9 and learning rate 1 (the first step is params - lr * grad, so
parameters differ exactly as much as the gradients do). DETR's and Segmenter's micro-batches get
very different box / valid-pixel counts, so that normalising each micro-batch by its own counts
would miss the one-step update by far more than the tolerance (checked, so the tests can fail).
"""

import jax
import ml_collections
import numpy as np
import optax
import pytest

from detr_jax.detection import DetectionTask
from helpers import load_config, tiny_digits_config
from segmenter_jax.segmentation import IGNORE_INDEX, SegmentationTask
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import optim, train
from vit_jax.framework.errors import UserError

# float32, on params after the step: an element may differ by round-off relative to the largest
# element of its tensor (a sum in another order), so the absolute tolerance scales with it.
RTOL, ATOL = 1e-5, 1e-6
METRICS_RTOL = 1e-5  # Loss and logged metrics: the micro-batches' shares sum to the step's.
MOMENTUM = ml_collections.ConfigDict(dict(name='momentum', lr=1.0, momentum=0.9))


def _step(task, batch, accum_steps):
  """(params after one train step from a fixed initial state, the step's metrics)."""
  tx, schedule = optim.make_optimizer(MOMENTUM, total_steps=10)
  state = train.init_state(task, tx, jax.random.PRNGKey(0))
  step = jax.jit(train.make_train_step(task, tx, schedule, accum_steps))
  state, metrics = step(state, batch)
  _assert_only_the_momentum(state.opt_state, state.params)
  return state.params, jax.device_get(metrics)


def _assert_only_the_momentum(opt_state, params):
  """The optimizer state is SGD-momentum's own: one params-shaped trace, otherwise scalars."""
  trace = optax.tree.get(opt_state, 'trace')
  assert jax.tree.structure(trace) == jax.tree.structure(params)
  arrays = [x for x in jax.tree.leaves(opt_state) if np.ndim(x)]
  assert len(arrays) == len(jax.tree.leaves(params))


class OwnCountsTask:
  """A task as accumulation would treat it if each micro-batch were normalised by its own
  counts and the micro-batch gradients averaged: the mistake the tests must catch."""

  def __init__(self, task, accum_steps):
    self.task, self.accum_steps = task, accum_steps

  def __getattr__(self, name):
    return getattr(self.task, name)

  def loss(self, variables, batch, rng, normalizers):
    own = {name: self.accum_steps * count
           for name, count in self.task.loss_normalizers(batch).items()}
    return self.task.loss(variables, batch, rng, own)


def _max_difference(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                           jax.tree.leaves(b)))


def _assert_same_update(task, batch, accum_steps):
  """Params and metrics after one step equal those of `accum_steps` micro-batches; returns the
  one-step params."""
  one_step, one_step_metrics = _step(task, batch, 1)
  accumulated, metrics = _step(task, batch, accum_steps)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=RTOL, atol=ATOL * max(1., float(np.max(np.abs(b))))), accumulated, one_step)
  assert metrics.keys() == one_step_metrics.keys()
  for name, value in one_step_metrics.items():
    np.testing.assert_allclose(metrics[name], value, rtol=METRICS_RTOL, err_msg=name)
  return one_step


@pytest.mark.slow
def test_classification_accumulated_equals_one_step():
  config = tiny_digits_config(**{'model.dropout_rate': 0.0})
  task = ClassificationTask(config)
  batch = next(task.train_input(0))
  for accum_steps in (2, 4):
    _assert_same_update(task, batch, accum_steps)


@pytest.mark.slow
def test_detection_normalises_by_the_global_box_count():
  config = load_config('detr_shapes')
  config.input.shapes.update(num_train=16, min_objects=3, max_objects=3)
  config.input.batch_size = 8
  config.model.update(hidden_dim=32, mlp_dim=64, num_encoder_layers=1)
  task = DetectionTask(config)
  batch = next(task.train_input(0))
  box_mask = np.array(batch['box_mask'])
  box_mask[0::2, 1:] = 0  # Micro-batch 0 (the even images) holds 4 boxes, micro-batch 1 12.
  batch = dict(batch, box_mask=box_mask)
  one_step = _assert_same_update(task, batch, 2)
  own_counts, _ = _step(OwnCountsTask(task, 2), batch, 2)
  assert _max_difference(own_counts, one_step) > 1e3 * ATOL


@pytest.mark.slow
def test_segmentation_normalises_by_the_global_valid_pixel_count():
  config = load_config('segmenter_shapes')
  config.input.shapes.num_train = 16
  config.input.batch_size = 8
  config.model.update(hidden_size=16, num_layers=1, num_heads=1, mlp_dim=32)
  task = SegmentationTask(config)
  batch = next(task.train_input(0))
  labels = np.array(batch['label'])
  labels[0::2, 4:] = IGNORE_INDEX  # Micro-batch 0 (the even images) keeps an eighth of its rows.
  batch = dict(batch, label=labels)
  one_step = _assert_same_update(task, batch, 2)
  own_counts, _ = _step(OwnCountsTask(task, 2), batch, 2)
  assert _max_difference(own_counts, one_step) > 1e3 * ATOL


@pytest.mark.parametrize('accum_steps', [3, -2])
def test_accum_steps_that_do_not_split_the_batch_are_a_clear_error(workdir, accum_steps):
  config = tiny_digits_config(**{'optim.accum_steps': accum_steps})  # Batch 32.
  with pytest.raises(UserError, match=r'^config.input.batch_size \(32\) must be a multiple of '
                                      rf'config.optim.accum_steps \({accum_steps}\) x the batch '
                                      r'shards \(1\): change either'):
    train.train_and_evaluate(config, workdir, ClassificationTask(config))
