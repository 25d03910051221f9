"""Durations in steps or epochs become the loop's step counts; a recipe in epochs follows the
batch size."""

import ml_collections
import pytest

from vit_jax.framework import durations
from vit_jax.framework.errors import UserError

COCO_TRAIN = 118_287


def _config(batch_size=64, **fields):
  config = ml_collections.ConfigDict(dict(input=dict(batch_size=batch_size)))
  config.update(fields)
  return config


@pytest.mark.parametrize('batch_size, total, eval_every, checkpoint_every', [
    (64, 924_118, 18_483, 1849), (128, 462_059, 9242, 925)])
def test_epochs_become_steps_for_the_batch_size(batch_size, total, eval_every, checkpoint_every):
  # DETR's recipe: 500 epochs, an eval every 10, a checkpoint every epoch.
  config = _config(batch_size, total_epochs=500, eval_every_epochs=10, checkpoint_every_epochs=1)
  steps = durations.resolve(config, COCO_TRAIN)
  assert (steps.total, steps.eval_every, steps.checkpoint_every) == (
      total, eval_every, checkpoint_every)


def test_steps_stay_steps_whatever_the_example_count():
  steps = durations.resolve(_config(total_steps=1500, eval_every=500, checkpoint_every=250), 7)
  assert (steps.total, steps.eval_every, steps.checkpoint_every) == (1500, 500, 250)


@pytest.mark.parametrize('fields, message', [
    (dict(total_steps=10, total_epochs=1, eval_every=5, checkpoint_every=5),
     'config.total_steps and config.total_epochs are both set'),
    (dict(eval_every=5, checkpoint_every=5), 'set config.total_steps or config.total_epochs'),
    (dict(total_steps=10, eval_every=0, checkpoint_every=5), 'must give at least 1 step'),
])
def test_duration_mistakes_are_one_line(fields, message):
  with pytest.raises(UserError, match=message):
    durations.resolve(_config(**fields), 100)
