"""detr_jax/convergence.py and scripts/detr_convergence.py: curves read from a run's events, the
seeds' table with equal-time AP50, and the side-by-side picture."""

import os
import sys

import numpy as np
import pytest

from detr_jax import convergence
from vit_jax.framework import drawing
from vit_jax.framework.errors import UserError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'scripts'))
import detr_convergence  # noqa: E402


def _curve(ap50, seconds):
  return convergence.Curve(ap50, {1: 0.0, **seconds})


DETR = [_curve({1000: 0.1, 2000: 0.3}, {1000: 100.0, 2000: 200.0}),
        _curve({1000: 0.2, 2000: 0.5}, {1000: 110.0, 2000: 220.0})]
DEFORMABLE = [_curve({1000: 0.6, 2000: 0.9}, {1000: 150.0, 2000: 300.0}),
              _curve({1000: 0.7, 2000: 0.8}, {1000: 150.0, 2000: 300.0})]


def test_curve_interpolates_time_and_finds_the_eval_reached_in_time():
  curve = DETR[0]
  assert curve.seconds_at(1500) == pytest.approx(150.0)
  assert curve.ap50_by(199.0) == (1000, 0.1)
  assert curve.ap50_by(50.0) == (0, 0.0)
  assert convergence.checkpoint_within(curve, 150.0, [500, 1000, 2000]) == 1000
  assert convergence.checkpoint_within(curve, 10.0, [1000, 2000]) is None


def test_table_gives_mean_spread_worst_seed_and_equal_time_ap50():
  text = convergence.table({'DETR': DETR, 'Deformable DETR': DEFORMABLE})
  lines = text.splitlines()
  # Step 2000: DETR 0.3 and 0.5 (mean 0.4, sample std 0.1414), 210 s = 3.5 min on average.
  assert lines[3] == ('| 2000 | 0.400 ± 0.141 (min 0.300) | 3.5 | 0.850 ± 0.071 (min 0.800) '
                      '| 5.0 |')
  # DETR's 210 s (mean) reach Deformable DETR's step-1000 evals (150 s) only.
  assert ("Within DETR's 3.5 min (2 runs, mean), Deformable DETR reaches AP50 0.650 ± 0.071 "
          "(min 0.600) at steps 1000, 1000.") in lines
  assert ("Within Deformable DETR's 5.0 min (2 runs, mean), DETR reaches AP50 0.400 ± 0.141 "
          "(min 0.300) at steps 2000, 2000.") in lines


def test_read_curve_from_the_loops_events(tmp_path):
  from clu import metric_writers
  writer = metric_writers.SummaryWriter(str(tmp_path))
  for step in (1, 100, 200):
    writer.write_scalars(step, {'train_loss': 1.0 / step})
  writer.write_scalars(200, {'eval_AP50': 0.25, 'eval_AP': 0.1})
  writer.close()
  curve = convergence.read_curve(str(tmp_path))
  assert curve.ap50 == {200: 0.25}
  assert curve.seconds[1] == 0.0 and 0 <= curve.seconds[100] <= curve.seconds[200] < 60


def test_read_curve_of_an_untrained_workdir_says_so(tmp_path):
  with pytest.raises(UserError, match='no TensorBoard events in .*: train it first'):
    convergence.read_curve(str(tmp_path))


def test_figure_draws_truth_and_only_the_boxes_over_the_threshold():
  pixels = np.full((32, 48, 3), 0.5, np.float32)
  found = dict(pixels=pixels, true_boxes=np.array([[4., 4., 20., 20.]]), true_labels=np.array([1]),
               boxes=np.array([[4., 4., 20., 20.], [10., 10., 30., 30.]]),
               labels=np.array([1, 2]), scores=np.array([0.9, 0.2]))
  unsure = dict(found, scores=np.array([0.3, 0.2]))
  picture = convergence.predictions_figure({'sure': [found, found], 'unsure': [unsure, unsure]},
                                           ['a', 'b', 'c'], threshold=0.5, top_k=10)
  factor = drawing.enlargement(pixels.shape)
  plain = drawing.enlarge(drawing.to_rgb(pixels), factor)
  truth = drawing.draw_boxes(plain, found['true_boxes'] * factor, [1], ['a', 'b', 'c'])
  sure = drawing.draw_boxes(plain, found['boxes'][:1] * factor, [1], ['a', 'b', 'c'], [0.9])
  height, width = plain.shape[:2]
  # Three columns of two images, each under its title; the columns' tops align.
  top = picture.shape[0] - (2 * height + 6)
  columns = [picture[top:top + height, x:x + width]
             for x in (0, width + 6, 2 * (width + 6))]
  np.testing.assert_array_equal(columns[0], truth)
  np.testing.assert_array_equal(columns[1], sure)
  np.testing.assert_array_equal(columns[2], plain)  # Nothing scores 0.5: no box drawn.


def test_script_rejects_bad_seeds():
  with pytest.raises(SystemExit, match='--seeds=0,x is not a comma-separated list'):
    detr_convergence.main(['--workdir=unused', '--seeds=0,x'])
