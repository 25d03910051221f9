"""Test helpers: configs loaded from configs/, shrunk to run in seconds on a CPU; the fixtures,
references and multi-process runs that several test files share. Cheap to import (subprocess
scripts import it too): torch, TensorFlow and the tasks are imported where a helper needs them."""

import glob
import importlib.util
import json
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The suite's XLA flag (tests/conftest.py): LLVM at -O0 compiles a tiny model's step ~30% faster
# (tests/test_accumulation.py's DETR test: 251-298 s against 310-432 s, alternating, load 9) and
# runs it slower, which only jobs of many steps notice: they run with optimised_code_env().
FAST_COMPILE = '--xla_backend_optimization_level=0'


def optimised_code_env() -> dict:
  """A child process's environment change that takes XLA's optimised code back."""
  return {'XLA_FLAGS': os.environ.get('XLA_FLAGS', '').replace(FAST_COMPILE, '').strip()}


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


# Multi-process runs: jax.distributed processes on 127.0.0.1, each with its CPU devices.

MULTIHOST_SCRIPT = os.path.join(ROOT, 'tests', 'multihost_run.py')


def multihost_env(devices: int) -> dict:
  """The environment of a child process with `devices` CPU devices that imports the repository
  and the tests' helpers."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  return dict(os.environ, XLA_FLAGS=flags.strip(),
              PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, 'tests')]))


def free_port() -> int:
  """A TCP port on 127.0.0.1 that no one listens on now (for a jax.distributed coordinator)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_two_processes(workdir, *changes):
  """Trains tests/multihost_run.py's job in two processes of 2 devices each, with config
  `changes` ('KEY=VALUE'); stdout and stderr of each, after both ended well."""
  port = free_port()
  jobs = [subprocess.Popen([sys.executable, MULTIHOST_SCRIPT, str(i), '2', str(port), workdir,
                            *changes],
                           env=multihost_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
          for i in range(2)]
  outputs = []
  try:
    for job in jobs:
      outputs.append(job.communicate(timeout=300))
  finally:
    for job in jobs:
      job.kill()
  for job, (out, err) in zip(jobs, outputs):
    assert job.returncode == 0, err[-3000:]
  return outputs


# DETR: a COCO-format fixture, mocked TFDS COCO, the official checkpoint's layout, HF's model.

# A small COCO-format split: non-contiguous image ids, categories listed out of order, a crowd
# region, a zero-width box, a box outside its image, a box half outside, an image without boxes.
COCO_FIXTURE_IMAGES = [
    {'id': 7, 'file_name': 'a.png', 'width': 40, 'height': 30},
    {'id': 42, 'file_name': 'sub/b.jpg', 'width': 32, 'height': 48},
    {'id': 1000, 'file_name': 'c.png', 'width': 36, 'height': 36},
]
COCO_FIXTURE_CATEGORIES = [{'id': 7, 'name': 'bird'}, {'id': 1, 'name': 'cat'},
                           {'id': 3, 'name': 'dog'}]
COCO_FIXTURE_ANNOTATIONS = [
    {'id': 1, 'image_id': 7, 'category_id': 3, 'bbox': [2, 3, 10, 8], 'area': 80, 'iscrowd': 0},
    {'id': 2, 'image_id': 7, 'category_id': 7, 'bbox': [20, 5, 15, 20], 'area': 300,
     'iscrowd': 0},
    {'id': 3, 'image_id': 7, 'category_id': 1, 'bbox': [0, 0, 6, 6], 'area': 36, 'iscrowd': 1},
    {'id': 4, 'image_id': 42, 'category_id': 1, 'bbox': [4, 6, 20, 30], 'area': 600,
     'iscrowd': 0},
    {'id': 5, 'image_id': 42, 'category_id': 3, 'bbox': [3, 3, 0, 5], 'area': 0, 'iscrowd': 0},
    {'id': 6, 'image_id': 42, 'category_id': 7, 'bbox': [40, 50, 10, 10], 'area': 100,
     'iscrowd': 0},
    {'id': 7, 'image_id': 42, 'category_id': 7, 'bbox': [25, 40, 20, 20], 'area': 400,
     'iscrowd': 0},
]


def write_coco_folder(root, split='val', annotations=tuple(COCO_FIXTURE_ANNOTATIONS)):
  """Writes root/<split>/ images (boxes painted in) and root/annotations/instances_<split>.json;
  returns an input config for it."""
  import ml_collections
  from PIL import Image
  rng = np.random.default_rng(0)
  for image in COCO_FIXTURE_IMAGES:
    pixels = np.full((image['height'], image['width'], 3), 60, np.uint8)
    for ann in annotations:
      if ann['image_id'] == image['id'] and not ann['iscrowd']:
        x, y, w, h = ann['bbox']
        pixels[y:y + h, x:x + w] = rng.integers(120, 256, 3)
    path = os.path.join(root, split, image['file_name'])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path)
  os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
  with open(os.path.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
    json.dump({'images': COCO_FIXTURE_IMAGES, 'annotations': list(annotations),
               'categories': COCO_FIXTURE_CATEGORIES}, f)
  return ml_collections.ConfigDict(dict(
      source='coco_folder', data_dir=str(root), category_layout='coco_ids', max_boxes=4,
      augment='none', eval_scale=48, max_size=64, pad_size=(64, 64)))


def mock_coco_examples():
  """Hand-made TFDS coco/2017 examples: (example, expected raw fields)."""
  rng = np.random.default_rng(1)
  return [
      {'image': rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), 'image/filename': 'x.jpg',
       'image/id': 139, 'objects': {
           'bbox': np.array([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0],
                             [0.3, 0.3, 0.3, 0.9], [0.2, 0.1, 0.4, 0.5]], np.float32),
           'label': np.array([0, 11, 5, 79]), 'is_crowd': np.array([False, True, False, False]),
           'area': np.array([10, 600, 0, 20]), 'id': np.array([1, 2, 3, 4])}},
      {'image': rng.integers(0, 256, (16, 12, 3), dtype=np.uint8), 'image/filename': 'y.jpg',
       'image/id': 285, 'objects': {
           'bbox': np.zeros((0, 4), np.float32), 'label': np.zeros(0, np.int64),
           'is_crowd': np.zeros(0, bool), 'area': np.zeros(0, np.int64),
           'id': np.zeros(0, np.int64)}},
  ]


def mock_coco(examples):
  """tfds.testing.mock_data serving `examples` as coco/2017, encoded and decoded by TFDS'
  own features (its random mock gives objects fields of different lengths)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    del split, read_config, kwargs
    features = self.info.features
    encoded = [features.encode_example(ex) for ex in examples]
    spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.tf_dtype),
                                 features.get_serialized_info())
    ds = tf.data.Dataset.from_generator(lambda: iter(encoded), output_signature=spec)
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(examples)))
    return ds.map(lambda ex: features.decode_example(ex, decoders=decoders))

  return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def official_detr_state_dict():
  """A random state dict in the layout of `detr-r50-e632da11.pth` (torch's own transformer
  layers use the same names as DETR's; torchvision's ResNet is the backbone)."""
  import torch
  import torchvision
  state = {}
  for kind, count in (('encoder', 6), ('decoder', 6)):
    layer_class = (torch.nn.TransformerEncoderLayer if kind == 'encoder'
                   else torch.nn.TransformerDecoderLayer)
    for i in range(count):
      for key, value in layer_class(256, 8, 2048).state_dict().items():
        state[f'transformer.{kind}.layers.{i}.{key}'] = value
  state['transformer.decoder.norm.weight'] = torch.ones(256)
  state['transformer.decoder.norm.bias'] = torch.zeros(256)
  state['class_embed.weight'], state['class_embed.bias'] = torch.randn(92, 256), torch.randn(92)
  for i, (out, inp) in enumerate([(256, 256), (256, 256), (4, 256)]):
    state[f'bbox_embed.layers.{i}.weight'] = torch.randn(out, inp)
    state[f'bbox_embed.layers.{i}.bias'] = torch.randn(out)
  state['query_embed.weight'] = torch.randn(100, 256)
  state['input_proj.weight'] = torch.randn(256, 2048, 1, 1)
  state['input_proj.bias'] = torch.randn(256)
  for key, value in torchvision.models.resnet50().state_dict().items():
    if not key.startswith('fc.') and not key.endswith('num_batches_tracked'):
      state[f'backbone.0.body.{key}'] = value
  return state


def randomise_hf_detr(model):
  """An HF DETR model with every tensor random, batch-norm statistics and batch- and group-norm
  (the panoptic head's `.norm.`) affine terms included, so that each weight matters."""
  import torch
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for key, tensor in model.state_dict().items():
      noise = torch.randn(tensor.shape, generator=generator)
      if key.endswith('running_var'):
        tensor.copy_(noise.abs() + 0.5)
      elif tensor.ndim == 1 and ('backbone' in key or '.norm.' in key):
        tensor.copy_((1.0 if key.endswith('weight') else 0.0) + 0.1 * noise)
      elif tensor.ndim <= 2:
        tensor.add_(0.02 * noise)
  return model


# DETR's padding buckets.

def canvas_batch(sizes, ids, canvas=(96, 96)):
  """Eval-like canvas-padded examples of image `sizes`, pixels and boxes keyed by their ids."""
  n = len(sizes)
  batch = {'image': np.zeros((n,) + canvas + (3,), np.float32),
           'pixel_mask': np.zeros((n,) + canvas, np.int32),
           'boxes': np.tile(np.asarray(ids, np.float32)[:, None, None], (1, 2, 4)),
           'image_id': np.asarray(ids, np.int32), '_mask': (np.asarray(ids) > 0).astype(np.int32)}
  for i, ((h, w), image_id) in enumerate(zip(sizes, ids)):
    batch['image'][i, :h, :w] = image_id
    batch['pixel_mask'][i, :h, :w] = image_id > 0
  return batch


def augmented_shapes_task(**input_fields):
  """The shapes DetectionTask with DETR's augmentation shrunk to a 96x96 canvas, four buckets
  in windows of 4 batches of 8, and 64 training images; `input_fields` change config.input."""
  from detr_jax.detection import DetectionTask
  config = load_config('detr_shapes')
  fields = dict(augment='detr', train_scales=(32, 48, 64), max_size=96,
                crop_resize_scales=(48, 64), crop_min=24, crop_max=56, pad_size=(96, 96),
                batch_size=8, pad_buckets=((32, 96), (96, 32), (64, 96), (96, 64)),
                bucket_window=4)
  config.input.update(dict(fields, **input_fields))
  config.input.shapes.update(num_train=64)
  return DetectionTask(config)


# Segmenter: the official checkpoint's layout and code.

def official_segmenter_shapes(d, layers, patch, grid, n_cls, decoder, decoder_layers=2,
                              distilled=False, d_ff=None):
  """Key -> shape of an official Segmenter state dict (reference/segmenter.md §5.2), written
  out from the table: the ImageNet heads included."""
  d_ff = d_ff or 4 * d
  prefix = 2 if distilled else 1
  shapes = {'encoder.cls_token': (1, 1, d)}
  if distilled:
    shapes['encoder.dist_token'] = (1, 1, d)
  shapes['encoder.pos_embed'] = (1, prefix + grid[0] * grid[1], d)
  shapes['encoder.patch_embed.proj.weight'] = (d, 3, patch, patch)
  shapes['encoder.patch_embed.proj.bias'] = (d,)
  if distilled:
    shapes.update({'encoder.head_dist.weight': (1000, d), 'encoder.head_dist.bias': (1000,)})

  def block(p):
    return {f'{p}.norm1.weight': (d,), f'{p}.norm1.bias': (d,),
            f'{p}.attn.qkv.weight': (3 * d, d), f'{p}.attn.qkv.bias': (3 * d,),
            f'{p}.attn.proj.weight': (d, d), f'{p}.attn.proj.bias': (d,),
            f'{p}.norm2.weight': (d,), f'{p}.norm2.bias': (d,),
            f'{p}.mlp.fc1.weight': (d_ff, d), f'{p}.mlp.fc1.bias': (d_ff,),
            f'{p}.mlp.fc2.weight': (d, d_ff), f'{p}.mlp.fc2.bias': (d,)}
  for i in range(layers):
    shapes.update(block(f'encoder.blocks.{i}'))
  shapes.update({'encoder.norm.weight': (d,), 'encoder.norm.bias': (d,),
                 'encoder.head.weight': (1000, d), 'encoder.head.bias': (1000,)})
  if decoder == 'linear':
    shapes.update({'decoder.head.weight': (n_cls, d), 'decoder.head.bias': (n_cls,)})
  else:
    shapes.update({'decoder.cls_emb': (1, n_cls, d), 'decoder.proj_patch': (d, d),
                   'decoder.proj_classes': (d, d)})
    for i in range(decoder_layers):
      shapes.update(block(f'decoder.blocks.{i}'))
    shapes.update({'decoder.proj_dec.weight': (d, d), 'decoder.proj_dec.bias': (d,),
                   'decoder.decoder_norm.weight': (d,), 'decoder.decoder_norm.bias': (d,),
                   'decoder.mask_norm.weight': (n_cls,), 'decoder.mask_norm.bias': (n_cls,)})
  return shapes


def torch_resize_pos_embed(pos, grid_old, grid_new, num_prefix):
  """Segmenter's resize_pos_embed: F.interpolate bilinear, align_corners unset (False)."""
  import torch
  import torch.nn.functional as F
  prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
  grid = grid.reshape(1, *grid_old, -1).permute(0, 3, 1, 2)
  grid = F.interpolate(grid, size=grid_new, mode='bilinear')
  return torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], dim=1)


def mmseg_mean_iou(predictions, labels, num_classes, ignore_index=255):
  """mmseg.core.mean_iou: per image intersect_and_union with torch.histc-like histograms,
  areas summed over the dataset, IoU = I / U, nanmean."""
  total = {k: np.zeros(num_classes) for k in ('intersect', 'union', 'pred', 'label')}
  for pred, label in zip(predictions, labels):
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]
    intersect = pred[pred == label]
    hist = lambda x: np.histogram(x, bins=num_classes, range=(0, num_classes - 1))[0]
    area_intersect, area_pred, area_label = hist(intersect), hist(pred), hist(label)
    total['intersect'] += area_intersect
    total['union'] += area_pred + area_label - area_intersect
    total['pred'] += area_pred
    total['label'] += area_label
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = total['intersect'] / total['union']
    acc = total['intersect'] / total['label']
  return {'iou': iou, 'miou': np.nanmean(iou), 'mean_accuracy': np.nanmean(acc),
          'pixel_accuracy': total['intersect'].sum() / total['label'].sum()}


def random_variables(model, *inputs, **kwargs):
  """Every variable of `model` random (batch-norm variances positive), so that each weight
  matters; from the shapes alone, as a full init would take longer than the tests."""
  import flax
  import jax
  from vit_jax.framework import weights
  shapes = flax.linen.meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), *inputs, **kwargs)))
  flat, rng = weights.flatten(shapes), np.random.default_rng(0)
  return weights.unflatten({
      key: (np.abs(noise) + 0.5 if key.endswith('/var') else 0.3 * noise).astype(np.float32)
      for key, noise in ((k, rng.standard_normal(v.shape)) for k, v in flat.items())})
