"""Test helpers: configs loaded from configs/, shrunk to run in seconds on a CPU."""

import glob
import importlib.util
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, *args):
  """configs/<name>.py's get_config(*args), unlocked so tests can shrink it."""
  path = os.path.join(ROOT, 'configs', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'configs_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def tiny_digits_config(**changes):
  """The digits job with a 1-layer ViT and a handful of steps; no prediction pictures (their
  forward would compile in every run; draw_examples=4 turns them on)."""
  config = load_config('vit_digits')
  config.model.update(hidden_size=32, num_layers=1, num_heads=4, mlp_dim=64)
  config.input.update(batch_size=32, eval_batch_size=64)
  config.update(total_steps=6, log_every=1, eval_every=1000, checkpoint_every=3, draw_examples=0)
  for key, value in changes.items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def event_images(workdir: str) -> dict[str, dict[int, np.ndarray]]:
  """The images in `workdir`'s TensorBoard event files: tag -> step -> uint8 (H, W, C)."""
  import tensorflow as tf
  images = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'images':
          png = value.tensor.string_val[2]  # [width, height, encoded image, ...]
          images.setdefault(value.tag, {})[event.step] = tf.io.decode_png(png).numpy()
  return images


def assert_prediction_pictures(workdir: str, steps, count: int = 4) -> dict:
  """The run wrote pictures of its predictions on `count` eval examples at each eval step:
  RGB, one size per example at every step, not blank. Returns them (`event_images`)."""
  images = event_images(workdir)
  assert sorted(images) == sorted(f'eval_predictions/{i}' for i in range(count)), sorted(images)
  for tag, by_step in images.items():
    assert sorted(by_step) == list(steps), (tag, sorted(by_step))
    shapes = {image.shape for image in by_step.values()}
    assert len(shapes) == 1 and shapes.pop()[2] == 3, (tag, shapes)
    assert all(image.std() > 10 for image in by_step.values()), tag
  return images


def run_module(args, env=None, timeout=600):
  """Runs `python -m ...` in a subprocess from the repository root."""
  full_env = dict(os.environ, **(env or {}))
  return subprocess.run([sys.executable, '-m'] + args, cwd=ROOT, env=full_env, timeout=timeout,
                        capture_output=True, text=True)


class RunsCode:
  """Unpickling this calls `open(marker, 'w')`: a checkpoint that carries code."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, 'w'))


def write_code_carrying_pickle(path: str, marker: str) -> None:
  """A `.pth`-like file whose unpickling would create `marker` (torch.load without
  weights_only would run it)."""
  import pickle
  with open(path, 'wb') as f:
    pickle.dump({'model': RunsCode(marker)}, f, protocol=2)


def assert_one_line_error(result, *fragments):
  """The run ended as a user mistake: exit code 2, no traceback, a last line `error: ...`
  containing every fragment."""
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ')
  for fragment in fragments:
    assert fragment in last, last
