"""scripts/input_benchmark.py runs each recipe's own train input on the JPEGs it writes (a few
images; the figures for the README come from full runs)."""

import importlib.util
import os
import re

import numpy as np
from PIL import Image

from helpers import ROOT

_spec = importlib.util.spec_from_file_location(
    'input_benchmark', os.path.join(ROOT, 'scripts', 'input_benchmark.py'))
input_benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(input_benchmark)


def test_vit_recipes_give_their_crops_from_the_written_jpegs(tmp_path):
  results = input_benchmark.run('vit', images=4, batch=2, seconds=0, data_dir=str(tmp_path),
                                warmup_batches=1, min_batches=1)
  assert [r.recipe.config for r in results] == ['vit_b16_i21k.py',
                                                'vit_finetune.py:b16,imagenet2012']
  assert [r.shapes['image'] for r in results] == [(2, 224, 224, 3), (2, 384, 384, 3)]
  for r in results:
    assert r.images == 2 and r.per_cpu_second > 0 and r.per_second > 0
  written = sorted(os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files)
  assert len(written) == 4  # Both rows read the same 500x375 files.
  with Image.open(written[0]) as image:
    assert image.format == 'JPEG' and image.size == (500, 375)
    assert np.asarray(image).std() > 20  # A photo, not a flat picture.


def test_detr_command_prints_its_row_at_coco_sizes(capsys):
  input_benchmark.main(['--task=detr', '--images=2', '--batch=1', '--seconds=0'])
  out = capsys.readouterr().out
  row = re.search(r'DETR-R50 COCO.*: ([\d.]+) images per CPU-second, ([\d.]+) images/s wall; '
                  r'2 images of 640x480 JPEG -> image \((\d+), (\d+), 3\)', out)
  assert row and float(row.group(1)) > 0, out
  # Short side 480..800 (or a crop), long side at most 1333, in a padded (bucket) canvas.
  assert 480 <= min(int(row.group(3)), int(row.group(4))), out


def test_deit_row_mixes_the_batch_into_target_distributions():
  results = input_benchmark.run('deit', images=2, batch=2, seconds=0, warmup_batches=1,
                                min_batches=1)
  assert [r.recipe.config for r in results] == ['deit.py:B']
  assert results[0].shapes == {'image': (2, 224, 224, 3), 'label': (2, 1000)}
  assert results[0].per_cpu_second > 0
