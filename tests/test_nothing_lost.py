"""Nothing lost, round two (issue #30): each fault ends in one line, the process exits, the lock
is released and a rejected start leaves the workdir as it was. Run as the user would:
subprocesses where the failure shows at exit or on the console, in-process on the UserError
otherwise."""

import dataclasses
import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from PIL import Image

from helpers import ROOT, assert_one_line_error, load_config, run_module, tiny_digits_config
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import checkpoint, logs, reproduce, train
from vit_jax.framework.errors import UserError


def _folder_segmentation(root, train_label, size=(96, 96), count=16):
  """images/ and annotations/ for 'training' (`count` pairs, labels from `train_label(rng)`)
  and 'validation' (2 clean pairs)."""
  rng = np.random.default_rng(0)
  for split, n in (('training', count), ('validation', 2)):
    for folder in ('images', 'annotations'):
      os.makedirs(os.path.join(root, folder, split))
    for i in range(n):
      Image.fromarray(rng.integers(0, 256, size + (3,), np.uint8)).save(
          os.path.join(root, 'images', split, f'{i}.png'))
      label = train_label(rng) if split == 'training' else rng.integers(0, 4, size)
      Image.fromarray(label.astype(np.uint8)).save(
          os.path.join(root, 'annotations', split, f'{i}.png'))


def _listing(workdir):
  return sorted(os.path.relpath(os.path.join(d, f), workdir)
                for d, _, files in os.walk(workdir) for f in files)


@pytest.mark.slow
def test_training_label_out_of_range_ends_the_process_and_frees_the_lock(tmp_path):
  """The label is checked on the host while tf.data reads ahead through numpy_function: the
  process used to hang at exit in the iterator's destructor (1 run in 2), holding run.lock."""
  def half_sevens(rng):
    label = rng.integers(0, 4, (96, 96))
    label[:, 48:] = 7  # Neither a class (0..3) nor 255, in every crop.
    return label
  _folder_segmentation(str(tmp_path / 'data'), half_sevens)
  workdir = str(tmp_path / 'run')
  result = run_module([
      'segmenter_jax.main', '--config=configs/segmenter_shapes.py', f'--workdir={workdir}',
      '--config.input.source=folder', f'--config.input.data_dir={tmp_path / "data"}',
      '--config.input.train_split=training', '--config.input.eval_split=validation',
      '--config.input.batch_size=8', '--config.input.eval_batch_size=2',
      '--config.model.hidden_size=16', '--config.model.num_layers=1', '--config.model.num_heads=1',
      '--config.model.mlp_dim=32', '--config.total_steps=3', '--config.draw_examples=0',
      '--compilation_cache='], timeout=300)  # A hang is a TimeoutExpired.
  assert_one_line_error(result, 'label value 7 is neither a class (0..3) nor the ignore index '
                        '255', 'config.model.num_classes')
  with open(os.path.join(workdir, 'run.lock')) as lock:
    assert lock.read() == ''  # Emptied: the run ended through its lock's release.
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # And nobody holds it.
  assert not os.listdir(os.path.join(workdir, 'checkpoints'))


def test_training_label_map_of_another_size_is_an_error(tmp_path):
  def short(rng):
    return rng.integers(0, 4, (30, 40))  # The images are 40 x 40.
  _folder_segmentation(str(tmp_path), short, size=(40, 40), count=2)
  config = load_config('segmenter_shapes')
  config.input.update(source='folder', data_dir=str(tmp_path), train_split='training',
                      eval_split='validation', batch_size=2)
  from segmenter_jax import segmentation
  with pytest.raises(UserError, match=r"^reading split 'training' failed: label map and image "
                                      r'differ in size \(30 40 vs 40 40\)$'):
    next(segmentation.SegmentationTask(config).train_input(0))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished tiny digits run with one checkpoint (step 6)."""
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  config = tiny_digits_config(keep_checkpoints=1)
  train.train_and_evaluate(config, workdir, ClassificationTask(config))
  return workdir


@pytest.mark.slow
def test_rejected_resume_leaves_config_and_events_as_they_were(trained, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained, workdir)
  before = _listing(workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    config_json = f.read()
  wider = tiny_digits_config(keep_checkpoints=1, total_steps=9, **{'model.mlp_dim': 96})
  with pytest.raises(UserError, match='checkpoint 6 in .* does not fit the config'):
    train.train_and_evaluate(wider, workdir, ClassificationTask(wider))
  assert _listing(workdir) == before  # No new events file; checkpoints untouched.
  with open(os.path.join(workdir, 'config.json')) as f:
    assert f.read() == config_json  # The config the checkpoint was written with.


@pytest.mark.slow
def test_only_checkpoint_unreadable_stops_and_says_how_to_start_over(trained, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained, workdir)
  for folder, _, files in os.walk(os.path.join(workdir, 'checkpoints', '6', 'state')):
    for name in files:
      if os.sep + 'd' == folder[-2:]:  # The arrays' data cut short, as a kill would.
        with open(os.path.join(folder, name), 'r+b') as f:
          f.truncate(7)
  before = _listing(workdir)
  overrides = {'model.hidden_size': 32, 'model.num_layers': 1, 'model.num_heads': 4,
               'model.mlp_dim': 64, 'input.batch_size': 32, 'input.eval_batch_size': 64,
               'total_steps': 6, 'checkpoint_every': 3, 'keep_checkpoints': 1}
  result = run_module(['vit_jax.main', '--config=configs/vit_digits.py', f'--workdir={workdir}',
                       '--compilation_cache='] + [f'--config.{k}={v}' for k, v in
                                                  overrides.items()], timeout=300)
  assert_one_line_error(result, 'no checkpoint in', 'reads back (6: ',
                        'to start over at step 1, move', '--workdir')
  assert 'Exception ignored' not in result.stderr  # No traceback per abandoned array read.
  assert _listing(workdir) == before  # Nothing renamed, no new config or events file.


def test_pytorch_file_as_vit_npz_is_one_line(tmp_path):
  config = tiny_digits_config()
  task = ClassificationTask(config)
  fresh = jax.device_get(nn.meta.unbox(task.init_variables(jax.random.PRNGKey(0)))['params'])
  path = str(tmp_path / 'ViT-B_16.npz')  # A torch.save file under an .npz name.
  torch.save({'model': {'head.weight': torch.zeros(10, 32)}}, path)
  with pytest.raises(UserError, match=r"^cannot read checkpoint '.*ViT-B_16.npz': it is a PyTorch "
                                      r'file \(torch.save\), not an .npz: give it a .pth name'):
    task.pretrained_params(fresh, path)
  # A URL that cannot be read (no network, no access) points at a local copy.
  with pytest.raises(UserError, match='download it and pass its local path instead, e.g. '
                                      '--config.init_from='):
    task.pretrained_params(fresh, 'memory://nowhere/ViT-B_16.npz')


def test_full_disk_while_checkpointing_is_one_line_and_cleans_up(tmp_path, monkeypatch):
  """tensorstore writes from C++: its ENOSPC is simulated where orbax hands it back. (By hand,
  on a 100 kB tmpfs, the tiny digits run ends the same way, exit 2, 27 lines in all.)"""
  directory = str(tmp_path / 'checkpoints')
  saver = checkpoint.Checkpointer(directory, every_steps=1, keep=2)
  state = {'w': np.ones((4, 4), np.float32)}
  saver.save(1, state, {'examples_seen': 1})
  saver.wait()

  def full_disk(self, step, *args, **kwargs):
    os.makedirs(os.path.join(directory, f'{step}.orbax-checkpoint-tmp', 'state'))
    raise ValueError('RESOURCE_EXHAUSTED: Error writing "w/0": Failed to write 2714 bytes: '
                     "No space left on device [os_error_code='28']") from OSError(
                         errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_disk)
  with pytest.raises(UserError, match=r'^the disk is full: a checkpoint could not be written to '
                                      r'.*partial files were removed.*continues from checkpoint 1'):
    saver.save(2, state, {'examples_seen': 2})
  saver.close()
  assert os.listdir(directory) == ['1']


@pytest.mark.slow  # fit_report imports JAX and the tasks before it reads its flags.
def test_help_lists_the_flags_and_exits_0():
  result = run_module(['vit_jax.main', '--help'], timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  for flag in ('--config', '--workdir', '--compilation_cache', '--distributed',
               '--config.KEY=VALUE'):
    assert f'\n  {flag}' in result.stdout, flag
  report = subprocess.run([sys.executable, 'scripts/fit_report.py', '--help'], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert report.returncode == 0, report.stderr[-2000:]
  for flag in ('--config', '--topology', '--num_slices', '--json'):
    assert f'\n  {flag}' in report.stdout, flag
  assert '--workdir' not in report.stdout


def test_config_error_comes_before_the_heavy_imports(workdir):
  result = run_module(['vit_jax.main', '--config=configs/vit_digits.py', f'--workdir={workdir}',
                       '--config.optim.lrr=1'], env={'PYTHONPROFILEIMPORTTIME': '1'},
                      timeout=120)
  *imports, last = result.stderr.strip().splitlines()
  assert result.returncode == 2 and last.startswith('error: unknown config key')
  imported = {line.split('|')[-1].strip() for line in imports if line.startswith('import time')}
  assert 'vit_jax.framework.cli' in imported
  assert not imported & {'jax', 'tensorflow', 'flax', 'numpy'}


def _largest_update(optim_config) -> float:
  from vit_jax.framework import optim
  tx, _ = optim.make_optimizer(optim_config, 10)
  params = {'w': np.zeros(3, np.float32)}
  update, _ = tx.update({'w': np.full(3, 1e3, np.float32)}, tx.init(params), params)
  return float(np.abs(update['w']).max())


def test_grad_clip_norm_none_turns_clipping_off():
  # Overrides become flags at a process's first parse: in a subprocess, as a user runs it.
  script = ('import sys\n'
            'from vit_jax.framework import cli\n'
            'cli.parse_flags(sys.argv)\n'
            'print(cli.loaded_config().optim.to_json())\n')
  result = subprocess.run([sys.executable, '-c', script, '--config=configs/vit_digits.py',
                           '--workdir=unused', '--config.optim.grad_clip_norm=None'],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  off = ml_collections.ConfigDict(json.loads(result.stdout))
  clipped = load_config('vit_digits').optim
  assert off.grad_clip_norm is None and clipped.grad_clip_norm == 1.0
  # A gradient of norm 1e3 sqrt(3): clipped to norm 1, or left as it is.
  assert _largest_update(off) == pytest.approx(1e3 * np.sqrt(3) * _largest_update(clipped),
                                               rel=1e-4)


def test_pycocotools_text_goes_to_the_log_file_only(capsys, caplog):
  from detr_jax import coco_eval
  ground_truth = {'images': [{'id': 1, 'height': 100, 'width': 100}],
                  'annotations': [{'id': 1, 'image_id': 1, 'category_id': 1, 'area': 400.0,
                                   'bbox': [10.0, 10.0, 20.0, 20.0], 'iscrowd': 0}],
                  'categories': [{'id': 1}]}
  evaluator = coco_eval.CocoEvaluator(ground_truth, [1])
  logits = np.array([[[5.0, -5.0]]], np.float32)  # One query: class 0 (category 1), confident.
  boxes = np.array([[[0.2, 0.2, 0.2, 0.2]]], np.float32)  # cx, cy, w, h: the box exactly.
  evaluator.update({'logits': logits, 'boxes': boxes, 'image_id': np.array([1]),
                    'orig_size': np.array([[100, 100]]), '_mask': np.array([1])})
  with caplog.at_level(logging.INFO):
    assert evaluator.result()['AP'] == pytest.approx(1.0)
  assert capsys.readouterr().out == ''
  (record,) = [r for r in caplog.records if r.getMessage().startswith('pycocotools')]
  assert 'Average Precision' in record.getMessage() and not logs.for_console(record)


def test_missing_weights_say_so_once_per_model():
  from detr_jax import paper_tables
  table = paper_tables.TABLES['detr-table1']
  rows = tuple(r for r in table.rows if r.name.split(' ')[0] == 'DETR-R101'
               and isinstance(r.how, reproduce.Weights))
  table = dataclasses.replace(table, rows=rows)
  text = reproduce.as_text(table, reproduce.fill(table, reproduce.Sources(
      os.path.join(ROOT, 'configs'))))
  reasons = [line for line in text.splitlines() if 'no weights' in line]
  assert reasons == ['DETR-R101 AP, AP50, AP75, APS, APM, APL: no weights: pass '
                     '--weights_dir=DIR with detr-r101-2c7b67e5.pth in it (published at '
                     'https://dl.fbaipublicfiles.com/detr/detr-r101-2c7b67e5.pth)']
  assert 'WEIGHTS_DIR' not in text
