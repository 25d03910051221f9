"""DETR against Deformable DETR on equal footing: the shapes jobs' AP50 by step and by training
time over seeds, and both models' boxes on the same validation images after the same time.

A run is a workdir of `python -m detr_jax.main`; its curve comes from its TensorBoard events
(`eval_AP50` at each eval, the time `train_loss` was written at each log step). Training time at
step s runs from the first step's log: that step's compile (minutes for Deformable DETR on a
CPU, seconds on an accelerator) is left out, the evals are counted. A resumed run's time
includes its restart.
"""

import dataclasses
import glob
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from vit_jax.framework import drawing
from vit_jax.framework.errors import UserError

METRIC = 'eval_AP50'


@dataclasses.dataclass(frozen=True)
class Curve:
  """One run: AP50 at each eval step, and the training seconds at each logged step."""
  ap50: Mapping[int, float]
  seconds: Mapping[int, float]

  def seconds_at(self, step: int) -> float:
    """Training seconds at `step`, interpolated between the logged steps around it."""
    steps = sorted(self.seconds)
    return float(np.interp(step, steps, [self.seconds[s] for s in steps]))

  def ap50_by(self, seconds: float) -> tuple[int, float]:
    """(step, AP50) of the last eval reached within `seconds` of training; (0, 0.0) if none."""
    reached = [s for s in sorted(self.ap50) if self.seconds_at(s) <= seconds]
    return (reached[-1], self.ap50[reached[-1]]) if reached else (0, 0.0)


def read_curve(workdir: str) -> Curve:
  """The run's curve from its event files (several when it was resumed)."""
  import tensorflow as tf  # The input pipeline's dependency; only this reader needs it here.
  files = sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*')))
  if not files:
    raise UserError(f'no TensorBoard events in {workdir}: train it first (python -m '
                    f'detr_jax.main --workdir={workdir} ...)')
  ap50, logged = {}, {}
  for path in files:
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == METRIC:
          ap50[int(event.step)] = float(tf.make_ndarray(value.tensor))
        elif value.tag == 'train_loss':  # Written when the step has finished.
          logged[int(event.step)] = event.wall_time
  if not ap50 or 1 not in logged:
    raise UserError(f'{workdir} has no eval or no first-step log yet: let the run reach its '
                    f'first eval (--config.eval_every)')
  return Curve(ap50, {step: t - logged[1] for step, t in logged.items()})


def _spread(values: Sequence[float]) -> str:
  values = np.asarray(values)
  if len(values) == 1:
    return f'{values[0]:.3f}'
  return f'{values.mean():.3f} ± {values.std(ddof=1):.3f} (min {values.min():.3f})'


def table(curves: Mapping[str, Sequence[Curve]]) -> str:
  """Markdown: each model's AP50 (mean ± std over seeds, and the worst seed) and training
  minutes at every eval step; then each model's AP50 reached within the other's total time."""
  names = list(curves)
  steps = sorted(set.intersection(*(set(c.ap50) for runs in curves.values() for c in runs)))
  lines = ['| step | ' + ' | '.join(f'{n} AP50 | {n} min' for n in names) + ' |',
           '| ---: |' + ' ---: | ---: |' * len(names)]
  for step in steps:
    cells = []
    for name in names:
      runs = curves[name]
      minutes = np.mean([c.seconds_at(step) for c in runs]) / 60
      cells += [_spread([c.ap50[step] for c in runs]), f'{minutes:.1f}']
    lines.append(f'| {step} | ' + ' | '.join(cells) + ' |')
  lines.append('')
  for name in names:
    for other in names:
      if other == name:
        continue
      budget = np.mean([c.seconds_at(max(c.ap50)) for c in curves[other]])
      reached = [c.ap50_by(budget) for c in curves[name]]
      lines.append(f'Within {other}\'s {budget / 60:.1f} min ({len(curves[other])} runs, mean), '
                   f'{name} reaches AP50 {_spread([ap for _, ap in reached])} at steps '
                   f'{", ".join(str(s) for s, _ in reached)}.')
  return '\n'.join(lines)


def _stack(panels: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
  """Equal-width panels top to bottom with white gaps."""
  white = np.full((gap, panels[0].shape[1], 3), 255, np.uint8)
  parts = [part for panel in panels for part in (panel, white)][:-1]
  return np.concatenate(parts, axis=0)


def predictions_figure(detections: Mapping[str, Sequence[dict]], class_names, threshold: float,
                       top_k: int) -> np.ndarray:
  """Columns: the ground truth, then each model's boxes scoring at least `threshold` (its best
  `top_k`), a row per image. detections[title]: that model's DetectionTask.detections on the
  same images."""
  first = next(iter(detections.values()))
  columns = {'ground truth': [(d, d['true_boxes'], d['true_labels'], None) for d in first]}
  for title, found in detections.items():
    columns[title] = []
    for d in found:
      kept = [k for k in np.argsort(-d['scores'], kind='stable')[:top_k]
              if d['scores'][k] >= threshold]
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


def checkpoint_within(curve: Curve, seconds: float, saved: Sequence[int]) -> Optional[int]:
  """The last saved step reached within `seconds` of training (None if none)."""
  reached = [s for s in sorted(saved) if curve.seconds_at(s) <= seconds]
  return reached[-1] if reached else None
