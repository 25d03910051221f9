"""detr_jax/convergence.py and scripts/detr_convergence.py: AP50 curves read from a run's events,
the seeds' table with equal-time AP50, and the side-by-side picture."""

import os
import sys

import numpy as np
import pytest

from detr_jax import convergence
from vit_jax.framework import drawing
from vit_jax.framework.errors import UserError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'scripts'))
import detr_convergence  # noqa: E402


DETR = [{1000: 0.1, 2000: 0.3}, {1000: 0.2, 2000: 0.5}]
DEFORMABLE = [{1000: 0.6, 2000: 0.9}, {1000: 0.7, 2000: 0.8}]
SECONDS_PER_STEP = {'DETR': 0.06, 'Deformable DETR': 0.15}


def test_the_eval_and_checkpoint_reached_in_time():
  assert convergence.ap50_within(DETR[0], 119.0, 0.06) == (1000, 0.1)
  assert convergence.ap50_within(DETR[0], 120.0, 0.06) == (2000, 0.3)
  assert convergence.ap50_within(DETR[0], 50.0, 0.06) == (0, 0.0)
  assert convergence.last_step_within(150.0, 0.1, [500, 1000, 2000]) == 1000
  assert convergence.last_step_within(10.0, 0.1, [1000, 2000]) is None


def test_table_gives_mean_spread_worst_seed_and_equal_time_ap50():
  text = convergence.table({'DETR': DETR, 'Deformable DETR': DEFORMABLE}, SECONDS_PER_STEP)
  lines = text.splitlines()
  # Step 2000: DETR 0.3 and 0.5 (mean 0.4, sample std 0.1414) in 2000 x 0.06 s = 2.0 min.
  assert lines[3] == ('| 2000 | 0.400 ± 0.141 (min 0.300) | 2.0 | 0.850 ± 0.071 (min 0.800) '
                      '| 5.0 |')
  # DETR's 120 s reach Deformable DETR's step 1000 (150 s) in neither seed.
  assert ("Within DETR's 2000 steps (2.0 min), Deformable DETR reaches AP50 0.000 ± 0.000 "
          "(min 0.000) (step 0, 0).") in lines
  assert ("Within Deformable DETR's 2000 steps (5.0 min), DETR reaches AP50 0.400 ± 0.141 "
          "(min 0.300) (step 2000, 2000).") in lines


def test_read_curve_from_the_loops_events(tmp_path):
  from clu import metric_writers
  writer = metric_writers.SummaryWriter(str(tmp_path))
  writer.write_scalars(100, {'train_loss': 0.5})
  writer.write_scalars(200, {'eval_AP50': 0.25, 'eval_AP': 0.1})
  writer.close()
  assert convergence.read_curve(str(tmp_path)) == {200: 0.25}


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
  # By default: each model's best boxes, as many as the image has objects (one here).
  best = convergence.predictions_figure({'unsure': [unsure]}, ['a', 'b', 'c'])
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
  unsure_best = drawing.draw_boxes(plain, found['boxes'][:1] * factor, [1], ['a', 'b', 'c'], [0.3])
  top = best.shape[0] - height
  np.testing.assert_array_equal(best[top:, width + 6:2 * width + 6], unsure_best)


def test_script_rejects_bad_seeds():
  with pytest.raises(SystemExit, match='--seeds=0,x is not a comma-separated list'):
    detr_convergence.main(['--workdir=unused', '--seeds=0,x'])
