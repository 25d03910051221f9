"""DETR panoptic as a task of the shared loop: the offline job end to end, the task choice, and
the paper's two-stage recipe (which parameters each stage trains)."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax import panoptic
from vit_jax.framework import optim, registry
from vit_jax.framework.errors import UserError
from helpers import load_config, run_module


@pytest.mark.slow
def test_shapes_job_trains_and_writes_pq(workdir):
  result = run_module([
      'detr_jax.main', '--config=configs/detr_panoptic_shapes.py', f'--workdir={workdir}',
      '--config.total_steps=3', '--config.eval_every=3', '--config.checkpoint_every=3',
      '--config.log_every=1', '--config.input.shapes.num_train=16',
      '--config.input.shapes.num_eval=12', '--config.input.batch_size=8',
      '--config.input.eval_batch_size=8'])
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    metrics = json.load(f)
  assert metrics['step'] == 3 and metrics['num_examples'] == 12
  for key in ('PQ', 'SQ', 'RQ', 'PQ_th', 'PQ_st'):
    assert 0 <= metrics[key] <= 1, key
  assert (metrics['n_th'], metrics['n_st']) == (3, 2)  # Every class occurs in 12 images.
  assert 'train_loss_dice' in result.stderr and 'train_loss_mask' in result.stderr


def test_the_task_is_chosen_by_config_task():
  config = load_config('detr_panoptic_shapes')
  config.task = 'instance'
  with pytest.raises(UserError, match=r"unknown config.task 'instance': choose one of "
                                      r"\['classification', 'detection', 'panoptic', "
                                      r"'segmentation'\]"):
    registry.make_task(config)
  config.task = 'panoptic'
  assert isinstance(registry.make_task(config), panoptic.PanopticTask)


@pytest.fixture(scope='module')
def shapes_params():
  """Parameters of the small panoptic model, all ones: which ones a stage updates depends on
  their names only (a real init, eager or compiled, took most of this test's time)."""
  task = panoptic.PanopticTask(load_config('detr_panoptic_shapes'))
  abstract = nn.meta.unbox(jax.eval_shape(task.init_variables, jax.random.key(0)))['params']
  return jax.tree.map(lambda p: jnp.ones(p.shape, p.dtype), abstract)


@pytest.mark.slow
@pytest.mark.parametrize('stage, trained, frozen', [
    ('masks', 'mask_head/out_lay/kernel', 'detr/class_embed/kernel'),
    ('boxes', 'detr/class_embed/kernel', 'mask_head/out_lay/kernel')])
def test_each_stage_trains_its_part_only(stage, trained, frozen, shapes_params):
  recipe = load_config('detr_panoptic', f'r50,stage={stage}')
  assert recipe.model.freeze_detr == (stage == 'masks')
  if stage == 'masks':  # 25 epochs, lr drop at 15 (the paper's second stage).
    assert (recipe.total_epochs, recipe.optim.schedule.boundary_epochs) == (25, (15,))
  config = load_config('detr_panoptic_shapes')  # A small model with the recipe's lr_mults.
  config.optim.lr_mults = recipe.optim.lr_mults
  config.optim.schedule.warmup_steps = 0  # A nonzero lr at the first update.
  transform, _ = optim.make_optimizer(config.optim, total_steps=10)
  grads = jax.tree.map(jnp.ones_like, shapes_params)
  updates, _ = jax.jit(transform.update)(grads, transform.init(shapes_params), shapes_params)
  flat = {optim.param_path(path): leaf for path, leaf in
          jax.tree_util.tree_leaves_with_path(updates)}
  assert np.abs(flat[trained]).max() > 0 and not np.abs(flat[frozen]).any()
