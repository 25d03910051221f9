"""Batches prefetched to the devices: the same arrays, order and sharding as copying each batch
when asked for, fetched ahead of their use, errors raised in their turn; in training and in
evaluation."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from helpers import tiny_digits_config
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import evaluation, prefetch, train
from vit_jax.framework.errors import UserError


def _batch_sharding():
  mesh = jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  return NamedSharding(mesh, P('data'))


def _host_batches(count):
  """Batches whose shapes change from one to the next, as padding buckets make them."""
  rng = np.random.default_rng(0)
  sizes = [(16, 24), (24, 16), (16, 24), (32, 32)]
  return [{'image': rng.normal(size=(8, *sizes[i % 4], 3)).astype(np.float32),
           'label': rng.integers(0, 10, size=8).astype(np.int32)} for i in range(count)]


class _Counted:
  """An iterator over `batches` that counts how many were taken from it."""

  def __init__(self, batches):
    self.batches = iter(batches)
    self.taken = 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self.batches)
    self.taken += 1
    return batch


@pytest.mark.parametrize('size', [0, 1, 2, 3])
def test_prefetched_batches_equal_the_host_batches_in_order_with_the_batch_sharding(size):
  host = _host_batches(6)
  batch_sharding = _batch_sharding()
  got = list(prefetch.to_devices(host, batch_sharding, size))
  assert len(got) == len(host)
  for device_batch, host_batch in zip(got, host):
    assert sorted(device_batch) == sorted(host_batch)
    for key, expected in host_batch.items():
      array = device_batch[key]
      assert isinstance(array, jax.Array) and array.sharding == batch_sharding
      assert array.dtype == expected.dtype and array.shape == expected.shape
      np.testing.assert_array_equal(np.asarray(array), expected)
      for shard in array.addressable_shards:  # Each device holds its own rows.
        np.testing.assert_array_equal(np.asarray(shard.data), expected[shard.index])


@pytest.mark.parametrize('size, ahead', [(0, 1), (1, 1), (2, 2), (3, 3)])
def test_batches_are_taken_from_the_source_ahead_of_their_use(size, ahead):
  source = _Counted(_host_batches(6))
  batches = prefetch.to_devices(source, _batch_sharding(), size)
  assert source.taken == 0  # Nothing is read before the first batch is asked for.
  next(batches)
  assert source.taken == ahead  # The first, and the size-1 after it already on the devices.
  next(batches)
  assert source.taken == ahead + 1
  assert len(list(batches)) == 4 and source.taken == 6


def test_an_error_reading_ahead_is_raised_when_its_batch_is_asked_for():
  def failing_source():
    yield from _host_batches(2)
    raise UserError('image 17 does not decode')

  batches = prefetch.to_devices(failing_source(), _batch_sharding(), size=3)
  next(batches)  # The source has already failed here, reading ahead.
  next(batches)  # Both batches before the failure are still handed out.
  with pytest.raises(UserError, match='image 17 does not decode'):
    next(batches)


@pytest.mark.parametrize('size', [-1, 1.5, True, '2'])
def test_bad_prefetch_size_is_a_one_line_error(size):
  with pytest.raises(UserError, match=r'config.prefetch_batches must be a whole number >= 0'):
    prefetch.checked_size(size)


class _CountingTask(ClassificationTask):
  """Records how many training batches the loop took from its stream."""

  taken = 0

  def train_input(self, start_example):
    for batch in super().train_input(start_example):
      _CountingTask.taken += 1
      yield batch


@pytest.mark.slow
def test_the_loop_reads_ahead_but_never_past_its_last_step(workdir):
  # Bit-exact resume with prefetching on (the default) is tests/test_train.py's resume tests.
  config = tiny_digits_config(total_steps=4, checkpoint_every=4, prefetch_batches=3)
  _CountingTask.taken = 0
  train.train_and_evaluate(config, workdir, _CountingTask(config))
  assert _CountingTask.taken == 4  # Without the bound, 3 batches ahead would read 6.


class _VaryingShapesEval:
  """An eval split of 6 batches whose image shapes change from one to the next (padding
  buckets), the last one padded; scored by the mean pixel of each real example. Counts the
  batches read from it."""

  eval_splits = {'eval': 'validation'}

  def __init__(self, fail_after=None):
    self.host = _host_batches(6)
    for index, batch in enumerate(self.host):
      batch['_mask'] = np.ones(8, np.int32)
      if index == 5:
        batch['_mask'][3:] = 0  # 43 real examples: the last batch is padded.
    self.fail_after, self.source = fail_after, None

  def eval_input(self, split):
    assert split == 'validation'

    def batches():
      for index, batch in enumerate(self.host):
        if index == self.fail_after:
          raise UserError('image 17 does not decode')
        yield batch
    self.source = _Counted(batches())
    return self.source

  def evaluator(self, split):
    class MeanPixel:
      def __init__(self):
        self.means = []

      def update(self, outputs):
        self.means.extend(outputs['mean'][outputs['_mask'].astype(bool)])

      def result(self):
        return {'mean_pixel': float(np.mean(self.means)), 'num_examples': len(self.means)}
    return MeanPixel()


class _RecordingWriter:
  def __init__(self):
    self.scalars = {}

  def write_scalars(self, step, scalars):
    self.scalars[step] = scalars


@pytest.mark.parametrize('size', [0, 2, 3])
def test_eval_batches_are_on_the_devices_ahead_of_their_step(size):
  task, batch_sharding = _VaryingShapesEval(), _batch_sharding()
  mean_pixel = jax.jit(lambda b: {'mean': b['image'].mean((1, 2, 3)), '_mask': b['_mask']})
  taken_at_step = []

  def eval_step(state, batch):
    assert all(isinstance(x, jax.Array) and x.sharding == batch_sharding
               for x in batch.values())  # Copied before the step asks for it.
    taken_at_step.append(task.source.taken)
    return mean_pixel(batch)

  writer = _RecordingWriter()
  evals = evaluation.BackgroundEvaluation(task, eval_step, batch_sharding, writer,
                                          prefetch_size=size)
  evals.start(7, state=None)
  evals.write_finished(wait=True)
  evals.close()
  # Step t runs with batches t+1 .. t+size-1 on the devices too, never more; none past the end.
  ahead = max(size, 1)
  assert taken_at_step == [min(t + ahead - 1, 6) for t in range(1, 7)]  # Step t (from 1).
  means = np.concatenate([b['image'].mean((1, 2, 3))[b['_mask'].astype(bool)] for b in task.host])
  assert writer.scalars[7]['eval_num_examples'] == 43
  assert writer.scalars[7]['eval_mean_pixel'] == pytest.approx(means.mean(), rel=1e-5)


def test_an_error_reading_an_eval_batch_ahead_is_raised_in_its_turn():
  task, steps = _VaryingShapesEval(fail_after=2), []
  with pytest.raises(UserError, match='image 17 does not decode'):
    evaluation.evaluate(task, lambda state, batch: steps.append(batch), None, _batch_sharding(),
                        prefetch_size=3)
  assert len(steps) == 2  # Both batches read before the failure were still scored.
