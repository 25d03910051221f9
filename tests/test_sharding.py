"""Data parallel, FSDP and tensor parallel on 8 CPU devices: the same loss trajectory as one
device, and parameters laid out as the rules say."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT

# float32 reductions run in a different order on different meshes; observed differences are
# ~1e-7 relative, the tolerance leaves room for other CPUs.
RTOL = 1e-5


def _run(strategy, workdir, devices):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, 'tests')]))
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'mesh_run.py'), strategy,
                           workdir], env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def single_device(tmp_path_factory):
  return _run('single', str(tmp_path_factory.mktemp('single')), devices=1)


MLP_IN = 'Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel'  # (32, 64): embed x mlp
QUERY = 'Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel'  # (32, 4, 8)


@pytest.mark.parametrize('strategy, specs, shard_shapes', [
    ('data_parallel', {MLP_IN: 'P(None, None)', QUERY: 'P(None, None, None)'},
     {MLP_IN: [32, 64], QUERY: [32, 4, 8]}),
    ('fsdp', {MLP_IN: "P('data', None)", QUERY: "P('data', None, None)"},
     {MLP_IN: [4, 64], QUERY: [4, 4, 8]}),
    ('tensor_parallel', {MLP_IN: "P(None, 'model')", QUERY: "P(None, 'model', None)"},
     {MLP_IN: [32, 32], QUERY: [32, 2, 8]}),
])
def test_strategy_matches_single_device(strategy, specs, shard_shapes, single_device, tmp_path):
  result = _run(strategy, str(tmp_path), devices=8)
  assert result['devices'] == 8
  assert len(result['losses']) == 10
  assert np.ptp(single_device['losses']) > 0.05  # The parameters really move step to step.
  np.testing.assert_allclose(result['losses'], single_device['losses'], rtol=RTOL)
  for name, spec in specs.items():
    assert result['specs'][name] == spec, name
  for name, shape in shard_shapes.items():
    assert result['shard_shapes'][name] == shape, name
  # Adam's first moment is laid out like its parameter.
  assert result['mu_shard_shape'] == shard_shapes[MLP_IN]


def test_fsdp_divides_parameter_bytes_by_device_count():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, 'tests')]))
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'fsdp_memory_run.py')],
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  sizes = json.loads(result.stdout.strip().splitlines()[-1])
  assert sizes['devices'] == 8
  # What scripts/sharding_report.py computes from shapes is what device 0 really holds.
  assert sizes['device0_param_bytes'] == sizes['predicted_param_bytes']
  # 1/8 of ViT-S/16, plus the few small vectors FSDP leaves replicated (LayerNorms, q/k/v biases).
  assert sizes['device0_param_bytes'] < sizes['total_param_bytes'] / 8 * 1.02
  # The momentum (SGD, bfloat16 accumulator) is sharded the same way: half the bytes.
  assert sizes['device0_momentum_bytes'] == pytest.approx(sizes['device0_param_bytes'] / 2,
                                                          rel=0.01)
