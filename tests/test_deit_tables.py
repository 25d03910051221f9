"""The DeiT paper's tables for scripts/reproduce.py (vit_jax/classification/deit_tables.py):
listed, every row's config builds its model, released rows evaluate a timm-layout .pth (each
head of a distilled model on its own), the rest say why they are empty."""

import os
import runpy

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
import torch

from helpers import ROOT
from vit_jax.classification import deit, deit_tables, vit_weights
from vit_jax.framework import reproduce
from vit_jax.framework import registry
from vit_jax.framework.errors import UserError

CONFIGS = os.path.join(ROOT, 'configs')
TINY_DEIT = (('model.variant', None), ('model.patch_size', 8), ('model.hidden_size', 8),
             ('model.num_layers', 1), ('model.num_heads', 1), ('model.mlp_dim', 8),
             ('input.image_size', 16), ('input.eval_batch_size', 8))


def by_name(results):
  return {r.row.name: r for r in results}


def test_tables_are_listed_and_every_row_config_builds(capsys):
  script = runpy.run_path(os.path.join(ROOT, 'scripts', 'reproduce.py'))
  assert script['main'](['--list']) == 0
  listed = capsys.readouterr().out
  assert all(name in listed for name in deit_tables.TABLES)
  assert sorted(deit_tables.RELEASED) == sorted(deit.RELEASES)
  for name, (_, file) in deit_tables.RELEASED.items():
    assert file.startswith(deit.RELEASES[name].timm_name + '-')  # The release's own file.

  built = {}
  for table in deit_tables.TABLES.values():
    assert len({row.name for row in table.rows}) == len(table.rows)
    for row in table.rows:
      if not row.config or (row.config, row.protocol) in built:
        continue
      config = reproduce.row_config(row, reproduce.Sources(CONFIGS))
      task = registry.make_task(config)
      assert task.model.distilled == ('distilled=true' in row.config)
      assert config.input.image_size == (384 if 'finetune_384=true' in row.config else 224)
      assert task.model.distilled_eval == dict(row.protocol).get('model.distilled_eval', 'mean')
      built[row.config, row.protocol] = task
  tiny = deit.build_deit(dict(patch_size=8, hidden_size=8, num_layers=1, num_heads=1, mlp_dim=8,
                              num_classes=3, distilled=True, distilled_eval='both'))
  with pytest.raises(UserError, match="unknown distilled_eval 'both': use mean | head"):
    tiny.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32))
  distillation = {config: task.distillation for (config, _), task in built.items()}
  assert distillation['deit.py:Ti,distillation=soft'] == 'soft'
  assert built['deit.py:Ti,distillation=soft', ()].config.distillation_tau == 3.0
  assert distillation['deit.py:S,distillation=hard'] == 'hard'
  assert distillation['deit.py:B,distilled=true'] == 'hard'
  assert distillation['deit.py:B'] == 'none'


def test_variants_count_the_parameters():
  results = by_name(reproduce.fill(deit_tables.TABLES['deit-variants'],
                                   reproduce.Sources(CONFIGS)))
  # reference/deit.md §1.2: 5,717,416, 22,050,664 and 86,567,656 for 1000 classes.
  assert results['DeiT-Ti params (M)'].ours == pytest.approx(5.717416)
  assert results['DeiT-S params (M)'].ours == pytest.approx(22.050664)
  assert results['DeiT-B params (M)'].ours == pytest.approx(86.567656)
  assert results['DeiT-B params (M)'].difference == pytest.approx(0.567656)


def _distilled_pth(task, path, head: tuple[int, float], head_dist: tuple[int, float]):
  """Random params of `task`'s distilled model in timm's layout at `path`, as DeiT released
  them ({'model': state_dict}); each head always predicts its (class, with this logit)."""
  rng = np.random.default_rng(0)
  params = reproduce.abstract_variables(
      task, lambda x: (0.1 * rng.standard_normal(x.shape)).astype(x.dtype))['params']
  for name, (c, logit) in (('head', head), ('head_dist', head_dist)):
    params[name]['kernel'] = np.zeros_like(params[name]['kernel'])
    params[name]['bias'] = np.where(np.arange(1000) == c, logit, 0.0).astype(np.float32)
  state = {k: torch.from_numpy(np.ascontiguousarray(v))
           for k, v in vit_weights.to_timm(params).items()}
  torch.save({'model': state, 'epoch': 299}, path)


def test_distillation_ablation_reads_each_head_of_the_release(tmp_path):
  """The class-embedding and distil.-embedding rows score one head each of the same release,
  class+distillation the mean of their logits (the higher one-hot logit wins)."""
  table = deit_tables.TABLES['deit-distillation']
  sources = reproduce.Sources(CONFIGS, weights_dir=str(tmp_path), workdirs=str(tmp_path / 'runs'),
                              overrides=TINY_DEIT)
  rows = {r.name: r for r in table.rows}
  row = rows['DeiT-Ti distilled: class embedding']
  with tfds.testing.mock_data(num_examples=12):
    labels = np.array([int(ex['label']) for ex in tfds.builder('imagenet2012').as_dataset(
        split='validation')])
    seen, unseen = labels[0], next(c for c in range(1000) if c not in labels)
    task = registry.make_task(reproduce.row_config(row, sources))
    _distilled_pth(task, tmp_path / row.how.file, (seen, 50.0), (unseen, 60.0))
    results = by_name(reproduce.fill(table, sources))
    _distilled_pth(task, tmp_path / row.how.file, (seen, 60.0), (unseen, 50.0))
    mean_by_head = reproduce.fill_row(table, rows['DeiT-Ti distilled: class+distillation'],
                                      sources)

  accuracy = 100 * np.mean(labels == seen)
  assert accuracy > 0
  assert results['DeiT-Ti distilled: class embedding'].ours == pytest.approx(accuracy)
  assert results['DeiT-Ti distilled: distil. embedding'].ours == 0
  mean = results['DeiT-Ti distilled: class+distillation']
  assert mean.ours == 0 and mean.difference == pytest.approx(-74.5)  # head_dist's 60 wins.
  assert mean_by_head.ours == pytest.approx(accuracy)  # Now head's 60 wins.

  assert results['DeiT-S distilled: class embedding'].reason == (
      f'no weights at {tmp_path}/deit_small_distilled_patch16_224-649709d9.pth (published at '
      'https://dl.fbaipublicfiles.com/deit/deit_small_distilled_patch16_224-649709d9.pth)')
  assert results['DeiT-Ti usual distillation (soft)'].reason == (
      f'no workdir: {tmp_path}/runs/deit_ti_soft/final_metrics.json does not exist; train it: '
      f'python -m vit_jax.main --config=configs/deit.py:Ti,distillation=soft '
      f'--workdir={tmp_path}/runs/deit_ti_soft')
  assert results['DeiT-B-384 distilled: class+distillation'].reason.endswith(
      'deit.py:B,distilled=true,finetune_384=true --workdir='
      f'{tmp_path}/runs/deit_b_distilled_384')
  assert results['DeiT-B-384 distilled: class embedding'].reason.startswith(
      'not released: the 300-epoch DeiT-B-distilled 384')
  assert all(r.reason and '\n' not in r.reason for r in results.values() if r.ours is None)


def test_teacher_and_transfer_rows_say_why():
  sources = reproduce.Sources(CONFIGS)
  teachers = by_name(reproduce.fill(deit_tables.TABLES['deit-teachers'], sources))
  assert len(teachers) == 15
  assert teachers['teacher DeiT-B top-1'].reason.startswith('no weights: pass --weights_dir')
  assert teachers['student DeiT-B-distilled 384 (teacher RegNetY-16GF) top-1'].row.paper == 84.2
  assert teachers['teacher RegNetY-16GF top-1'].reason.startswith(
      'not reproducible here: the teacher RegNetY-16GF')
  assert 'WORKDIRS/deit_b_distilled_teacher_deit_b' in teachers[
      'student DeiT-B-distilled 224 (teacher DeiT-B) top-1'].reason

  transfer = by_name(reproduce.fill(deit_tables.TABLES['deit-transfer'], sources))
  assert transfer['DeiT-B-384 iNat-18'].row.paper == 79.5
  assert transfer['DeiT-B-384 iNat-18'].reason.startswith('not reproducible here yet')
  assert transfer['DeiT-B images/s (paper: V100)'].reason.startswith('not timed: pass --speed')
  assert transfer['ViT-B/16 ImageNet'].reason.startswith('not reproducible here: the ImageNet-1k')
  assert 'ResNet-152 CIFAR-10' not in transfer  # The paper prints "-".
  assert transfer['DeiT-B-384-distilled top-1'].row.how == reproduce.Training(
      'deit_b_distilled_384')
