"""DETR against Deformable DETR on equal footing: the shapes jobs' AP50 by step and by training
time over seeds, and both models' boxes on the same validation images after the same time.

A run is a workdir of `python -m detr_jax.main`; its AP50 curve comes from its TensorBoard events
(`eval_AP50` at each eval). Training time is steps x the seconds a train step takes, measured
for both models in one process in alternating rounds (`step_seconds`): a run's own wall clock
depends on what else the machine runs, and the first step's compile (minutes for Deformable DETR
on a CPU, seconds on an accelerator) and the evals are left out.
"""

import glob
import os
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.framework import drawing
from vit_jax.framework.errors import UserError

METRIC = 'eval_AP50'


def read_curve(workdir: str) -> dict[int, float]:
  """The run's AP50 at each eval step, from its event files (several when it was resumed)."""
  import tensorflow as tf  # The input pipeline's dependency; only this reader needs it here.
  files = sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*')))
  if not files:
    raise UserError(f'no TensorBoard events in {workdir}: train it first (python -m '
                    f'detr_jax.main --workdir={workdir} ...)')
  ap50 = {}
  for path in files:
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == METRIC:
          ap50[int(event.step)] = float(tf.make_ndarray(value.tensor))
  if not ap50:
    raise UserError(f'{workdir} has no eval yet: let the run reach its first eval '
                    f'(--config.eval_every)')
  return ap50


def step_seconds(configs: Mapping[str, Any], steps: int = 20, repeats: int = 3) -> dict[str, float]:
  """Seconds per train step of each config's task on its first training batch: the median of
  `repeats` rounds of `steps` steps, the models taking turns (after one compiled warm-up step
  each), so that a change in the machine's load falls on all of them."""
  from vit_jax.framework import optim, registry, train  # The loop: heavy, for timing only.
  runs = {}
  for name, config in configs.items():
    task = registry.make_task(config)
    tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
    state = train.init_state(task, tx, jax.random.PRNGKey(config.seed))
    batch = jax.tree.map(jnp.asarray, next(iter(task.train_input(start_example=0))))
    step = jax.jit(train.make_train_step(task, tx, schedule, 1))
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    runs[name] = [step, state, batch]
  times = {name: [] for name in configs}
  for _ in range(repeats):
    for name, run in runs.items():
      step, state, batch = run
      start = time.perf_counter()
      for _ in range(steps):
        state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
      times[name].append((time.perf_counter() - start) / steps)
      run[1] = state
  return {name: float(np.median(spent)) for name, spent in times.items()}


def ap50_within(curve: Mapping[int, float], seconds: float,
                seconds_per_step: float) -> tuple[int, float]:
  """(step, AP50) of the last eval reached within `seconds` of training; (0, 0.0) if none."""
  step = last_step_within(seconds, seconds_per_step, curve)
  return (0, 0.0) if step is None else (step, curve[step])


def _spread(values: Sequence[float]) -> str:
  values = np.asarray(values)
  if len(values) == 1:
    return f'{values[0]:.3f}'
  return f'{values.mean():.3f} ± {values.std(ddof=1):.3f} (min {values.min():.3f})'


def table(curves: Mapping[str, Sequence[Mapping[int, float]]],
          seconds_per_step: Mapping[str, float]) -> str:
  """Markdown: each model's AP50 (mean ± std over seeds, and the worst seed) and training
  minutes at every eval step; then the AP50 each model reaches within the other's whole run."""
  names = list(curves)
  steps = sorted(set.intersection(*(set(c) for runs in curves.values() for c in runs)))
  lines = ['| step | ' + ' | '.join(f'{n} AP50 | {n} min' for n in names) + ' |',
           '| ---: |' + ' ---: | ---: |' * len(names)]
  for step in steps:
    cells = []
    for name in names:
      cells += [_spread([c[step] for c in curves[name]]),
                f'{step * seconds_per_step[name] / 60:.1f}']
    lines.append(f'| {step} | ' + ' | '.join(cells) + ' |')
  lines.append('')
  for name in names:
    for other in names:
      if other != name:
        last = min(max(c) for c in curves[other])
        budget = last * seconds_per_step[other]
        reached = [ap50_within(c, budget, seconds_per_step[name]) for c in curves[name]]
        lines.append(f'Within {other}\'s {last} steps ({budget / 60:.1f} min), {name} reaches '
                     f'AP50 {_spread([ap for _, ap in reached])} (step '
                     f'{", ".join(str(s) for s, _ in reached)}).')
  return '\n'.join(lines)


def _stack(panels: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
  """Equal-width panels top to bottom with white gaps."""
  white = np.full((gap, panels[0].shape[1], 3), 255, np.uint8)
  parts = [part for panel in panels for part in (panel, white)][:-1]
  return np.concatenate(parts, axis=0)


def predictions_figure(detections: Mapping[str, Sequence[dict]], class_names,
                       threshold: float = 0.0, top_k: Optional[int] = None) -> np.ndarray:
  """Columns: the ground truth, then each model's boxes scoring at least `threshold` (its best
  `top_k`; None: as many as the image has objects, which compares a softmax model's scores
  with a sigmoid one's without a common threshold), a row per image. detections[title]: that
  model's DetectionTask.detections on the same images."""
  first = next(iter(detections.values()))
  columns = {'ground truth': [(d, d['true_boxes'], d['true_labels'], None) for d in first]}
  for title, found in detections.items():
    columns[title] = []
    for d in found:
      best = np.argsort(-d['scores'], kind='stable')[:top_k or len(d['true_labels'])]
      kept = [k for k in best if d['scores'][k] >= threshold]
      columns[title].append((d, d['boxes'][kept], d['labels'][kept], d['scores'][kept]))
  panels = {}
  for title, rows in columns.items():
    panels[title] = []
    for d, boxes, labels, scores in rows:
      factor = drawing.enlargement(d['pixels'].shape)
      big = drawing.enlarge(drawing.to_rgb(d['pixels']), factor)
      panels[title].append(drawing.draw_boxes(big, np.asarray(boxes) * factor, labels,
                                              class_names, scores))
  return drawing.side_by_side([_stack(p) for p in panels.values()], list(panels))


def last_step_within(seconds: float, seconds_per_step: float,
                     steps: Sequence[int]) -> Optional[int]:
  """The last of `steps` (evals, saved checkpoints) reached within `seconds` of training (None
  if none)."""
  reached = [s for s in sorted(steps) if s * seconds_per_step <= seconds]
  return reached[-1] if reached else None
