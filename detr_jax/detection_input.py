"""Detection data for DETR: generated shapes, COCO-format folders, TFDS COCO; DETR's transforms.

config.input fields:
  source            shapes | coco_folder | tfds
  shapes            (source=shapes) seed, num_train, num_eval, image_size, min/max_objects,
                    min/max_object_size, noise: see detr_jax/shapes.py. Split 'train' has
                    num_train images, any other split name num_eval.
  data_dir          coco_folder: the folder root; tfds: the TFDS data dir (optional)
  image_dirs        coco_folder, optional {split: dir}; default <data_dir>/<split>/, else
                    <data_dir>/images/<split>/ (relative paths are under data_dir)
  annotation_files  coco_folder, optional {split: json}; default
                    <data_dir>/annotations/instances_<split>.json
  dataset           source=tfds, e.g. coco/2017 (objects/bbox, label, is_crowd)
  category_layout   coco_ids: label = category id, num_classes = max id + 1 (COCO: 91, so the
                    official checkpoints load; TFDS COCO's 80 labels are mapped back to the ids);
                    contiguous: the sorted category ids -> 0..K-1
  num_classes       optional: a label >= num_classes is an error at load time
  max_boxes         boxes per image (default 100); extra ones are dropped and counted in the log
  augment           detr (the original: flip; multi-scale resize, or resize + random crop +
                    resize) | none (eval's resize)
  train_scales, max_size, crop_resize_scales, crop_min, crop_max, eval_scale
                    the original's sizes (480..800 step 32, 1333, (400, 500, 600), 384, 600, 800)
  pad_size          (h, w) every image is zero-padded to (default (max_size, max_size)); an image
                    the resize leaves bigger is resized down further, aspect kept, to fit
  pad_buckets       optional ((h, w), ...), multiples of 32: each image padded to the smallest
                    that holds it, batches grouped by bucket (detr_jax/padding_buckets.py);
                    pad_size is then unused. Empty (default): every image at pad_size
  bucket_window     batches regrouped together by bucket (default 8)
  shuffle_buffer
  on_bad_image      coco_folder: skip (default; counted in the log) | stop (one line naming them)

Raw examples (what a `Source` yields) are cheap to skip and fixed-shape: `image` (encoded bytes,
a file path until `Source.load`, or uint8 pixels), `image_id`, `boxes` [R, 4] as (x0, y0, x1, y1)
relative to the image size, `labels` [R], `box_mask` [R] (1 = real, first), where R <= max_boxes
is the source's most crowded image (preprocessing pads to max_boxes). Crowd
annotations are not training targets (the original's ConvertCocoPolysToMask); images without
boxes stay (negatives); boxes without area after clipping to the image are dropped.

Preprocessed examples: `image` float32 [pad_h, pad_w, 3] (ImageNet-standardised, zero padding;
with pad_buckets [pad_h, pad_w] is the buckets' canvas, and DetectionTask's streams cut each
batch down to its bucket),
`pixel_mask` int32 [pad_h, pad_w] (1 = image), `labels` int32 [max_boxes], `boxes` float32
[max_boxes, 4] normalised (cx, cy, w, h) of the unpadded resized image, `box_mask` int32
[max_boxes]; eval adds `image_id` int32 and `orig_size` int32 (h, w).
"""

import dataclasses
import json
import os
from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from detr_jax import padding_buckets, shapes, transforms
from vit_jax.framework import input_pipeline, paths
from vit_jax.framework.errors import UserError

SOURCES = ('shapes', 'coco_folder', 'tfds')
LAYOUTS = ('coco_ids', 'contiguous')
AUGMENTATIONS = ('detr', 'none')
# TFDS COCO label i (80 classes, in category-id order) is COCO category COCO_CATEGORY_IDS[i].
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90)
# The original's training and eval sizes (make_coco_transforms).
DEFAULTS = dict(max_boxes=100, augment='detr', train_scales=tuple(range(480, 801, 32)),
                max_size=1333, crop_resize_scales=(400, 500, 600), crop_min=384, crop_max=600,
                eval_scale=800, category_layout='coco_ids', shuffle_buffer=10_000,
                on_bad_image='skip', pad_buckets=(), bucket_window=8)


def setting(input_config, key):
  return input_config.get(key, DEFAULTS.get(key))


# ----------------------------------------------------------------------------- categories


def label_to_category(category_ids, layout: str) -> list[int]:
  """label -> category id. coco_ids: the identity on 0..max id (unused ids are empty slots);
  contiguous: the sorted ids."""
  if layout not in LAYOUTS:
    raise UserError(f'unknown config.input.category_layout {layout!r}: use one of {LAYOUTS}')
  ids = sorted(set(int(i) for i in category_ids))
  if layout == 'coco_ids':
    if ids and ids[0] < 0:
      raise UserError(f'category id {ids[0]} is negative: category_layout coco_ids needs ids '
                      f'>= 0; use contiguous')
    return list(range(ids[-1] + 1 if ids else 0))
  return ids


def _check_num_classes(input_config, mapping: list[int], where: str):
  num_classes = input_config.get('num_classes')
  if num_classes and len(mapping) > num_classes:
    raise UserError(
        f'{where} has label {len(mapping) - 1} (category id {mapping[-1]}) but num_classes is '
        f'{num_classes}: set num_classes to at least {len(mapping)} or use '
        f"category_layout='contiguous'")


# ----------------------------------------------------------------------------- sources


def make_source(input_config, split: str) -> input_pipeline.Source:
  """One split as this host reads it, as raw examples (see the module docstring)."""
  kind = input_config.get('source')
  if kind == 'shapes':
    return _shapes_source(input_config, split)
  if kind == 'coco_folder':
    return _folder_source(input_config, split)
  if kind == 'tfds':
    return _tfds_source(input_config, split)
  raise UserError(f'unknown config.input.source {kind!r}: use one of {SOURCES}')


def num_classes(input_config, split: str) -> int:
  """Class logits the data needs besides no-object: len(label -> category id)."""
  return len(categories(input_config, split)[1])


def categories(input_config, split: str) -> tuple[list[dict], list[int]]:
  """The split's category dicts ({'id', 'name'}) and its label -> category id list."""
  layout = setting(input_config, 'category_layout')
  kind = input_config.get('source')
  if kind == 'shapes':
    cats = [dict(c) for c in shapes.CATEGORIES]
  elif kind == 'coco_folder':
    cats = _read_categories(annotation_file(input_config, split))
  elif kind == 'tfds':
    cats = _tfds_categories(input_config)
  else:
    raise UserError(f'unknown config.input.source {kind!r}: use one of {SOURCES}')
  return cats, label_to_category([c['id'] for c in cats], layout)


def _to_labels(category_ids: np.ndarray, mapping: list[int]) -> np.ndarray:
  lookup = np.full(max(mapping, default=0) + 1, -1, np.int64)
  lookup[mapping] = np.arange(len(mapping))
  return lookup[category_ids]


def _pack(per_image: list[np.ndarray], per_label: list[np.ndarray], max_boxes: int, what: str):
  """Pads each image's boxes to as many rows as the most crowded image has (preprocessing pads
  them to max_boxes), or truncates them to max_boxes, counted in the log."""
  n = len(per_image)
  rows = min(max_boxes, max(map(len, per_image), default=0)) or 1
  boxes = np.zeros((n, rows, 4), np.float32)
  labels = np.zeros((n, rows), np.int32)
  mask = np.zeros((n, rows), np.int32)
  dropped = images_over = 0
  for i, (b, l) in enumerate(zip(per_image, per_label)):
    if len(b) > max_boxes:
      dropped, images_over = dropped + len(b) - max_boxes, images_over + 1
    k = min(len(b), max_boxes)
    boxes[i, :k], labels[i, :k], mask[i, :k] = b[:k], l[:k], 1
  if dropped:
    logging.warning('%s: dropped %d boxes beyond max_boxes=%d in %d images', what, dropped,
                    max_boxes, images_over)
  return boxes, labels, mask


def _shapes_source(input_config, split):
  settings = shapes.ShapesSettings.from_config(input_config.get('shapes'))
  max_boxes = setting(input_config, 'max_boxes')
  if settings.max_objects > max_boxes:
    raise UserError(f'config.input.shapes.max_objects ({settings.max_objects}) exceeds '
                    f'config.input.max_boxes ({max_boxes})')
  data = shapes.generate(settings, split)
  _, mapping = categories(input_config, split)
  _check_num_classes(input_config, mapping, 'the shapes data')
  labels = _to_labels(data['category'], mapping) * data['box_mask']
  arrays = {'image': data['image'], 'image_id': np.arange(1, len(data['image']) + 1),
            'boxes': data['boxes'] / settings.image_size, 'labels': labels.astype(np.int32),
            'box_mask': data['box_mask']}
  return input_pipeline.array_source(arrays, setting(input_config, 'shuffle_buffer'))


def image_dir(input_config, split: str) -> str:
  data_dir = input_config.get('data_dir') or ''
  given = (input_config.get('image_dirs') or {}).get(split)
  if given:
    return os.path.join(data_dir, given)
  candidates = [os.path.join(data_dir, split), os.path.join(data_dir, 'images', split)]
  for candidate in candidates:
    if paths.isdir(candidate):
      return candidate
  raise UserError(f'no image folder for split {split!r}: looked for {" and ".join(candidates)}; '
                  f'set config.input.data_dir or config.input.image_dirs.{split}')


def annotation_file(input_config, split: str) -> str:
  data_dir = input_config.get('data_dir') or ''
  given = (input_config.get('annotation_files') or {}).get(split)
  path = (os.path.join(data_dir, given) if given else
          os.path.join(data_dir, 'annotations', f'instances_{split}.json'))
  if not paths.exists(path):
    raise UserError(f'annotation file {path} does not exist: put COCO-format instances there or '
                    f'set config.input.annotation_files.{split}')
  return path


def read_json(path: str) -> dict:
  try:
    with paths.open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f'{path} is not valid JSON ({e})') from None


_categories_cache: dict[str, list[dict]] = {}


def _read_categories(path: str) -> list[dict]:
  if path not in _categories_cache:
    _coco_lists(read_json(path), path)
  return _categories_cache[path]


def _coco_lists(data: dict, path: str):
  """images, annotations and categories of a COCO json, checked; categories are cached."""
  if not isinstance(data, dict) or 'images' not in data or 'categories' not in data:
    raise UserError(f'{path} is not a COCO instances file: it needs "images" and "categories" '
                    f'lists (and "annotations")')
  cats = [{'id': int(c['id']), 'name': str(c.get('name', c['id']))} for c in data['categories']]
  _categories_cache[path] = cats
  return data['images'], data.get('annotations') or [], cats


def _folder_source(input_config, split):
  path = annotation_file(input_config, split)
  images, annotations, cats = _coco_lists(read_json(path), path)
  folder = image_dir(input_config, split)
  mapping = label_to_category([c['id'] for c in cats], setting(input_config, 'category_layout'))
  _check_num_classes(input_config, mapping, path)
  known = {c['id'] for c in cats}
  sizes, index = [], {}
  for i, image in enumerate(images):
    if not image.get('width') or not image.get('height'):
      raise UserError(f'image {image.get("id")} in {path} has no width/height: COCO instances '
                      f'list them for every image')
    if image['id'] in index or not 0 <= image['id'] < 2**31:
      raise UserError(f'image id {image["id"]} in {path} is repeated or not in [0, 2**31): '
                      f'eval needs unique int32 image ids')
    sizes.append((image['width'], image['height']))
    index[image['id']] = i
  targets = [ann for ann in annotations if not ann.get('iscrowd', 0)]
  for ann in targets:
    if ann['image_id'] not in index:
      raise UserError(f'annotation {ann.get("id")} in {path} refers to image {ann["image_id"]}, '
                      f'which is not in its "images"')
    if ann['category_id'] not in known:
      raise UserError(f'annotation {ann.get("id")} in {path} has category_id '
                      f'{ann["category_id"]}, which is not in its "categories"')
  owner = np.array([index[ann['image_id']] for ann in targets], np.int64)
  xywh = np.array([ann['bbox'] for ann in targets], np.float64).reshape(-1, 4)
  size = np.tile(np.array(sizes, np.float64).reshape(-1, 2)[owner], 2)
  # Clipped to the image, as ConvertCocoPolysToMask; boxes left without area are dropped.
  boxes = np.clip(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1), 0, size) / size
  valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  category = np.array([ann['category_id'] for ann in targets], np.int64)
  owner, boxes, category = owner[valid], boxes[valid], category[valid]
  if (~valid).sum():
    logging.warning('%s: dropped %d boxes without area inside their image', path,
                    (~valid).sum())
  order = np.argsort(owner, kind='stable')  # Each image's boxes in file order.
  starts = np.searchsorted(owner[order], np.arange(len(images) + 1))
  spans = list(zip(starts[:-1], starts[1:]))
  per_image = [boxes[order[lo:hi]] for lo, hi in spans]
  per_label = [_to_labels(category[order[lo:hi]], mapping) for lo, hi in spans]
  logging.info('%s: %d images (%d without boxes), %d boxes; %d crowd annotations are not '
               'training targets', path, len(images), sum(not len(b) for b in per_image),
               len(boxes), len(annotations) - len(targets))
  boxes, labels, mask = _pack(per_image, per_label, setting(input_config, 'max_boxes'), path)
  files = [os.path.join(folder, image['file_name']) for image in images]
  arrays = {'image': np.array(files, dtype=str),
            'image_id': np.array([image['id'] for image in images], np.int64),
            'boxes': boxes, 'labels': labels, 'box_mask': mask}
  if '://' not in folder:  # Cheap to check locally; remote stores fail when read.
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
      raise UserError(f'{len(missing)} images listed in {path} are missing, e.g. {missing[0]}')
    readable = input_pipeline.readable_images(files, setting(input_config, 'on_bad_image'), folder)
    arrays = {key: value[readable] for key, value in arrays.items()}
  # Paths travel through shuffling and skipping; a file is read only when its example is used.
  read_file = paths.tf_read_file(folder)
  return dataclasses.replace(
      input_pipeline.array_source(arrays, setting(input_config, 'shuffle_buffer')),
      load=lambda ex: dict(ex, image=read_file(ex['image'])))


def _tfds_categories(input_config) -> list[dict]:
  name = input_config.get('dataset') or ''
  is_coco = name.startswith('coco/')
  if not is_coco and setting(input_config, 'category_layout') == 'coco_ids':
    raise UserError(f"category_layout 'coco_ids' maps TFDS labels to COCO category ids, but "
                    f'{name!r} is not a coco/* dataset: use contiguous')
  try:
    names = tfds.builder(name, data_dir=input_config.get('data_dir')).info.features[
        'objects']['label'].names
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f'{name!r} is not a TFDS dataset: check config.input.dataset') from None
  ids = COCO_CATEGORY_IDS if is_coco else range(len(names))
  return [{'id': i, 'name': n} for i, n in zip(ids, names)]


def _tfds_source(input_config, split):
  name = input_config.get('dataset')
  if not name:
    raise UserError('config.input.dataset is not set: e.g. coco/2017')
  source = input_pipeline.tfds_source(
      name, split, input_config.get('data_dir'), decoders={'image': tfds.decode.SkipDecoding()},
      shuffle_buffer=setting(input_config, 'shuffle_buffer'),
      hint='Or bring COCO-format data: --config.input.source=coco_folder '
           '--config.input.data_dir=DIR (DIR/<split>/, DIR/annotations/instances_<split>.json).')
  cats, mapping = categories(input_config, split)
  _check_num_classes(input_config, mapping, name)
  # TFDS label i -> training label: through the category id of the i-th category.
  label_of = tf.constant(_to_labels(np.array([c['id'] for c in cats]), mapping), tf.int32)
  max_boxes = setting(input_config, 'max_boxes')
  # map_examples keeps an array_record source's random access (process-count-invariant batches).
  return input_pipeline.map_examples(source, lambda ex: _from_tfds(ex, label_of, max_boxes))


def _log_dropped(image_id, degenerate, extra, max_boxes):
  logging.warning('image %d: dropped %d boxes without area and %d beyond max_boxes=%d',
                  int(image_id), int(degenerate), int(extra), max_boxes)
  return np.int32(0)


def _from_tfds(example, label_of, max_boxes: int):
  """A TFDS detection example -> a raw example: no crowd boxes, (x0, y0, x1, y1) clipped, boxes
  without area dropped, padded or truncated to max_boxes (drops are logged)."""
  objects = example['objects']
  not_crowd = ~objects['is_crowd'] if 'is_crowd' in objects else tf.ones_like(objects['label'],
                                                                               tf.bool)
  ymin, xmin, ymax, xmax = tf.unstack(tf.boolean_mask(objects['bbox'], not_crowd), axis=-1)
  boxes = tf.clip_by_value(tf.stack([xmin, ymin, xmax, ymax], -1), 0.0, 1.0)
  labels = tf.gather(label_of, tf.cast(tf.boolean_mask(objects['label'], not_crowd), tf.int32))
  valid = transforms.has_area(boxes)
  boxes, labels = tf.boolean_mask(boxes, valid), tf.boolean_mask(labels, valid)
  count = tf.shape(boxes)[0]
  degenerate = tf.size(valid) - count
  extra = tf.maximum(count - max_boxes, 0)
  image_id = tf.cast(example['image/id'], tf.int64)
  logged = tf.cond(
      degenerate + extra > 0,
      lambda: tf.py_function(lambda *a: _log_dropped(*a, max_boxes),
                             [image_id, degenerate, extra], tf.int32),
      lambda: tf.constant(0, tf.int32))
  keep = tf.minimum(count, max_boxes)
  pad = max_boxes - keep
  with tf.control_dependencies([logged]):
    box_mask = tf.pad(tf.ones([keep], tf.int32), [[0, pad]])
  raw = {'image': example['image'], 'image_id': image_id,
         'boxes': tf.pad(boxes[:keep], [[0, pad], [0, 0]]),
         'labels': tf.pad(labels[:keep], [[0, pad]]), 'box_mask': box_mask}
  raw['boxes'].set_shape((max_boxes, 4))
  raw['labels'].set_shape((max_boxes,))
  raw['box_mask'].set_shape((max_boxes,))
  return raw


# ----------------------------------------------------------------------------- preprocessing


def decode(image):
  """Encoded bytes -> uint8 [H, W, 3]; pixel arrays pass through."""
  image = tf.convert_to_tensor(image)
  if image.dtype == tf.string:
    return tf.io.decode_image(image, channels=3, expand_animations=False)
  return image


def pad_buckets(input_config) -> tuple[tuple[int, int], ...]:
  """config.input.pad_buckets checked, smallest first; () when every image takes pad_size."""
  buckets = setting(input_config, 'pad_buckets') or ()
  if not buckets:
    return ()
  scales = tuple(setting(input_config, 'train_scales')) + (setting(input_config, 'eval_scale'),)
  return padding_buckets.check(buckets, setting(input_config, 'max_size'), max(scales))


def padded_sizes(input_config):
  """(pad_size, max_size), checked; with pad_buckets, pad_size is the buckets' canvas."""
  max_size = setting(input_config, 'max_size') or None
  buckets = pad_buckets(input_config)
  pad_size = (padding_buckets.canvas(buckets) if buckets else input_config.get('pad_size') or
              ((max_size, max_size) if max_size else None))
  if not pad_size or len(pad_size) != 2:
    raise UserError('config.input.pad_size (h, w) is needed when max_size is unset: the padded '
                    'image shape must be fixed')
  augment = setting(input_config, 'augment')
  if augment not in AUGMENTATIONS:
    raise UserError(f'unknown config.input.augment {augment!r}: use one of {AUGMENTATIONS}')
  return tuple(int(s) for s in pad_size), max_size


def fixed_rows(x, count: int):
  """x with exactly `count` rows: zero rows appended or extra rows cut."""
  x = tf.convert_to_tensor(x)[:count]
  x = tf.pad(x, [[0, count - tf.shape(x)[0]]] + [[0, 0]] * (x.shape.rank - 1))
  x.set_shape([count] + x.shape[1:].as_list())
  return x


def _start(example, max_boxes: int):
  """Decoded float pixels, absolute boxes, mask of real boxes with area, labels (all with
  max_boxes rows), original (h, w)."""
  image = decode(example['image'])
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  scale = tf.cast(tf.stack([width, height, width, height]), tf.float32)
  boxes = tf.clip_by_value(fixed_rows(tf.cast(example['boxes'], tf.float32), max_boxes), 0.0, 1.0)
  boxes *= scale
  mask = fixed_rows(tf.cast(example['box_mask'], tf.int32), max_boxes)
  mask *= tf.cast(transforms.has_area(boxes), tf.int32)
  labels = fixed_rows(tf.cast(example['labels'], tf.int32), max_boxes)
  return tf.cast(image, tf.float32), boxes, mask, labels, tf.stack([height, width])


def _finish(image, boxes, mask, labels, pad_size):
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  targets = transforms.to_targets(boxes, mask, tf.cast(labels, tf.int32), height, width)
  image, pixel_mask = transforms.normalize_and_pad(image, pad_size)
  return dict(targets, image=image, pixel_mask=pixel_mask)


def train_preprocess(input_config):
  """fn(raw example, seed [2]) -> a fixed-shape training example."""
  pad_size, max_size = padded_sizes(input_config)
  augment, max_boxes = setting(input_config, 'augment'), setting(input_config, 'max_boxes')
  scale = setting(input_config, 'eval_scale')
  settings = dict(scales=tuple(setting(input_config, 'train_scales')), max_size=max_size,
                  crop_resize_scales=tuple(setting(input_config, 'crop_resize_scales')),
                  crop_min=setting(input_config, 'crop_min'),
                  crop_max=setting(input_config, 'crop_max'), fit=pad_size)

  def preprocess(example, seed):
    image, boxes, mask, labels, _ = _start(example, max_boxes)
    if augment == 'detr':
      image, boxes, mask = transforms.detr_augment(image, boxes, mask, seed, **settings)
    else:
      image, boxes = transforms.resize(image, boxes, scale, max_size, pad_size)
    return _finish(image, boxes, mask, labels, pad_size)

  return preprocess



def train_example_spec(input_config) -> dict[str, tf.TensorSpec]:
  """What `train_preprocess` yields, from the config alone (no data is read), so a train step
  can be compiled for a machine this one is not (vit_jax.framework.fit_report)."""
  (height, width), _ = padded_sizes(input_config)
  boxes = setting(input_config, 'max_boxes')
  return {'image': tf.TensorSpec((height, width, 3), tf.float32),
          'pixel_mask': tf.TensorSpec((height, width), tf.int32),
          'labels': tf.TensorSpec((boxes,), tf.int32),
          'boxes': tf.TensorSpec((boxes, 4), tf.float32),
          'box_mask': tf.TensorSpec((boxes,), tf.int32)}


def eval_preprocess(input_config):
  """fn(raw example) -> a fixed-shape eval example: the short side to eval_scale (long side at
  most max_size), with image_id and the original (h, w)."""
  pad_size, max_size = padded_sizes(input_config)
  scale, max_boxes = setting(input_config, 'eval_scale'), setting(input_config, 'max_boxes')

  def preprocess(example):
    image, boxes, mask, labels, orig_size = _start(example, max_boxes)
    image, boxes = transforms.resize(image, boxes, scale, max_size, pad_size)
    out = _finish(image, boxes, mask, labels, pad_size)
    return dict(out, image_id=tf.cast(example['image_id'], tf.int32), orig_size=orig_size)

  return preprocess
