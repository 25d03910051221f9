"""Device mesh and shardings, all derived from the config.

Modules name the axes of every parameter ('embed', 'mlp', 'heads', ...) and of the batch
('batch'); `config.sharding_rules` maps those logical names to mesh axes. Data parallel, FSDP and
tensor parallel are therefore config changes:

  data parallel:   (('batch', 'data'),)
  FSDP:            (('batch', 'data'), ('embed', 'data')), plus ('conv_out', 'data') for the
                   convolutions of DETR's ResNet and the hybrid ViTs' stems
  tensor parallel: (('batch', 'data'), ('mlp', 'model'), ('heads', 'model'), ('classes', 'model'))

Logical names without a rule are replicated; a rule for a name the model does not use is an
error (most likely a misspelling, which would silently leave the weights replicated).
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from vit_jax.framework.errors import UserError


def make_mesh(axes: Sequence[tuple[str, int]], devices=None) -> jax.sharding.Mesh:
  """A mesh from `(('data', -1), ('model', 2))`; one size may be -1 (all remaining devices)."""
  devices = jax.devices() if devices is None else devices
  names = tuple(name for name, _ in axes)
  sizes = [int(size) for _, size in axes]
  if sizes.count(-1) > 1:
    raise UserError(f'config.mesh {tuple(axes)}: at most one axis may have size -1')
  known = math.prod(s for s in sizes if s != -1)
  if known <= 0 or len(devices) % known:
    raise UserError(f'config.mesh {tuple(axes)} does not fit {len(devices)} devices: '
                    'the axis sizes must multiply to the device count (use -1 for one axis)')
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != len(devices):
    raise UserError(f'config.mesh {tuple(axes)} has {math.prod(sizes)} devices but '
                    f'{len(devices)} are available')
  # Auto axes: flax's logical constraints are GSPMD-style and fail on Explicit axes.
  axis_types = (jax.sharding.AxisType.Auto,) * len(names)
  slices = len({getattr(d, 'slice_index', 0) for d in devices})
  if slices > 1:  # Multi-slice: the first axis spans the slices (over the data-center network).
    if sizes[0] % slices:
      raise UserError(f'config.mesh {tuple(axes)}: the first axis ({sizes[0]}) spans the '
                      f'{slices} slices, so its size must be a multiple of {slices}')
    per_slice = [sizes[0] // slices] + sizes[1:]
    across = [slices] + [1] * (len(sizes) - 1)
    return jax.sharding.Mesh(mesh_utils.create_hybrid_device_mesh(per_slice, across, devices),
                             names, axis_types=axis_types)
  return jax.make_mesh(tuple(sizes), names, devices=devices, axis_types=axis_types)


def logical_rules(config_rules) -> tuple[tuple[str, Any], ...]:
  """Rules as flax wants them: tuples, mesh axis a name, a tuple of names or None."""
  return tuple((logical, tuple(mesh) if isinstance(mesh, list) else mesh)
               for logical, mesh in config_rules)


def check_rules(rules, mesh: jax.sharding.Mesh) -> None:
  for logical, mesh_axes in rules:
    for axis in (mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,)):
      if axis is not None and axis not in mesh.axis_names:
        raise UserError(f'sharding rule ({logical!r}, {mesh_axes!r}) names mesh axis {axis!r}, '
                        f'but config.mesh has only {mesh.axis_names}')


def batch_sharding(mesh, rules) -> NamedSharding:
  """Batch arrays split along their first dimension over the axes the 'batch' rule names."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(('batch',), rules))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# Logical names of activations (`nn.with_logical_constraint` in the models), not parameters.
ACTIVATION_AXES = ('batch', 'length', 'act_embed', 'mlp')


def check_rules_name_model_axes(rules, logical_specs) -> None:
  """Every rule must name a logical axis of the model's variables (PartitionSpecs of logical
  names, as `nn.get_partition_spec` gives them) or of its activations."""
  known = set(ACTIVATION_AXES)
  for spec in jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, P)):
    known.update(name for name in spec if name is not None)
  for logical, mesh_axes in rules:
    if logical not in known:
      raise UserError(f'sharding rule ({logical!r}, {mesh_axes!r}) names the logical axis '
                      f'{logical!r}, which this model does not have: use one of {sorted(known)} '
                      'in config.sharding_rules')


def variable_shardings(abstract_variables, mesh, rules, check_rules: bool = True):
  """NamedShardings for a tree of (boxed) variables from `jax.eval_shape(model.init, ...)`;
  `check_rules=False` for variables beside the model (a teacher, or none), whose axes need not
  cover the rules the model's were checked against."""
  specs = nn.get_partition_spec(abstract_variables)
  if check_rules:
    check_rules_name_model_axes(rules, specs)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def optimizer_shardings(tx: optax.GradientTransformation, abstract_params, params_shardings,
                        mesh):
  """Optimizer state sharded like the params it mirrors (moments, traces); the rest replicated."""
  abstract_state = jax.eval_shape(tx.init, abstract_params)
  return optax.tree_map_params(
      tx, lambda _, sharding: sharding, abstract_state, params_shardings,
      transform_non_params=lambda _: replicated(mesh),
      is_leaf=lambda x: isinstance(x, NamedSharding))


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """This host's slice of the batch -> global arrays on the mesh (works on one or many hosts)."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def describe(tree_of_arrays) -> dict[str, str]:
  """{'path/to/param': 'PartitionSpec(...)'}: how each array is laid out, for logs and tests."""
  flat = jax.tree_util.tree_flatten_with_path(tree_of_arrays)[0]
  return {jax.tree_util.keystr(path, simple=True, separator='/'): str(x.sharding.spec)
          for path, x in flat}


def bytes_per_device(abstract_arrays, mesh_specs, axis_sizes: dict[str, int]) -> int:
  """Bytes one device holds of a tree of arrays laid out by `mesh_specs` (PartitionSpecs over
  mesh axes) on a mesh with `axis_sizes`; uneven dimensions count their padded shard. Needs no
  devices, so it answers for meshes far larger than this machine."""
  def shard_bytes(array, spec):
    size = 1
    for dim, axes in zip(array.shape, tuple(spec) + (None,) * (array.ndim - len(spec))):
      axes = axes if isinstance(axes, tuple) else (axes,)
      size *= -(-dim // math.prod(axis_sizes[a] for a in axes if a is not None))
    return size * np.dtype(array.dtype).itemsize
  return sum(jax.tree.leaves(jax.tree.map(shard_bytes, abstract_arrays, mesh_specs)))
