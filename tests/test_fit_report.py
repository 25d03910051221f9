"""The fit report: a train step compiled for a TPU slice by libtpu's compiler, on a CPU machine.

The compile tests (test_tpu_*) need libtpu and skip without it. The project's test venv does
not carry it (every jax process that finds libtpu loads it), so .ci/run runs them in a second
step with libtpu on PYTHONPATH only (pip install --target, inside .venv); locally the same:
  pip install --target .venv/libtpu "libtpu==0.0.42.*"
  PYTHONPATH=.venv/libtpu python -m pytest -q tests/test_fit_report.py -k tpu
"""

import importlib.util
import inspect
import os

import numpy as np
import pytest

from helpers import load_config, run_module, ROOT
from vit_jax.framework import fit_report, registry, sharding
from vit_jax.framework.errors import UserError

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec('libtpu') is None,
    reason='needs libtpu (the tpu extra); .ci/run runs these with libtpu on PYTHONPATH')
FSDP = (('batch', 'data'), ('embed', 'data'))
V5E_AVAILABLE_HBM = 15.75 * 2**30  # What the compiler reports for a 16 GiB v5e chip.


def test_slice_names_map_to_layouts():
  # v5e/v6e count chips; v4/v5p count TensorCores, two per chip.
  assert fit_report.parse_topology('v5e-64').libtpu_name == 'v5e:8x8'
  assert fit_report.parse_topology('v5litepod-16').libtpu_name == 'v5e:4x4'
  assert fit_report.parse_topology('v6e-256').libtpu_name == 'v6e:16x16'
  assert fit_report.parse_topology('v5p-128').libtpu_name == 'v5p:4x4x4'
  # One chip is a host of its own (libtpu's default host is 2x2 chips).
  for name in ('v5e-1', 'v5e:1x1'):
    one = fit_report.parse_topology(name)
    assert (one.libtpu_name, one.options) == ('v5e:1x1', {'chips_per_host_bounds': [1, 1, 1]})
  assert fit_report.parse_topology('v5e-4').options == {}
  v4 = fit_report.parse_topology('v4-32')
  assert (v4.libtpu_name, v4.options) == ('v4:2x2x4', {'chip_config_name': 'megacore'})
  with pytest.raises(UserError, match=r"'v5e-12' is not a v5e slice: N is one of \[1, 4, 8, 16"):
    fit_report.parse_topology('v5e-12')
  with pytest.raises(UserError, match=r"unknown topology 'tpu-64'.*v5e-1.*v5e:8x8"):
    fit_report.parse_topology('tpu-64')


@needs_libtpu
def test_tpu_slices_have_one_device_per_chip():
  counts = {name: len(fit_report.topology_devices(fit_report.parse_topology(name)))
            for name in ('v5e-1', 'v6e-1', 'v5e-64', 'v6e-256', 'v4-32', 'v5p-128')}
  assert counts == {'v5e-1': 1, 'v6e-1': 1, 'v5e-64': 64, 'v6e-256': 256, 'v4-32': 16,
                    'v5p-128': 64}


@needs_libtpu
def test_tpu_two_slices_split_the_first_mesh_axis():
  devices = fit_report.topology_devices(fit_report.parse_topology('v5e-4', num_slices=2))
  mesh = sharding.make_mesh((('data', -1), ('model', 2)), devices)
  assert dict(mesh.shape) == {'data': 4, 'model': 2}
  slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  assert (slices[:2] == 0).all() and (slices[2:] == 1).all()  # 'model' stays within a slice.
  with pytest.raises(UserError, match=r'spans the 2 slices, so its size must be a multiple of 2'):
    sharding.make_mesh((('data', 1), ('model', -1)), devices)


@pytest.mark.slow
def test_unknown_topology_is_one_line_error():
  result = run_module(['scripts.fit_report', '--config=configs/vit_digits.py',
                       '--topology=v5x-64'], timeout=300)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: unknown topology 'v5x-64'")


@pytest.mark.parametrize('name', ['vit_digits', 'detr_shapes', 'detr_panoptic_shapes',
                                  'segmenter_shapes'])
def test_example_spec_is_what_the_stream_yields(name):
  config = load_config(name)
  config.input.batch_size = 2
  if 'shapes' in config.input:  # A few generated scenes: the shapes do not depend on the count.
    config.input.shapes.num_train = config.input.shuffle_buffer = 8
  built = registry.make_task(config)
  batch = next(built.train_input(start_example=0))
  assert {k: (v.shape[1:], v.dtype) for k, v in batch.items()} == {
      k: (tuple(s.shape), np.dtype(s.dtype.as_numpy_dtype))
      for k, s in built.train_example_spec().items()}


def _config_files():
  """Every config in configs/ that is a config (get_config callable without arguments), not a
  module the others import."""
  names = []
  for file in sorted(os.listdir(os.path.join(ROOT, 'configs'))):
    spec = importlib.util.spec_from_file_location(file[:-3], os.path.join(ROOT, 'configs', file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parameters = inspect.signature(module.get_config).parameters.values()
    if all(p.default is not p.empty for p in parameters):
      names.append(file[:-3])
  return names


@pytest.mark.parametrize('name', _config_files())
def test_every_config_names_a_task_with_an_example_spec(name):
  # What the fit report builds before compiling: the task and its training example's shapes,
  # from the config alone (COCO, ImageNet and ADE20K are not here).
  config = load_config(name)
  spec = registry.make_task(config).train_example_spec()
  assert spec['image'].shape[-1] in (1, 3) and len(spec['image'].shape) == 3


@needs_libtpu
def test_tpu_small_vit_fits_v5e_4_under_fsdp():
  config = load_config('vit_digits')
  # Widths that tile TPU memory when split 4 ways (128 lanes), so that the compiled buffers
  # hold no padding and must equal the prediction.
  config.model.update(num_layers=1, hidden_size=512, mlp_dim=1024, num_heads=4)
  config.sharding_rules = FSDP
  config.optim.accum_steps = 2
  report = fit_report.report(config, registry.make_task(config),
                             fit_report.parse_topology('v5e-4'))
  assert report['fits'] and report['devices'] == 4 and report['mesh'] == {'data': 4, 'model': 1}
  assert report['available_bytes'] == V5E_AVAILABLE_HBM
  assert 0 < report['peak_bytes'] < report['available_bytes']
  # The compiler's donated state against sharding.bytes_per_device's prediction.
  assert report['state_bytes'] == pytest.approx(report['predicted_state_bytes'], rel=0.01)
  # Params by hand: FSDP splits every array with an embedding axis 4 ways; the qkv and MLP
  # biases, the three LayerNorms and the head bias stay whole on every device.
  d, mlp, classes, tokens = 512, 1024, 10, 17
  split = 16 * d + d + d + tokens * d + 3 * d * d + d * d + d + 2 * d * mlp + d + d * classes
  whole = 3 * d + mlp + 3 * 2 * d + classes
  assert report['predicted_params_bytes'] == 4 * (split // 4 + whole)
  assert report['predicted_optimizer_bytes'] == pytest.approx(
      2 * report['predicted_params_bytes'], abs=64)  # Adam's two moments (+ counts).
  # Training FLOPs: at least 6 per weight per token (forward 2, backward 4) over 4 devices, for
  # both micro-batches (XLA counts the accumulation loop's body once); dropout's random bits,
  # attention and norms add some.
  dense = 4 * d * d + 2 * d * mlp
  expected = 6 * dense * tokens * config.input.batch_size / 4
  assert expected < report['flops_per_device'] < 1.25 * expected


@needs_libtpu
def test_tpu_too_big_for_hbm_is_the_compilers_verdict():
  config = load_config('vit_digits')
  config.model.num_layers = 1
  config.model.num_classes = 2**26  # A 64 x 2^26 head: 16 GiB of float32 params alone.
  report = fit_report.report(config, registry.make_task(config),
                             fit_report.parse_topology('v5e-8'))
  assert not report['fits']
  assert report['available_bytes'] == V5E_AVAILABLE_HBM
  assert report['required_bytes'] > report['available_bytes']
  assert report['required_bytes'] >= 3 * 64 * 2**26 * 4 * 0.99  # Params and Adam's moments.
  assert 'RESOURCE_EXHAUSTED' in report['compiler_message']
  assert 'does not fit: RESOURCE_EXHAUSTED' in fit_report.describe(report)


@needs_libtpu
def test_tpu_scanned_layers_report_no_flops():
  # XLA counts a loop's body once: with the layers under nn.scan the count would be one layer's,
  # so none is reported (and a note says why) rather than a number several times too small.
  config = load_config('vit_digits')
  config.model.update(num_layers=2, scan=True)
  report = fit_report.report(config, registry.make_task(config),
                             fit_report.parse_topology('v5e-4'))
  assert report['fits'] and report['peak_bytes'] > 0
  assert report['flops_per_device'] is None and report['xla_step_seconds'] is None
  assert any('config.model.scan makes the layers a loop' in n for n in report['notes'])
  text = fit_report.describe(report)
  assert 'FLOPs per device' not in text and 'note: FLOPs not counted' in text


@needs_libtpu
def test_tpu_panoptic_config_compiles():
  # DETR's panoptic task (masks, the mask head and its losses) through the registry, compiled
  # for one v5e chip: the fit report takes any config.
  config = load_config('detr_panoptic_shapes')
  config.input.batch_size = 2
  report = fit_report.report(config, registry.make_task(config),
                             fit_report.parse_topology('v5e-1'))
  assert report['fits'] and 0 < report['peak_bytes'] < report['available_bytes']
  assert report['flops_per_device'] > 0


@pytest.mark.slow  # A DETR compile: about 200 s under load.
@needs_libtpu
def test_tpu_flash_attention_compiles_per_shard():
  # The Pallas flash kernel (model.attention) in DETR's train step for four v5e chips: Mosaic
  # kernels are not partitioned by XLA, so the kernel runs per batch shard in shard_map; DETR's
  # key padding mask and cross-attention go through it (dropout 0: no reference fallback).
  config = load_config('detr_shapes')
  config.model.attention = 'pallas_flash'
  config.input.batch_size = 8
  report = fit_report.report(config, registry.make_task(config),
                             fit_report.parse_topology('v5e-4'))
  assert report['fits'] and 0 < report['peak_bytes'] < report['available_bytes']


@needs_libtpu
def test_tpu_deformable_sampling_keeps_no_corners_for_the_backward_pass(monkeypatch):
  # Deformable DETR's operator (detr_jax/deformable_attention.py) over three chained layers at
  # the 512 x 683 canvas, its gradient compiled for one v5e chip, against autodiff of the same
  # gather and multiply-and-sum, which keeps the gathered corners for the backward pass
  # (measured: 3.06 GiB of temporaries against 7.42).
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec
  from detr_jax import deformable_attention
  levels = [(64, 86), (32, 43), (16, 22), (8, 11)]
  batch, heads, channels, points = 1, 8, 32, 4
  tokens = sum(h * w for h, w in levels)
  devices = fit_report.topology_devices(fit_report.parse_topology('v5e-1'))
  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32,
                                              sharding=NamedSharding(mesh, PartitionSpec()))
  inputs = (spec(batch, tokens, heads, channels),
            spec(batch, tokens, heads, len(levels), points, 2),
            spec(batch, tokens, heads, len(levels), points))

  def temporaries():
    def loss(value, locations, weights):
      for _ in range(3):
        value = jnp.tanh(deformable_attention.deformable_sample(
            value, levels, locations, weights)).reshape(value.shape)
      return jnp.sum(value ** 2)
    with jax.set_mesh(mesh):
      compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*inputs).compile()
    return compiled.memory_analysis().temp_size_in_bytes
  ours = temporaries()
  monkeypatch.setattr(deformable_attention, '_sample_level',
                      deformable_attention._sample_level.fun)  # Without its custom VJP.
  assert ours < 0.5 * temporaries()
