"""Does a config's train step fit a TPU slice? Compiled for the slice ahead of time, here.

  python scripts/fit_report.py --config=configs/vit_b16_i21k.py --topology=v5e-64 [--json]

The step is the loop's own (`train.jit_train_step`: the config's mesh, sharding rules, dtype,
remat, accumulation, dropout and RNG), lowered with abstract arguments on the abstract devices
libtpu describes for the slice and compiled by the TPU compiler, so "fits" is the compiler's
verdict, not an estimate. Needs libtpu (`pip install -e ".[tpu]"`), no TPU and no data: the
batch's shapes come from the task's `train_example_spec`.

`model.attention` 'auto' resolves on the compiling host (CPU: the reference `attend`, the larger
footprint); --config.model.attention=pallas_flash compiles the TPU flash kernel a TPU run's
'auto' picks (vit_jax/layers/attention_kernels.py).

Slice names as users say them: v5e-N and v6e-N count chips (one JAX device each); v4-N and
v5p-N count TensorCores, two per chip, so v4-32 is 16 chips (2x2x4) and 16 JAX devices
(megacore). libtpu's own form (v5e:8x8, v4:2x2x4) is accepted too.
"""

import dataclasses
import importlib.util
import json
import os
import re
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags

from vit_jax.framework import cli, durations, optim, registry, sharding, train
from vit_jax.framework.errors import UserError

_TOPOLOGY = flags.DEFINE_string(
    'topology', None, 'TPU slice: v5e-64, v6e-256 (chips), v4-32, v5p-128 (TensorCores), or '
    "libtpu's form such as v5e:8x8.")
_NUM_SLICES = flags.DEFINE_integer('num_slices', 1, 'Slices joined by the data-center network.')
_JSON = flags.DEFINE_bool('json', False, 'Print the report as one JSON object.')

# Slice shapes (chips) of the 2D generations and of the 3D (twisted-torus) ones.
LAYOUTS_2D = {1: '1x1', 4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8', 128: '8x16',
              256: '16x16'}
LAYOUTS_3D = {4: '2x2x1', 8: '2x2x2', 16: '2x2x4', 32: '2x4x4', 64: '4x4x4', 128: '4x4x8',
              256: '4x8x8', 512: '8x8x8', 1024: '8x8x16', 2048: '8x16x16', 4096: '16x16x16'}


@dataclasses.dataclass(frozen=True)
class Generation:
  libtpu_name: str
  cores_per_chip: int  # What the number in the name counts per chip.
  layouts: dict
  options: tuple = ()  # libtpu's chip configuration.


# v4 as TPU VMs run it: megacore, one JAX device per chip (libtpu's default is one per core).
_V4 = Generation('v4', 2, LAYOUTS_3D, (('chip_config_name', 'megacore'),))
GENERATIONS = {'v4': _V4, 'v5p': Generation('v5p', 2, LAYOUTS_3D),
               'v5e': Generation('v5e', 1, LAYOUTS_2D), 'v5litepod': Generation('v5e', 1, LAYOUTS_2D),
               'v6e': Generation('v6e', 1, LAYOUTS_2D)}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str  # As the user gave it.
  libtpu_name: str  # e.g. 'v5e:8x8'
  options: dict
  num_slices: int = 1


def parse_topology(name: str, num_slices: int = 1) -> Topology:
  """'v5e-64' -> libtpu's 'v5e:8x8'; libtpu's own form passes through."""
  if num_slices < 1:
    raise UserError(f'--num_slices must be at least 1, got {num_slices}')
  generation, sep, count = name.partition('-')
  if ':' in name:
    options = dict(_V4.options) if name.startswith('v4:') else {}
    return Topology(name, name, _one_chip_host(name, options), num_slices)
  known = ', '.join(f'{g}-{min(v.layouts) * v.cores_per_chip}' for g, v in GENERATIONS.items())
  if generation not in GENERATIONS or not sep:
    raise UserError(f'unknown topology {name!r}: name a TPU slice as GENERATION-N ({known}, ...) '
                    "or in libtpu's form such as v5e:8x8")
  gen = GENERATIONS[generation]
  sizes = [chips * gen.cores_per_chip for chips in gen.layouts]
  if not count.isdigit() or int(count) not in sizes:
    raise UserError(f'{name!r} is not a {generation} slice: N is one of {sizes}')
  libtpu_name = f'{gen.libtpu_name}:{gen.layouts[int(count) // gen.cores_per_chip]}'
  return Topology(name, libtpu_name, _one_chip_host(libtpu_name, dict(gen.options)), num_slices)


def _one_chip_host(libtpu_name: str, options: dict) -> dict:
  """libtpu assumes hosts of 2x2 chips; a one-chip slice (v5e-1, v6e-1) is a one-chip host."""
  if libtpu_name.endswith(':1x1'):
    options['chips_per_host_bounds'] = [1, 1, 1]
  return options


def topology_devices(topology: Topology) -> list:
  """The slice's abstract TPU devices (compile only), from libtpu."""
  if importlib.util.find_spec('libtpu') is None:
    raise UserError('compiling for a TPU slice needs libtpu: pip install -e ".[tpu]"')
  # libtpu locks itself to one process unless told otherwise; compiling touches no chip, so a
  # report may run beside a training job or another report.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    return topologies.get_topology_desc(
        topology_name=topology.libtpu_name, platform='tpu', num_slices=topology.num_slices,
        **topology.options).devices
  except jax.errors.JaxRuntimeError as e:
    raise UserError(f'libtpu does not know topology {topology.libtpu_name!r} '
                    f'({_first_line(e)}): use a name such as v5e-64 or v5e:8x8') from None


def _first_line(error: Exception) -> str:
  return str(error).strip().splitlines()[0]


def _bytes(text: str) -> int:
  """XLA's human-readable sizes ('15.75G') in bytes (its K/M/G/T are powers of 1024)."""
  return round(float(text[:-1]) * 1024 ** ('KMGT'.index(text[-1]) + 1))


def _size(num_bytes: int) -> str:
  return f'{num_bytes / 2**30:.2f} GiB' if num_bytes >= 2**30 else f'{num_bytes / 2**20:.1f} MiB'


_NEEDED = re.compile(r'\((\d[\d.]*[KMGT])\) exceeds available HBM \((\d[\d.]*[KMGT])\)')
_USED = re.compile(r'Used (\d[\d.]*[KMGT]) of (\d[\d.]*[KMGT]) hbm')


def out_of_memory(error: Exception) -> dict | None:
  """The compiler's numbers from a RESOURCE_EXHAUSTED compile error; None for other errors."""
  message = str(error)
  if 'RESOURCE_EXHAUSTED' not in message:
    return None
  found = _NEEDED.search(message) or _USED.search(message)
  required, available = (_bytes(found.group(1)), _bytes(found.group(2))) if found else (None, None)
  return {'compiler_message': _first_line(error), 'required_bytes': required,
          'available_bytes': available}


def available_hbm_bytes(device) -> int | None:
  """HBM one device offers a program, as the compiler counts it (less than the chip's HBM):
  asked by compiling a program that needs 1 TiB."""
  mesh = jax.sharding.Mesh([device], ('one',))
  replicated = sharding.replicated(mesh)
  huge = jax.ShapeDtypeStruct((2**18, 2**20), jnp.float32, sharding=replicated)
  try:
    jax.jit(lambda x: x + 1, out_shardings=replicated).lower(huge).compile()
  except jax.errors.JaxRuntimeError as e:
    verdict = out_of_memory(e)
    return verdict and verdict['available_bytes']
  return None


def _abstract(tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree,
                      shardings)


def _predicted_bytes(abstract_tree, shardings, mesh) -> int:
  specs = jax.tree.map(lambda s: s.spec, shardings)
  return sharding.bytes_per_device(abstract_tree, specs, dict(mesh.shape))


def report(config, task, topology: Topology) -> dict:
  """Compiles `task`'s train step under `config` for `topology`; the compiler's verdict and
  numbers, per device. The batch's shapes are the task's `train_example_spec()`."""
  devices = topology_devices(topology)
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.logical_rules(config.sharding_rules)
  sharding.check_rules(rules, mesh)
  accum_steps = train.checked_accum_steps(config, mesh, rules)
  # The schedule's length only sets constants in the step: epochs are counted as one step each,
  # so no data is read.
  steps = durations.resolve(config, config.input.batch_size)
  rng = jax.random.PRNGKey(config.seed)  # Eager ops run here, outside the slice's mesh.
  with nn.logical_axis_rules(rules):
    tx, schedule = optim.make_optimizer(config.optim, steps.total, steps.epochs)
    abstract_state, shardings = train.state_shardings(task, tx, rng, mesh, rules)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    batch = {name: jax.ShapeDtypeStruct((config.input.batch_size,) + tuple(spec.shape),
                                        spec.dtype.as_numpy_dtype, sharding=batch_sharding)
             for name, spec in task.train_example_spec().items()}
    step = train.jit_train_step(task, tx, schedule, accum_steps, shardings, batch_sharding)
    start = time.perf_counter()
    with jax.set_mesh(mesh):  # Lowering only: no array is made on the abstract devices.
      lowered = step.lower(_abstract(abstract_state, shardings), batch)
    lower_seconds = time.perf_counter() - start

  result = {
      'topology': topology.name, 'libtpu_topology': topology.libtpu_name,
      'num_slices': topology.num_slices, 'devices': len(devices),
      'device_kind': devices[0].device_kind, 'mesh': dict(mesh.shape),
      'batch_size': config.input.batch_size, 'accum_steps': accum_steps,
      'predicted_params_bytes': _predicted_bytes(abstract_state.params, shardings.params, mesh),
      'predicted_optimizer_bytes': _predicted_bytes(
          abstract_state.opt_state, shardings.opt_state, mesh),
      'predicted_state_bytes': _predicted_bytes(abstract_state, shardings, mesh),
      'lower_seconds': lower_seconds,
      'notes': _rng_notes() + _scan_notes(config),
  }
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    verdict = out_of_memory(e)
    if verdict is None:
      raise
    return dict(result, fits=False, compile_seconds=time.perf_counter() - start, **verdict)
  result['compile_seconds'] = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # XLA counts a loop's body once: the accumulation scan's micro-steps are multiplied here (the
  # optimizer update, outside the loop, is then counted accum_steps times: a few tens of FLOPs
  # per parameter against thousands per parameter in each micro-step).
  if config.model.get('scan', False):  # The layers are a loop too, its trip count unknown here.
    cost = {}
  estimate = cost.get('optimal_seconds', 0)
  return dict(
      result, fits=True,
      peak_bytes=memory.peak_memory_in_bytes,
      available_bytes=available_hbm_bytes(devices[0]),
      # The train state is donated: the outputs that reuse its buffers are exactly the state.
      state_bytes=memory.alias_size_in_bytes,
      argument_bytes=memory.argument_size_in_bytes,
      temporary_bytes=memory.temp_size_in_bytes,
      flops_per_device=cost['flops'] * accum_steps if 'flops' in cost else None,
      xla_step_seconds=estimate * accum_steps if estimate > 0 else None)


def _rng_notes() -> list[str]:
  """The trap of the faster TPU RNGs: without the flag their random bits are not sharded."""
  flag = '--xla_tpu_spmd_rng_bit_generator_unsafe=true'
  if (jax.config.jax_default_prng_impl in ('rbg', 'unsafe_rbg')
      and flag not in os.environ.get('LIBTPU_INIT_ARGS', '')):
    return [f'{jax.config.jax_default_prng_impl} random bits are generated unsharded (dropout '
            f'masks at full size on every device): set LIBTPU_INIT_ARGS={flag} here and in the run']
  return []


def _scan_notes(config) -> list[str]:
  if not config.model.get('scan', False):
    return []
  return ["FLOPs not counted: XLA's cost analysis counts a loop's body once, and "
          'config.model.scan makes the layers a loop (--config.model.scan=False counts them, '
          'at a longer compile)']


def describe(r: dict) -> str:
  """The report as a few lines of text."""
  lines = [f'{r["topology"]} (libtpu {r["libtpu_topology"]}, {r["num_slices"]} slice(s)): '
           f'{r["devices"]} x {r["device_kind"]}, mesh {r["mesh"]}, batch {r["batch_size"]} in '
           f'{r["accum_steps"]} micro-batch(es)']
  if r['fits']:
    available = (f'of {_size(r["available_bytes"])} available HBM' if r['available_bytes']
                 else '(available HBM unknown)')
    lines.append(f'fits: peak {_size(r["peak_bytes"])} per device {available}')
  else:
    lines.append(f'does not fit: {r["compiler_message"]}')
  lines.append(f'state per device: predicted {_size(r["predicted_state_bytes"])} (params '
               f'{_size(r["predicted_params_bytes"])}, optimizer '
               f'{_size(r["predicted_optimizer_bytes"])}; sharding.bytes_per_device)' +
               (f', compiled {_size(r["state_bytes"])} (donated buffers)' if r['fits'] else ''))
  if r['fits'] and r['flops_per_device'] is not None:
    lines.append(f'FLOPs per device per step: {r["flops_per_device"]:.3e}' +
                 (f"; XLA's estimated step time {r['xla_step_seconds']:.4f} s"
                  if r['xla_step_seconds'] else ''))
  lines.append(f'lowering {r["lower_seconds"]:.1f} s, compiling {r["compile_seconds"]:.1f} s')
  lines.extend(f'note: {note}' for note in r['notes'])
  return '\n'.join(lines)


def run() -> None:
  """The command line: the task the config names (vit_jax.framework.registry), compiled."""
  flags.mark_flags_as_required(['config', 'topology'])

  def main(argv):
    if len(argv) > 1:
      cli.fail(f'unexpected arguments {argv[1:]}: use --config=... --topology=...')
    # Only compiling happens here: the host's own accelerators (if any) are left alone.
    jax.config.update('jax_platforms', 'cpu')
    config = cli.loaded_config()
    try:
      topology = parse_topology(_TOPOLOGY.value, _NUM_SLICES.value)
      result = report(config, registry.make_task(config), topology)
    except UserError as e:
      cli.fail(str(e))
    print(json.dumps(result) if _JSON.value else describe(result), flush=True)

  app.run(main, flags_parser=lambda argv: cli.parse_flags(
      argv, ('config', 'topology', 'num_slices', 'json')))
