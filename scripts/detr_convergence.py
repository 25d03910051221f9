"""DETR against Deformable DETR on equal footing: both offline shapes jobs over seeds, their AP50
by step and by training time, and both models' boxes on the same validation images after the
same training time (the README's figure). Training time is steps x each model's seconds per
train step, measured here with the models taking turns (detr_jax/convergence.py).

  python scripts/detr_convergence.py --workdir=workdirs/convergence
  python scripts/detr_convergence.py --workdir=workdirs/convergence --no_train   # read only
      [--seeds=0,1,2] [--every=1000] [--total_steps=N] [--figure=docs/figures/detr_convergence.png]
      [--seconds_per_step=DETR,DEFORMABLE]   # seconds measured before: no timing

The runs train in turn (seed 0 DETR, seed 0 Deformable DETR, seed 1 DETR, ...); a finished run
is read, not repeated, and a stopped one resumes. With --no_train the finished runs are read
(the first seed's run even if unfinished, when none is). Each is `python -m detr_jax.main --config=configs/<job>_shapes.py` with
--config.seed and an eval and checkpoint every --every steps (all checkpoints kept).
"""

import argparse
import os
import subprocess
import sys

import jax
from PIL import Image

from detr_jax import convergence
from vit_jax.framework import checkpoint, registry, reproduce
from vit_jax.framework.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'configs')
JOBS = {'DETR': 'detr_shapes.py', 'Deformable DETR': 'deformable_detr_shapes.py'}


def _workdir(root: str, name: str, seed: int) -> str:
  return os.path.join(root, f'{JOBS[name][:-len("_shapes.py")]}_seed{seed}')


def _config(name: str, seed: int, total_steps):
  config = reproduce.load_config(CONFIGS, JOBS[name])
  config.seed = seed
  if total_steps:
    config.total_steps = total_steps
  return config


def train(root: str, name: str, seed: int, every: int, total_steps) -> None:
  """Runs (or resumes) one job unless its final_metrics.json says it finished."""
  workdir = _workdir(root, name, seed)
  if os.path.exists(os.path.join(workdir, 'final_metrics.json')):
    return
  total = _config(name, seed, total_steps).total_steps
  print(f'training {name}, seed {seed}, in {workdir}', flush=True)
  subprocess.run([sys.executable, '-m', 'detr_jax.main',
                  f'--config={os.path.join(CONFIGS, JOBS[name])}', f'--workdir={workdir}',
                  f'--config.seed={seed}', f'--config.total_steps={total}',
                  f'--config.eval_every={every}', f'--config.checkpoint_every={every}',
                  f'--config.keep_checkpoints={total // every + 1}'], check=True)


def figure(root: str, seed: int, curves: dict, seconds_per_step: dict, total_steps) -> Image.Image:
  """Both models of `seed` on the same validation images, each at its last checkpoint within
  the training time of the run that takes less: each model's best boxes, as many as the image
  has objects."""
  budget = min(max(curve) * seconds_per_step[name] for name, curve in curves.items())
  detections, class_names = {}, None
  for name in curves:
    workdir = _workdir(root, name, seed)
    step = convergence.last_step_within(budget, seconds_per_step[name],
                                        checkpoint.saved_steps(workdir))
    if step is None:
      raise UserError(f'{workdir} has no checkpoint within {budget / 60:.1f} min of training: '
                      f'run it with checkpoints at least as often as its evals (--every)')
    config = _config(name, seed, total_steps)
    task = registry.make_task(config)
    state = checkpoint.load_state(workdir, step)
    variables = {'params': state['params'], **state['model_state']}
    examples = task.drawn_examples()
    outputs = jax.device_get(jax.jit(task.draw_outputs)(variables, examples))
    minutes = step * seconds_per_step[name] / 60
    detections[f'{name}: {step} steps, {minutes:.1f} min'] = task.detections(examples, outputs)
    class_names = task.class_names
  picture = Image.fromarray(convergence.predictions_figure(detections, class_names))
  return picture.quantize(256, dither=Image.Dither.NONE)  # Few colours: a small PNG.


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='one subfolder per job and seed')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--every', type=int, default=1000, help='steps between evals')
  parser.add_argument('--total_steps', type=int, help='default: the configs\' (8000)')
  parser.add_argument('--no_train', action='store_true', help='read the runs that exist')
  parser.add_argument('--timing_steps', type=int, default=20,
                      help='train steps per timed round (the models alternate, 3 rounds)')
  parser.add_argument('--seconds_per_step', type=lambda text: [float(x) for x in text.split(',')],
                      help='DETR,DEFORMABLE seconds per train step, measured before: no timing')
  parser.add_argument('--figure', help='where the PNG goes (the first seed\'s runs)')
  args = parser.parse_args(argv)
  try:
    seeds = [int(s) for s in args.seeds.split(',')]
  except ValueError:
    raise SystemExit(f'error: --seeds={args.seeds} is not a comma-separated list of integers')
  try:
    if not args.no_train:
      for seed in seeds:
        for name in JOBS:
          train(args.workdir, name, seed, args.every, args.total_steps)
    curves = {}
    for name in JOBS:
      workdirs = [_workdir(args.workdir, name, seed) for seed in seeds]
      finished = [w for w in workdirs if os.path.exists(os.path.join(w, 'final_metrics.json'))]
      for workdir in sorted(set(workdirs) - set(finished)):
        print(f'{workdir} has not finished: left out')
      curves[name] = [convergence.read_curve(w) for w in finished or workdirs[:1]]
    if args.seconds_per_step:
      seconds = dict(zip(JOBS, args.seconds_per_step))
    else:
      seconds = convergence.step_seconds(
          {name: _config(name, seeds[0], args.total_steps) for name in JOBS}, args.timing_steps)
    timings = ', '.join(f'{name} {s:.3f} s' for name, s in seconds.items())
    counts = ', '.join(f'{name} {len(runs)}' for name, runs in curves.items())
    print(f'AP50 on the 256 validation images, seeds run: {counts} (mean ± std, worst seed); '
          f'training minutes = steps x seconds per train step measured here in alternating '
          f'rounds ({timings}), without compiles and evals:\n')
    print(convergence.table(curves, seconds))
    if args.figure:
      first = {name: runs[0] for name, runs in curves.items()}
      figure(args.workdir, seeds[0], first, seconds, args.total_steps).save(args.figure,
                                                                            optimize=True)
      print(f'\nfigure: {args.figure}')
  except (UserError, subprocess.CalledProcessError) as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  main(sys.argv[1:])
