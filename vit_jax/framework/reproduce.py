"""The papers' tables, reproduced: every row's figure beside ours and the difference.

A table is a list of rows. A row is one figure of the paper and says how ours is obtained:

  Weights(file, url)   evaluate the released weights (looked for under --weights_dir, as the
                       published file or its conversion to .npz by scripts/convert_*) with the
                       row's config and eval protocol, on the data the config reads
  Training(workdir)    read WORKDIRS/<workdir>/final_metrics.json of a run of the row's config
  Speed(batch)         images/s of the row's model on this device (random weights)
  Computed(count)      a figure counted from the row's model (from its config, if it has one):
                       parameters, pre-training exaFLOPs
  Unavailable(reason)  nothing was published to evaluate and nothing here can train it

A row that cannot be filled says why in one line (no weights at PATH, no data: ..., no workdir
...). The task packages define their tables (vit_jax/classification/paper_tables.py, detr_jax/paper_tables.py,
segmenter_jax/paper_tables.py); `scripts/reproduce.py TABLE` is the command line.
"""

import dataclasses
import importlib.util
import itertools
import json
import math
import os
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import numpy as np

from vit_jax.framework import evaluation, model_stats, paths, registry, sharding, weights
from vit_jax.framework import task as task_lib
from vit_jax.framework.errors import UserError


@dataclasses.dataclass(frozen=True)
class Weights:
  file: str  # Path under --weights_dir, e.g. 'imagenet21k+imagenet2012/ViT-L_16.npz'.
  url: str  # Where it is published.


@dataclasses.dataclass(frozen=True)
class Training:
  """Runs of configs, their final metric averaged (one run: the row's config)."""
  workdir: str = ''  # Under --workdirs, of a run of the row's config.
  runs: tuple[tuple[str, str], ...] = ()  # Or several (config, workdir), e.g. VTAB's 19 tasks.


@dataclasses.dataclass(frozen=True)
class Speed:
  batch: int = 1
  repeats: int = 5


@dataclasses.dataclass(frozen=True)
class Unavailable:
  reason: str


@dataclasses.dataclass(frozen=True)
class Computed:
  """A figure counted from shapes (no weights, data or device time): `count(config)`, the
  row's config (None for a row without one)."""
  count: Callable[[Any], float]


How = Union[Weights, Training, Speed, Unavailable, Computed]
SPEED_METRIC = 'images_per_second'


@dataclasses.dataclass(frozen=True)
class Row:
  """One figure of a paper's table."""
  name: str
  paper: Optional[float]  # None: the paper's figure is not recorded here (see Table.source).
  how: How
  metric: str = 'accuracy'  # Key of the eval metrics, or SPEED_METRIC.
  config: str = ''  # 'FILE.py:ARG' under the configs directory.
  protocol: tuple[tuple[str, Any], ...] = ()  # Config fields set on top: the eval protocol.
  percent: bool = True  # The metric is a fraction; shown x100 like the paper.
  # Default: the task the row's config names (vit_jax.framework.registry).
  make_task: Optional[Callable[[Any], task_lib.Task]] = None
  source: str = ''  # Where the paper's figure was read: paper, version, table, row, column.


@dataclasses.dataclass(frozen=True)
class Table:
  name: str  # What the command line takes, e.g. 'vit-table2'.
  title: str
  rows: tuple[Row, ...]
  main: str  # The module that trains a row's config, e.g. 'vit_jax.main'.
  source: str  # Where the paper figures come from.


@dataclasses.dataclass
class Result:
  row: Row
  ours: Optional[float] = None
  reason: str = ''  # Why `ours` is missing, in one line.

  @property
  def difference(self) -> Optional[float]:
    if self.ours is None or self.row.paper is None:
      return None
    return self.ours - self.row.paper


@dataclasses.dataclass
class Sources:
  """Where the harness looks: released weights, data, training workdirs, configs."""
  configs_dir: str
  weights_dir: Optional[str] = None
  data_dir: Optional[str] = None  # Goes to config.input.data_dir.
  workdirs: Optional[str] = None
  speed: bool = False  # Time the Speed rows (slow on a CPU).
  overrides: tuple[tuple[str, Any], ...] = ()  # Applied to every row's config last (tests).


def load_config(configs_dir: str, spec: str):
  """'FILE.py:ARG' -> configs_dir/FILE.py's get_config(ARG) (get_config() without ARG)."""
  file, _, arg = spec.partition(':')
  path = os.path.join(configs_dir, file)
  if not os.path.exists(path):
    raise UserError(f'config {path} does not exist: pass --configs_dir=DIR (the configs/ folder)')
  module_spec = importlib.util.spec_from_file_location(f'config_{file[:-3]}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    return module.get_config(arg) if arg else module.get_config()
  except ValueError as e:  # config_args' one-line mistakes.
    raise UserError(str(e)) from None


def set_fields(config, fields: Sequence[tuple[str, Any]]) -> None:
  """Sets 'a.b.c' = value pairs on a ConfigDict (a missing leaf is added)."""
  for key, value in fields:
    *parents, leaf = key.split('.')
    target = config
    for parent in parents:
      target = target[parent]
    target[leaf] = value


def row_config(row: Row, sources: Sources):
  config = load_config(sources.configs_dir, row.config)
  config.init_from = None
  config.evals = ()  # The row's figure is its eval split's; held-out minivals need no data.
  if sources.data_dir:
    config.input.data_dir = sources.data_dir
  set_fields(config, row.protocol)
  set_fields(config, sources.overrides)
  return config


def weights_path(row_weights: Weights, weights_dir: str) -> tuple[Optional[str], str]:
  """(the file found, or None; where it was looked for): the published file, else its .npz
  conversion beside it."""
  path = paths.join(weights_dir, row_weights.file)
  converted = os.path.splitext(path)[0] + '.npz'
  for candidate in (path, converted):
    if paths.isfile(candidate):
      return candidate, path
  return None, path


def abstract_variables(task: task_lib.Task, fill: Callable[[Any], np.ndarray]) -> dict:
  """The task's variables as host arrays made by `fill(shape-dtype struct)`: their shapes
  without compiling an initialisation."""
  abstract = nn.meta.unbox(jax.eval_shape(task.init_variables, jax.random.PRNGKey(0)))
  return jax.tree.map(fill, abstract)


def _unset(x) -> np.ndarray:
  """NaN for floats (no released tensor is all NaN), zeros otherwise."""
  return np.full(x.shape, np.nan if np.issubdtype(x.dtype, np.floating) else 0, x.dtype)


def evaluate_weights(task: task_lib.Task, config, path: str) -> dict[str, float]:
  """The task's metrics on its eval split with all variables from the weights at `path`.

  Every tensor must come from the weights: one the loader leaves as initialised (a head for
  another class count, say) would be scored as if it were the released model, so the model
  starts all-NaN and any tensor still NaN after loading is an error."""
  loaded = task.pretrained_variables(abstract_variables(task, _unset), path)
  unset = [k for k, v in weights.flatten(loaded).items()
           if np.issubdtype(np.asarray(v).dtype, np.floating) and np.isnan(v).all()]
  if unset:
    raise UserError(f'{path} left {len(unset)} tensors of the model unset '
                    f'({weights.first_names(unset)}): it is not the model this row evaluates')
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.sharding_rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    eval_step = jax.jit(lambda v, b: dict(task.eval_outputs(v, b), _mask=b['_mask']))
    return evaluation.evaluate(task, eval_step, loaded, sharding.batch_sharding(mesh, rules))


def images_per_second(task: task_lib.Task, config, batch: int, repeats: int) -> float:
  """Inference throughput of the task's model on this device.

  Protocol: `batch` random images of the model's training crop (`input.crop_size`, else
  `input.image_size`) through the model's forward pass (one window per image, no sliding-window
  or multi-scale views), float32 unless the config says otherwise, random weights; one warm-up
  call (it compiles), then the median of `repeats` timed calls; images/s = batch / median.
  """
  size = config.input.get('crop_size') or config.input.image_size
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32))
  variables = jax.device_put(abstract_variables(
      task, lambda x: (0.02 * rng.standard_normal(x.shape)).astype(x.dtype)))
  forward = jax.jit(lambda v, x: task.model.apply(v, x, train=False))
  seconds = model_stats.median_seconds(
      lambda: jax.block_until_ready(forward(variables, images)), repeats)
  return batch / seconds


def _read_runs(table: Table, row: Row, how: Training, workdirs: Optional[str]) -> Result:
  """The row's metric from each run's final_metrics.json, averaged; the first run missing is
  the reason (with the command that trains it, and how many others are missing)."""
  runs = how.runs or ((row.config, how.workdir),)
  values, missing = [], []
  for config, name in runs:
    workdir = paths.join(workdirs or 'WORKDIRS', name)
    metrics_file = paths.join(workdir, 'final_metrics.json')
    if not workdirs or not paths.isfile(metrics_file):
      missing.append(f'no workdir: {metrics_file} does not exist; train it: python -m '
                     f'{table.main} --config=configs/{config} --workdir={workdir}')
      continue
    metrics = json.loads(paths.read_text(metrics_file))
    if row.metric not in metrics:
      missing.append(f'{metrics_file} has no {row.metric!r} (it has {sorted(metrics)}): '
                     f'train with configs/{config}')
      continue
    values.append(metrics[row.metric])
  if missing:
    more = f' (and {len(missing) - 1} more of {len(runs)} runs)' if len(missing) > 1 else ''
    return Result(row, reason=missing[0] + more)
  return Result(row, ours=_shown(row, float(np.mean(values))))


def fill_row(table: Table, row: Row, sources: Sources,
             evaluated: Optional[dict] = None) -> Result:
  """`row` filled, or the reason it is not. `evaluated` caches evaluations across rows: rows
  of the same weights, config, protocol and task (AP, AP50, ... of one model) share one."""
  how = row.how
  if isinstance(how, Unavailable):
    return Result(row, reason=how.reason)
  if isinstance(how, Training):
    return _read_runs(table, row, how, sources.workdirs)
  if isinstance(how, Computed):
    try:
      return Result(row, ours=float(how.count(row_config(row, sources) if row.config else None)))
    except UserError as e:
      return Result(row, reason=f'failed: {e}')
  if isinstance(how, Speed) and not sources.speed:
    return Result(row, reason='not timed: pass --speed to measure images/s on this device '
                  f'({jax.devices()[0].device_kind})')
  if isinstance(how, Weights):
    if not sources.weights_dir:
      return Result(row, reason=f'no weights: pass --weights_dir=DIR with {how.file} in it '
                    f'(published at {how.url})')
    path, wanted = weights_path(how, sources.weights_dir)
    if path is None:
      return Result(row, reason=f'no weights at {wanted} (published at {how.url})')
    evaluated = {} if evaluated is None else evaluated
    key = (row.config, row.protocol, path, row.make_task or registry.make_task)
    if key not in evaluated:
      evaluated[key] = _evaluate_row(table, row, sources, path)
    metrics = evaluated[key]
    if isinstance(metrics, str):  # Why there are none.
      return Result(row, reason=metrics)
  else:  # Speed.
    try:
      config = row_config(row, sources)
      task = (row.make_task or registry.make_task)(config)
      return Result(row, ours=images_per_second(task, config, how.batch, how.repeats))
    except UserError as e:
      return Result(row, reason=f'failed: {e}')
  if row.metric not in metrics:
    return Result(row, reason=f'the eval gave no {row.metric!r} (it gave {sorted(metrics)})')
  return Result(row, ours=_shown(row, metrics[row.metric]))


def _evaluate_row(table: Table, row: Row, sources: Sources, path: str) -> dict | str:
  """The metrics of the weights at `path` under the row's config, or why there are none."""
  try:
    config = row_config(row, sources)
    task = (row.make_task or registry.make_task)(config)
    try:
      for split in task.eval_splits.values():
        task.eval_source(split)
    except UserError as e:
      return f'no data: {e}'
    return evaluate_weights(task, config, path)
  except UserError as e:
    return f'failed: {e}'


def _shown(row: Row, value: float) -> float:
  return float(value) * (100 if row.percent else 1)


def fill(table: Table, sources: Sources,
         progress: Callable[[Result], None] = lambda result: None) -> list[Result]:
  """Every row of `table`, each filled or with the reason it is not; in the table's order."""
  results, evaluated = [], {}
  for row in table.rows:
    results.append(fill_row(table, row, sources, evaluated))
    progress(results[-1])
  return results


def _number(value: Optional[float], signed: bool = False) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '-'
  return f'{value:+.2f}' if signed else f'{value:.2f}'


def as_text(table: Table, results: Sequence[Result]) -> str:
  """The table as printed: paper, ours, difference, then one line per row not filled."""
  width = max(len(r.row.name) for r in results)
  lines = [f'{table.title}',
           f'{"":{width}}  {"paper":>8}  {"ours":>8}  {"diff":>7}  source of the paper figure']
  for r in results:
    lines.append(f'{r.row.name:{width}}  {_number(r.row.paper):>8}  {_number(r.ours):>8}  '
                 f'{_number(r.difference, True):>7}  {r.row.source}'.rstrip())
  missing = [r for r in results if r.ours is None]
  if missing:
    lines.append('')
    # Rows of one model that miss for one reason (its weights) share one line.
    for reason, same in itertools.groupby(missing, key=lambda r: r.reason):
      names = [r.row.name for r in same]
      lines.append(f'{_shortened(names)}: {reason}')
  return '\n'.join(lines)


def _shortened(names: Sequence[str]) -> str:
  """'DETR AP', 'DETR AP50' -> 'DETR AP, AP50': the words all names start with, once."""
  words = [name.split(' ') for name in names]
  shared = len(os.path.commonprefix(words)) if len(names) > 1 else 0
  shared = min(shared, min(len(w) for w in words) - 1)  # Every name keeps a word of its own.
  return ' '.join(words[0][:shared] + [', '.join(' '.join(w[shared:]) for w in words)])


def as_markdown(table: Table, results: Sequence[Result]) -> str:
  lines = [f'### {table.title}', '', f'Paper figures: {table.source}', '',
           '| row | paper | ours | difference | notes | source |',
           '| --- | ---: | ---: | ---: | --- | --- |']
  for r in results:
    lines.append(f'| {r.row.name} | {_number(r.row.paper)} | {_number(r.ours)} | '
                 f'{_number(r.difference, True)} | {r.reason.replace("|", "/")} | '
                 f'{r.row.source.replace("|", "/")} |')
  return '\n'.join(lines) + '\n'


def as_json(table: Table, results: Sequence[Result]) -> dict:
  return {'table': table.name, 'title': table.title, 'source': table.source,
          'device': jax.devices()[0].device_kind,
          'rows': [{'name': r.row.name, 'metric': r.row.metric, 'paper': r.row.paper,
                    'ours': r.ours, 'difference': r.difference, 'reason': r.reason or None,
                    'source': r.row.source or None,
                    'config': r.row.config or None, 'how': type(r.row.how).__name__,
                    **({'weights': r.row.how.file, 'published': r.row.how.url}
                       if isinstance(r.row.how, Weights) else {})}
                   for r in results]}


def write(table: Table, results: Sequence[Result], out_dir: str) -> tuple[str, str]:
  """OUT/<table>.json and OUT/<table>.md; returns their paths."""
  paths.makedirs(out_dir)
  json_path = paths.join(out_dir, f'{table.name}.json')
  markdown_path = paths.join(out_dir, f'{table.name}.md')
  paths.write_text(json_path, json.dumps(as_json(table, results), indent=2))
  paths.write_text(markdown_path, as_markdown(table, results))
  return json_path, markdown_path
