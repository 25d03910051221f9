"""DETR as a task of the shared loop: the main job end to end, and the errors users hit."""

import json
import os

import pytest

from helpers import assert_prediction_pictures, load_config, run_module


def _tiny_shapes_args(workdir, *extra):
  return ['detr_jax.main', '--config=configs/detr_shapes.py', f'--workdir={workdir}',
          '--config.total_steps=4', '--config.eval_every=4', '--config.checkpoint_every=4',
          '--config.log_every=2', '--config.input.shapes.num_train=64',
          '--config.input.shapes.num_eval=40', '--config.input.batch_size=16',
          '--config.input.eval_batch_size=16', *extra]


@pytest.mark.slow
def test_main_job_trains_and_scores_every_eval_image(workdir):
  result = run_module(_tiny_shapes_args(workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    metrics = json.load(f)
  assert metrics['step'] == 4
  assert set(metrics) >= {'AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large'}
  assert 0 <= metrics['AP50'] <= 1
  assert 'Final eval: AP=' in result.stdout
  assert 'train_class_error' in result.stderr  # The original's logged errors.
  assert_prediction_pictures(workdir, steps=[4])  # Boxes with names and scores.


@pytest.mark.slow
def test_too_few_classes_is_a_one_line_error(workdir):
  result = run_module(_tiny_shapes_args(workdir, '--config.model.num_classes=2'))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: the 'train' data has labels 0..2 but config.model.num_classes is 2: set "
      '--config.model.num_classes=3 (the largest label + 1; DETR adds the no-object class '
      'itself)')


@pytest.mark.slow
def test_coco_recipe_without_coco_says_how_to_get_it(workdir, tmp_path):
  result = run_module(['detr_jax.main', '--config=configs/detr_coco.py:r50,epochs=300',
                       f'--workdir={workdir}', f'--config.input.data_dir={tmp_path}'])
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: dataset 'coco/2017'") and 'tfds build coco/2017' in last


@pytest.mark.parametrize('arg, depth, dilation, epochs, drop', [
    ('r50', 50, False, 500, 400), ('dc5_r101,epochs=300', 101, True, 300, 200)])
def test_coco_configs_are_the_paper_recipe(arg, depth, dilation, epochs, drop):
  config = load_config('detr_coco', arg)
  assert (config.model.backbone_depth, config.model.dilation) == (depth, dilation)
  assert (config.total_epochs, config.optim.schedule.boundary_epochs) == (epochs, (drop,))
  assert (config.optim.lr, config.optim.weight_decay, config.optim.grad_clip_norm) == (
      1e-4, 1e-4, 0.1)
  assert config.input.batch_size == 64 and config.model.num_classes == 91
