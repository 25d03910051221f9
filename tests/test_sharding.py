"""Data parallel, FSDP and tensor parallel on 8 CPU devices: the same loss trajectory as one
device, and parameters laid out as the rules say."""

import json
import os
import subprocess
import sys

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT, assert_one_line_error, multihost_env, run_module
from vit_jax.classification import vit
from vit_jax.framework import sharding
from vit_jax.framework.errors import UserError

# float32 reductions run in a different order on different meshes; observed differences are
# ~1e-7 relative, the tolerance leaves room for other CPUs.
RTOL = 1e-5


def _run(strategy, workdir, devices):
  env = multihost_env(devices)
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'mesh_run.py'), strategy,
                           workdir], env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def single_device(tmp_path_factory):
  return _run('single', str(tmp_path_factory.mktemp('single')), devices=1)


MLP_IN = 'Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel'  # (32, 64): embed x mlp
QUERY = 'Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel'  # (32, 4, 8)


@pytest.mark.slow
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


def _fsdp_memory(model):
  env = multihost_env(8)
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'fsdp_memory_run.py'),
                           model], env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  sizes = json.loads(result.stdout.strip().splitlines()[-1])
  assert sizes['devices'] == 8
  # What scripts/sharding_report.py computes from shapes is what device 0 really holds.
  assert sizes['device0_param_bytes'] == sizes['predicted_param_bytes']
  return sizes


@pytest.mark.slow
def test_fsdp_divides_parameter_bytes_by_device_count():
  sizes = _fsdp_memory('vit')
  # 1/8 of ViT-S/16, plus the few small vectors FSDP leaves replicated (LayerNorms, q/k/v biases).
  assert sizes['device0_param_bytes'] < sizes['total_param_bytes'] / 8 * 1.02
  # The momentum (SGD, bfloat16 accumulator) is sharded the same way: half the bytes.
  assert sizes['device0_momentum_bytes'] == pytest.approx(sizes['device0_param_bytes'] / 2,
                                                          rel=0.01)


@pytest.mark.slow
def test_fsdp_shards_detr_backbone_convolutions():
  sizes = _fsdp_memory('detr')
  kernels = {name: spec for name, spec in sizes['specs'].items()
             if name.startswith('backbone/') and name.endswith('/kernel')}
  # ResNet-50: the stem, 16 bottlenecks of 3 convolutions, 4 downsampling shortcuts.
  assert len(kernels) == 1 + 16 * 3 + 4
  assert set(kernels.values()) == {"P(None, None, None, 'data')"}  # Output channels split.
  # What FSDP shards is 1/8 per device, and it is all but the biases and norms (0.13%).
  assert sizes['device0_sharded_param_bytes'] * 8 == sizes['sharded_param_bytes']
  assert sizes['sharded_param_bytes'] > 0.998 * sizes['total_param_bytes']
  assert sizes['device0_param_bytes'] < sizes['total_param_bytes'] / 8 * 1.02


def test_hybrid_stem_convolutions_carry_channel_axis_names():
  model = vit.build_vit(dict(variant='R+Ti/16', num_classes=10, num_layers=1))
  specs = flax.linen.get_partition_spec(
      jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))['params']
  conv = jax.sharding.PartitionSpec(None, None, 'conv_in', 'conv_out')
  assert specs['conv_root']['kernel'] == conv
  fsdp = (('batch', 'data'), ('embed', 'data'), ('conv_out', 'data'))
  assert flax.linen.logical_to_mesh_axes(specs['conv_root']['kernel'], fsdp) == \
      jax.sharding.PartitionSpec(None, None, None, 'data')


MISSPELT_RULES = (('batch', 'data'), ('embd', 'data'))


def test_rule_for_an_axis_the_model_does_not_have_is_an_error():
  model = vit.VisionTransformer(num_classes=10, patch_size=4, hidden_size=32, num_layers=1,
                                   num_heads=4, mlp_dim=64)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
  mesh = sharding.make_mesh((('data', -1),))
  sharding.variable_shardings(abstract, mesh, (('batch', 'data'), ('embed', 'data')))
  with pytest.raises(UserError, match=r"names the logical axis 'embd', which this model does "
                                      r"not have: use one of \['act_embed', 'batch', 'classes', "
                                      r"'embed', 'heads', 'kv', 'length', 'mlp'\]"):
    sharding.variable_shardings(abstract, mesh, MISSPELT_RULES)


@pytest.mark.slow
def test_misspelt_rule_from_the_command_line_is_one_line(workdir):
  result = run_module(['vit_jax.main', '--config=configs/vit_digits.py', f'--workdir={workdir}',
                       f'--config.sharding_rules={MISSPELT_RULES}'], timeout=300)
  assert_one_line_error(result, "('embd', 'data')", "'embed'", 'config.sharding_rules')
