"""Deformable DETR as a detection model of the shared loop: the COCO recipe is the paper's, and
the shapes job trains end to end (two-stage: focal loss, encoder proposal loss, top-100 scoring,
drawn predictions)."""

import json
import os
import re

import pytest

from helpers import assert_prediction_pictures, load_config, run_module


@pytest.mark.parametrize('arg, fields', [
    ('deformable', {'num_feature_levels': 4, 'with_box_refine': False, 'two_stage': False}),
    ('single_scale_dc5', {'num_feature_levels': 1, 'dilation': True}),
    ('two_stage', {'with_box_refine': True, 'two_stage': True}),
])
def test_coco_config_is_the_paper_recipe(arg, fields):
  config = load_config('deformable_detr_coco', arg)
  assert (config.task, config.model.name) == ('detection', 'deformable_detr')
  assert {k: config.model.get(k, False) for k in fields} == fields
  assert (config.model.num_queries, config.model.mlp_dim, config.model.dropout_rate) == (
      300, 1024, 0.1)
  assert (config.optim.name, config.optim.lr, config.optim.weight_decay,
          config.optim.grad_clip_norm) == ('adamw', 2e-4, 1e-4, 0.1)
  assert (config.total_epochs, config.optim.schedule.boundary_epochs) == (50, (40,))
  assert config.input.batch_size == 32
  assert (config.loss.class_weight, config.loss.bbox_weight, config.loss.giou_weight,
          config.loss.focal_alpha) == (2.0, 5.0, 2.0, 0.25)

  def multiplier(path):
    return next((m for regex, m in config.optim.lr_mults if re.fullmatch(regex, path)), 1.0)
  assert multiplier('backbone/layer1_0/conv1/kernel') == 0.0  # Frozen, as the original.
  assert multiplier('backbone/layer3_2/conv2/kernel') == 0.1  # 2e-5.
  assert multiplier('encoder/layers_0/self_attn/sampling_offsets/kernel') == 0.1
  assert multiplier('decoder/layers_5/cross_attn/sampling_offsets/bias') == 0.1
  assert multiplier('reference_points/kernel') == 0.1
  assert multiplier('decoder/layers_0/cross_attn/attention_weights/kernel') == 1.0
  assert multiplier('input_proj_3/conv/kernel') == 1.0


@pytest.mark.slow
def test_two_stage_shapes_job_trains_and_scores(workdir):
  result = run_module([
      'detr_jax.main', '--config=configs/deformable_detr_shapes.py', f'--workdir={workdir}',
      '--config.model.with_box_refine=True', '--config.model.two_stage=True',
      '--config.total_steps=2', '--config.eval_every=2', '--config.checkpoint_every=2',
      '--config.log_every=1', '--config.input.shapes.num_train=32',
      '--config.input.shapes.num_eval=20', '--config.input.eval_batch_size=16',
      '--config.draw_examples=2'], timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    metrics = json.load(f)
  assert metrics['step'] == 2 and 0 <= metrics['AP50'] <= 1
  for name in ('train_loss_ce', 'train_loss_ce_enc', 'train_loss_giou_enc'):
    assert name in result.stderr, name
  assert_prediction_pictures(workdir, steps=[2], count=2)
