"""scripts/model_table.py: every variant, exact parameters, GFLOPs against an analytic count."""

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT


def _vit_b16_multiply_adds(image=224, patch=16, width=768, mlp=3072, depth=12, classes=1000):
  """Matmul multiply-adds of ViT-B/16, counted by hand."""
  patches = (image // patch) ** 2
  tokens = patches + 1
  embed = patches * patch * patch * 3 * width
  attention = 4 * tokens * width**2 + 2 * tokens**2 * width  # q, k, v, out + scores, values
  block = attention + 2 * tokens * width * mlp
  return embed + depth * block + width * classes


@pytest.fixture(scope='module')
def table():
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'model_table.py'),
                           '--json'], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=ROOT))
  assert result.returncode == 0, result.stderr[-2000:]
  return {row['model']: row for row in json.loads(result.stdout)}


def test_every_variant_with_exact_params(table):
  expected = {'ViT-Ti/16': 5_717_416, 'ViT-S/16': 22_050_664, 'ViT-S/32': 22_878_952,
              'ViT-B/8': 86_576_872, 'ViT-B/16': 86_567_656, 'ViT-B/32': 88_224_232,
              'ViT-L/16': 304_326_632, 'ViT-L/32': 306_535_400, 'ViT-H/14': 632_045_800,
              'ViT-R+Ti/16': 6_337_704, 'ViT-R26+S/32': 36_431_912,
              'ViT-R26+B/32': 101_383_976, 'ViT-R50+B/16': 98_659_112,
              'ViT-R50+L/32': 328_994_856}
  assert {name: row['params'] for name, row in table.items()} == expected
  assert table['ViT-L/16']['paper_params'] == 307e6  # Shown beside ours (304.3M).
  assert all(row['gflops'] > 0 and row['gflops_384'] > row['gflops'] for row in table.values())


def test_gflops_match_analytic_count(table):
  # XLA also counts element-wise work (softmax, GELU, LayerNorm): within 2% of the matmuls.
  assert table['ViT-B/16']['gflops'] == pytest.approx(_vit_b16_multiply_adds() / 1e9, rel=0.02)
  assert table['ViT-B/16']['gflops_384'] == pytest.approx(
      _vit_b16_multiply_adds(image=384) / 1e9, rel=0.02)
