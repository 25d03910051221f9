"""Training input throughput per CPU core: each task's own decode + augmentation, from JPEGs on disk.

  python scripts/input_benchmark.py --task=vit [--images=64] [--batch=8] [--seconds=20]
  python scripts/input_benchmark.py --task=deit
  python scripts/input_benchmark.py --task=detr
  python scripts/input_benchmark.py --task=segmenter

Writes photo-like JPEGs (crops of scikit-learn's two bundled photos, so that they compress and
decode like real photos, not like noise) at the sizes of the paper's data into a temporary
folder laid out as the task's folder source wants it, then runs the recipe's own source
(`make_source`: file reading, label decoding) and `train_preprocess` (decode, augmentation,
normalisation, padding) in tf.data, with tf.data held to `--threads` threads (default 1) and
TF ops to one thread each. Rows:

  vit        configs/vit_b16_i21k.py (inception crop to 224) and configs/vit_finetune.py
             (inception crop to 384), on ImageNet-sized 500x375 JPEGs
  deit       configs/deit.py:B (bicubic RandomResizedCrop to 224, flip, RandAugment
             rand-m9-mstd0.5-inc1, mean/std, random erasing 0.25, then Mixup / CutMix on the
             batch) on the same JPEGs; repeated augmentation changes no per-image work
  detr       configs/detr_coco.py:r50 (flip, multi-scale resize, long side <= 1333, padding) on
             COCO-sized 640x480 JPEGs with 7 boxes each
  segmenter  configs/segmenter_ade20k.py (random resize of the 2048x512 scale by 0.5-2, 512 crop,
             flip, photometric distortion) on ADE20K-sized 683x512 JPEGs with PNG label maps

Prints images/s of wall time and images per CPU-second of this process (every thread, the
Python thread that hands out the batches included): the second is the per-core figure, and the
one to trust on a shared machine, where the wall time also counts other people's work.
"""

import argparse
import dataclasses
import gc
import json
import os
import tempfile
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from PIL import Image

from detr_jax import detection_input
from segmenter_jax import segmentation_input
from vit_jax.classification import input as classification_input
from vit_jax.framework import input_pipeline, reproduce
from vit_jax.framework.errors import UserError

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
TASKS = ('vit', 'deit', 'detr', 'segmenter')


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One row: a recipe's config, the size of the images written for it, and its input module."""
  name: str
  config: str  # 'FILE.py:ARG' under configs/.
  width: int
  height: int
  task: str


RECIPES = {
    'vit': (Recipe('ViT-B/16 i21k pre-training, 224', 'vit_b16_i21k.py', 500, 375, 'vit'),
            Recipe('ViT-B/16 fine-tuning, 384', 'vit_finetune.py:b16,imagenet2012', 500, 375,
                   'vit')),
    'deit': (Recipe('DeiT-B ImageNet, 224: RandAugment, erasing, Mixup/CutMix', 'deit.py:B', 500,
                    375, 'vit'),),
    'detr': (Recipe('DETR-R50 COCO, multi-scale to 1333', 'detr_coco.py:r50', 640, 480,
                    'detr'),),
    'segmenter': (Recipe('Segmenter ADE20K, 512 crop', 'segmenter_ade20k.py:s16_mask', 683, 512,
                         'segmenter'),),
}


@dataclasses.dataclass(frozen=True)
class Throughput:
  recipe: Recipe
  images: int  # Timed images (after the warm-up batches).
  wall_seconds: float
  cpu_seconds: float  # This process's CPU time over the same span, all threads.
  shapes: dict  # Key -> shape of a batch, as the train step would get it.

  @property
  def per_second(self) -> float:
    return self.images / self.wall_seconds

  @property
  def per_cpu_second(self) -> float:
    return self.images / self.cpu_seconds


# ----------------------------------------------------------------------------- data on disk


def _photos() -> list[np.ndarray]:
  from sklearn import datasets  # Two bundled 427x640 photos, no download.
  return [np.asarray(image) for image in datasets.load_sample_images().images]


def photo(rng: np.random.Generator, photos: list[np.ndarray], width: int,
          height: int) -> np.ndarray:
  """A uint8 (height, width, 3) picture: a random crop of one of `photos`, resized, maybe
  mirrored, so that no two files are the same."""
  source = photos[rng.integers(len(photos))]
  rows, cols = source.shape[:2]
  scale = rng.uniform(0.6, 1.0)
  h, w = int(rows * scale), int(cols * scale)
  top, left = rng.integers(rows - h + 1), rng.integers(cols - w + 1)
  image = Image.fromarray(source[top:top + h, left:left + w]).resize((width, height),
                                                                     Image.BILINEAR)
  return np.asarray(image)[:, ::-1] if rng.random() < 0.5 else np.asarray(image)


def _save_jpeg(path: str, pixels: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(pixels).save(path, quality=90)  # About the quality of ImageNet and COCO files.


def write_classification_folder(root: str, count: int, width: int, height: int,
                                seed: int = 0) -> None:
  """root/train/<class>/*.jpg, 4 classes (classification_input's folder source)."""
  rng, photos = np.random.default_rng(seed), _photos()
  for i in range(count):
    _save_jpeg(os.path.join(root, 'train', f'class_{i % 4}', f'{i:05d}.jpg'),
               photo(rng, photos, width, height))


def write_coco_folder(root: str, count: int, width: int, height: int, boxes_per_image: int = 7,
                      seed: int = 0) -> None:
  """root/train/*.jpg and root/annotations/instances_train.json (detection_input's coco_folder);
  COCO has 7.3 boxes per image on average."""
  rng, photos = np.random.default_rng(seed), _photos()
  images, annotations = [], []
  for i in range(count):
    name = f'{i:012d}.jpg'
    _save_jpeg(os.path.join(root, 'train', name), photo(rng, photos, width, height))
    images.append({'id': i, 'file_name': name, 'width': width, 'height': height})
    for _ in range(boxes_per_image):
      w, h = rng.uniform(0.05, 0.5) * width, rng.uniform(0.05, 0.5) * height
      x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
      annotations.append({'id': len(annotations) + 1, 'image_id': i, 'iscrowd': 0,
                          'category_id': int(rng.choice(detection_input.COCO_CATEGORY_IDS)),
                          'bbox': [x, y, w, h], 'area': w * h})
  categories = [{'id': c, 'name': f'category {c}'} for c in detection_input.COCO_CATEGORY_IDS]
  os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
  with open(os.path.join(root, 'annotations', 'instances_train.json'), 'w') as f:
    json.dump({'images': images, 'annotations': annotations, 'categories': categories}, f)


def write_ade_folder(root: str, count: int, width: int, height: int, seed: int = 0) -> None:
  """root/images/training/*.jpg and root/annotations/training/*.png (segmentation_input's
  folder source): label maps of 0..150 in blocks, as ADEChallengeData2016 stores them."""
  rng, photos = np.random.default_rng(seed), _photos()
  for i in range(count):
    _save_jpeg(os.path.join(root, 'images', 'training', f'{i:08d}.jpg'),
               photo(rng, photos, width, height))
    blocks = rng.integers(0, 151, size=(height // 64 + 1, width // 64 + 1), dtype=np.uint8)
    label = np.kron(blocks, np.ones((64, 64), np.uint8))[:height, :width]
    label_dir = os.path.join(root, 'annotations', 'training')
    os.makedirs(label_dir, exist_ok=True)
    Image.fromarray(label).save(os.path.join(label_dir, f'{i:08d}.png'))


WRITERS = {'vit': write_classification_folder, 'deit': write_classification_folder,
           'detr': write_coco_folder, 'segmenter': write_ade_folder}


# ----------------------------------------------------------------------------- the recipes' input


def recipe_input(recipe: Recipe, data_dir: str):
  """(Source, train_preprocess, batch preprocess or None) of `recipe`'s config, reading the
  folder at `data_dir`."""
  full_config = reproduce.load_config(CONFIGS_DIR, recipe.config)
  config = full_config.input
  if recipe.task == 'vit':
    config.update(source='folder', data_dir=data_dir, train_split='train')
    config.mix_group = 0  # Mixup on the benchmark's batch: the same work per image.
    return (classification_input.make_source(config, 'train'),
            classification_input.train_preprocess(config),
            classification_input.train_batch_preprocess(
                config, full_config.model.num_classes, full_config.loss.get('label_smoothing', 0)))
  if recipe.task == 'detr':
    config.update(source='coco_folder', data_dir=data_dir, train_split='train')
    return (detection_input.make_source(config, 'train'), detection_input.train_preprocess(config),
            None)
  config.update(source='folder', data_dir=data_dir, train_split='training')
  return (segmentation_input.make_source(config, 'training'),
          segmentation_input.train_preprocess(config), None)


def train_dataset(source: input_pipeline.Source, preprocess: Callable, batch: int,
                  threads: int, batch_preprocess: Optional[Callable] = None) -> tf.data.Dataset:
  """The per-example work of the train stream (`input_pipeline.train_batches`: load, then
  preprocess with a stateless seed per example, then batch, then the batch's own work such as
  Mixup), on `threads` threads."""
  examples = tf.data.Dataset.zip(source.read().repeat(), tf.data.Dataset.range(2**62))
  seed = lambda index: tf.stack([tf.constant(0, tf.int64), index])
  ds = examples.map(lambda example, index: (preprocess(source.load(example), seed(index)),
                                            seed(index)),
                    num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch, drop_remainder=True)
  ds = ds.map(batch_preprocess or (lambda batch, seeds: batch))
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1  # One op on one thread: cores are `threads`.
  return ds.prefetch(1).with_options(options)


def measure(recipe: Recipe, data_dir: str, batch: int = 8, seconds: float = 20.0,
            threads: int = 1, warmup_batches: int = 2, min_batches: int = 2) -> Throughput:
  """Images through `recipe`'s train input: batches are pulled until `seconds` of wall time and
  `min_batches` have passed, after `warmup_batches` untimed ones."""
  source, preprocess, batch_preprocess = recipe_input(recipe, data_dir)
  batches = train_dataset(source, preprocess, batch, threads, batch_preprocess).as_numpy_iterator()
  for _ in range(warmup_batches):
    first = next(batches)
  wall, cpu, count = time.perf_counter(), time.process_time(), 0
  while count < min_batches or time.perf_counter() - wall < seconds:
    next(batches)
    count += 1
  return Throughput(recipe, count * batch, time.perf_counter() - wall, time.process_time() - cpu,
                    {key: value.shape for key, value in first.items()})


def run(task: str, images: int = 64, batch: int = 8, seconds: float = 20.0, threads: int = 1,
        data_dir: Optional[str] = None, **measure_args) -> list[Throughput]:
  """Every recipe of `task`, on `images` images written to `data_dir` (a temporary folder when
  None)."""
  if task not in RECIPES:
    raise UserError(f'unknown --task {task!r}: choose one of {TASKS}')
  if images < batch or batch < 1 or threads < 1:
    raise UserError(f'--images ({images}) must be >= --batch ({batch}) >= 1, --threads >= 1')
  with tempfile.TemporaryDirectory() as scratch:
    results = []
    for recipe in RECIPES[task]:
      root = os.path.join(data_dir or scratch, f'{recipe.width}x{recipe.height}')
      if not os.path.isdir(root):
        WRITERS[task](root, images, recipe.width, recipe.height)
      results.append(measure(recipe, root, batch, seconds, threads, **measure_args))
      gc.collect()  # tf.data's iterator reads ahead until collected: before the files go.
    return results


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--task', choices=TASKS, required=True)
  parser.add_argument('--images', type=int, default=64, help='JPEGs written (then repeated)')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--seconds', type=float, default=20.0, help='timed wall time per recipe')
  parser.add_argument('--threads', type=int, default=1, help='tf.data threads (cores)')
  parser.add_argument('--data_dir', help='keep the written images here (default: a temporary '
                      'folder, deleted at the end)')
  args = parser.parse_args(argv)
  try:
    results = run(args.task, args.images, args.batch, args.seconds, args.threads, args.data_dir)
  except UserError as e:
    parser.exit(2, f'error: {e}\n')
  load = os.getloadavg()[0]
  print(f'{args.threads} tf.data thread(s), batch {args.batch}; load average {load:.1f} on '
        f'{os.cpu_count()} cores')
  for r in results:
    print(f'{r.recipe.name}: {r.per_cpu_second:.1f} images per CPU-second, '
          f'{r.per_second:.1f} images/s wall; {r.images} images of '
          f'{r.recipe.width}x{r.recipe.height} JPEG -> image {r.shapes["image"][1:]}')


if __name__ == '__main__':
  main()
