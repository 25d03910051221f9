"""Panoptic data for DETR: generated shapes, COCO panoptic folders, TFDS coco/2017_panoptic.

config.input fields, besides detection_input's (sizes, augment, category_layout, max_boxes as
the most segments per image, shuffle_buffer, on_bad_image):
  source            shapes | coco_panoptic_folder | tfds
  shapes            (source=shapes) detr_jax/panoptic_shapes.py's settings
  data_dir          coco_panoptic_folder: the root, laid out as COCO:
                      <split>/*.jpg (or images/<split>/)  the images
                      annotations/panoptic_<split>.json   images, annotations, categories
                      panoptic_<split>/*.png (or annotations/panoptic_<split>/)  the id maps
                    split names are the folders', e.g. train2017 and val2017.
  image_dirs, annotation_files, panoptic_dirs
                    optional {split: path} overrides (relative paths are under data_dir)
  dataset           source=tfds: coco/2017_panoptic
  gt_canvas         (h, w) the eval ground truth is padded to at its original size (COCO: 640)

A segment-id map stores the masks: one int32 map per image, 0 where no segment is (VOID), k
where the k-th segment slot is. As the original (datasets/coco_panoptic.py), every segment is a
training target, crowd ones too, and its box is the one around its mask (masks_to_boxes: the
last pixel's index, not its far edge); the augmentation (detr_jax/transforms.py) moves the map
with the image.

Raw examples: `image` (encoded, a path until `Source.load`, or pixels), `image_id`, `panoptic`
(a PNG, its path, or an int map) with `segment_ids` [R] (the map's value of each slot; a PNG's
value is R + 256 G + 256^2 B), `labels`, `iscrowd`, `box_mask` [R] (1 = real slot).

Preprocessed: detection_input's `image`, `pixel_mask`, `labels`, `boxes`, `box_mask` (real slots
first) plus `iscrowd` [max_boxes] and `segments` int32 [pad_h, pad_w] (slot k + 1 of the targets
at each pixel, 0 = none). Eval adds `image_id`, `orig_size`, `size` (the resized image's (h, w))
and the ground truth at the original size for PQ: `panoptic` [gt_canvas], `segment_labels`,
`segment_crowd`, `segment_mask` [max_boxes].
"""

import dataclasses
import os

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from detr_jax import detection_input, panoptic_shapes, transforms
from detr_jax.detection_input import setting  # config.input values with DETR's defaults
from vit_jax.framework import input_pipeline, paths
from vit_jax.framework.errors import UserError

SOURCES = ('shapes', 'coco_panoptic_folder', 'tfds')
# COCO panoptic's 53 stuff categories; TFDS coco/2017_panoptic's labels are the 80 thing ids
# (detection_input.COCO_CATEGORY_IDS) then these, as sorted in the annotation file.
COCO_STUFF_IDS = (
    92, 93, 95, 100, 107, 109, 112, 118, 119, 122, 125, 128, 130, 133, 138, 141, 144, 145, 147,
    148, 149, 151, 154, 155, 156, 159, 161, 166, 168, 171, 175, 176, 177, 178, 180, 181, 184, 185,
    186, 187, 188, 189, 190, 191, 192, 193, 194, 195, 196, 197, 198, 199, 200)


# ----------------------------------------------------------------------------- categories


def categories(input_config, split: str) -> tuple[list[dict], list[int]]:
  """The split's categories ({'id', 'name', 'isthing'}) and its label -> category id list."""
  kind = input_config.get('source')
  if kind == 'shapes':
    cats = [dict(c) for c in panoptic_shapes.CATEGORIES]
  elif kind == 'coco_panoptic_folder':
    cats = _folder_json(input_config, split)[1]['categories']
  elif kind == 'tfds':
    cats = _tfds_categories(input_config)
  else:
    raise UserError(f'unknown config.input.source {kind!r}: use one of {SOURCES}')
  layout = setting(input_config, 'category_layout')
  return cats, detection_input.label_to_category([c['id'] for c in cats], layout)


def num_classes(input_config, split: str) -> int:
  """Class logits the data needs besides no-object: len(label -> category id)."""
  return len(categories(input_config, split)[1])


def label_is_thing(input_config, split: str) -> list[bool | None]:
  """Per label: True (thing), False (stuff), None (a label that is no category)."""
  cats, mapping = categories(input_config, split)
  kinds = {c['id']: bool(c['isthing']) for c in cats}
  return [kinds.get(i) for i in mapping]


def _labels(category_ids, mapping: list[int], where: str) -> np.ndarray:
  lookup = {c: label for label, c in enumerate(mapping)}
  unknown = sorted(set(int(c) for c in category_ids) - set(lookup))
  if unknown:
    raise UserError(f'{where} has segments of category ids {unknown[:5]}, which are not in its '
                    '"categories"')
  return np.array([lookup[int(c)] for c in category_ids], np.int32)


# ----------------------------------------------------------------------------- sources


def make_source(input_config, split: str) -> input_pipeline.Source:
  kind = input_config.get('source')
  if kind == 'shapes':
    return _shapes_source(input_config, split)
  if kind == 'coco_panoptic_folder':
    return _folder_source(input_config, split)
  if kind == 'tfds':
    return _tfds_source(input_config, split)
  raise UserError(f'unknown config.input.source {kind!r}: use one of {SOURCES}')


def _slots(per_image_rows: list[dict], max_boxes: int, what: str) -> dict[str, np.ndarray]:
  """Rows of segment_ids/labels/iscrowd per image -> [N, R] arrays and box_mask, R the most
  segments of an image (at most max_boxes; the rest are dropped and counted in the log)."""
  count = max((len(r['labels']) for r in per_image_rows), default=0)
  width = max(1, min(max_boxes, count))
  out = {key: np.zeros((len(per_image_rows), width), np.int64)
         for key in ('segment_ids', 'labels', 'iscrowd', 'box_mask')}
  dropped = 0
  for i, rows in enumerate(per_image_rows):
    k = min(len(rows['labels']), width)
    dropped += len(rows['labels']) - k
    for key in ('segment_ids', 'labels', 'iscrowd'):
      out[key][i, :k] = rows[key][:k]
    out['box_mask'][i, :k] = 1
  if dropped:
    logging.warning('%s: dropped %d segments beyond max_boxes=%d', what, dropped, max_boxes)
  return out


def _shapes_source(input_config, split):
  settings = panoptic_shapes.ShapesSettings.from_config(input_config.get('shapes'))
  max_boxes = setting(input_config, 'max_boxes')
  if settings.max_objects + len(panoptic_shapes.STUFF) > max_boxes:
    raise UserError(f'config.input.max_boxes ({max_boxes}) is below the most segments of a '
                    f'shapes image, max_objects + {len(panoptic_shapes.STUFF)} stuff bands '
                    f'({settings.max_objects + len(panoptic_shapes.STUFF)})')
  data = panoptic_shapes.generate(settings, split)
  _, mapping = categories(input_config, split)
  real = data['segment_mask']
  slots = np.arange(1, real.shape[1] + 1)[None] * real
  labels = _labels(data['category'][real > 0], mapping, 'the shapes data')
  label_rows = np.zeros_like(data['category'])
  label_rows[real > 0] = labels
  arrays = {'image': data['image'], 'image_id': np.arange(1, len(data['image']) + 1),
            'panoptic': data['panoptic'], 'segment_ids': slots, 'labels': label_rows,
            'iscrowd': np.zeros_like(real), 'box_mask': real}
  return input_pipeline.array_source(arrays, setting(input_config, 'shuffle_buffer'))


def _path(input_config, key: str, split: str, default: list[str], what: str) -> str:
  data_dir = input_config.get('data_dir') or ''
  given = (input_config.get(key) or {}).get(split)
  candidates = [os.path.join(data_dir, given)] if given else [
      os.path.join(data_dir, d) for d in default]
  for candidate in candidates:
    if paths.exists(candidate):
      return candidate
  raise UserError(f'no {what} for split {split!r}: looked for {" and ".join(candidates)}; set '
                  f'config.input.data_dir or config.input.{key}.{split}')


_json_cache: dict[str, dict] = {}


def _folder_json(input_config, split: str) -> tuple[str, dict]:
  path = _path(input_config, 'annotation_files', split,
               [os.path.join('annotations', f'panoptic_{split}.json')], 'panoptic annotation file')
  if path not in _json_cache:
    data = detection_input.read_json(path)
    if not isinstance(data, dict) or not all(k in data for k in ('images', 'annotations',
                                                                 'categories')):
      raise UserError(f'{path} is not a COCO panoptic file: it needs "images", "annotations" '
                      '(with "segments_info") and "categories" (with "isthing")')
    _json_cache[path] = data
  return path, _json_cache[path]


def _folder_source(input_config, split):
  path, data = _folder_json(input_config, split)
  _, mapping = categories(input_config, split)
  images = detection_input.image_dir(input_config, split)
  pngs = _path(input_config, 'panoptic_dirs', split,
               [f'panoptic_{split}', os.path.join('annotations', f'panoptic_{split}')],
               'panoptic PNG folder')
  annotations = {a['image_id']: a for a in data['annotations']}
  rows, image_files, png_files, image_ids = [], [], [], []
  for image in data['images']:
    annotation = annotations.get(image['id'])
    if annotation is None:
      raise UserError(f'image {image["id"]} in {path} has no panoptic annotation')
    segments = annotation['segments_info']
    rows.append({'segment_ids': [s['id'] for s in segments],
                 'labels': _labels([s['category_id'] for s in segments], mapping, path),
                 'iscrowd': [s.get('iscrowd', 0) for s in segments]})
    image_files.append(os.path.join(images, image['file_name']))
    png_files.append(os.path.join(pngs, annotation['file_name']))
    image_ids.append(image['id'])
  arrays = dict(_slots(rows, setting(input_config, 'max_boxes'), path),
                image=np.array(image_files, str), panoptic=np.array(png_files, str),
                image_id=np.array(image_ids, np.int64))
  if '://' not in images:  # Cheap to check locally; remote stores fail when read.
    missing = [f for f in image_files + png_files if not os.path.exists(f)]
    if missing:
      raise UserError(f'{len(missing)} files listed in {path} are missing, e.g. {missing[0]}')
    readable = input_pipeline.readable_images(image_files, setting(input_config, 'on_bad_image'),
                                              images)
    arrays = {key: value[readable] for key, value in arrays.items()}
  logging.info('%s: %d images, %d segments', path, len(arrays['image']),
               int(arrays['box_mask'].sum()))
  read_file = paths.tf_read_file(images)
  return dataclasses.replace(
      input_pipeline.array_source(arrays, setting(input_config, 'shuffle_buffer')),
      load=lambda ex: dict(ex, image=read_file(ex['image']), panoptic=read_file(ex['panoptic'])))


def _tfds_categories(input_config) -> list[dict]:
  name = input_config.get('dataset') or ''
  try:
    names = tfds.builder(name, data_dir=input_config.get('data_dir')).info.features[
        'panoptic_objects']['label'].names
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f'{name!r} is not a TFDS dataset: check config.input.dataset') from None
  except KeyError:
    raise UserError(f'{name!r} has no panoptic_objects: use coco/2017_panoptic') from None
  ids = detection_input.COCO_CATEGORY_IDS + COCO_STUFF_IDS
  return [{'id': i, 'name': n, 'isthing': int(i < COCO_STUFF_IDS[0])} for i, n in zip(ids, names)]


def _tfds_source(input_config, split):
  name = input_config.get('dataset')
  if not name:
    raise UserError('config.input.dataset is not set: e.g. coco/2017_panoptic')
  source = input_pipeline.tfds_source(
      name, split, input_config.get('data_dir'),
      decoders={'image': tfds.decode.SkipDecoding(), 'panoptic_image': tfds.decode.SkipDecoding()},
      shuffle_buffer=setting(input_config, 'shuffle_buffer'),
      hint='Or bring COCO panoptic as a folder: --config.input.source=coco_panoptic_folder '
           '--config.input.data_dir=DIR (see detr_jax/panoptic_input.py).')
  cats, mapping = categories(input_config, split)
  label_of = tf.constant(_labels([c['id'] for c in cats], mapping, name), tf.int32)
  max_boxes = setting(input_config, 'max_boxes')

  def convert(example):
    objects = example['panoptic_objects']
    keep = tf.minimum(tf.shape(objects['id'])[0], max_boxes)
    pad = [[0, max_boxes - keep]]
    rows = lambda x: tf.ensure_shape(tf.pad(tf.cast(x[:keep], tf.int32), pad), [max_boxes])
    return {'image': example['image'], 'image_id': tf.cast(example['image/id'], tf.int64),
            'panoptic': example['panoptic_image'], 'segment_ids': rows(objects['id']),
            'labels': rows(tf.gather(label_of, tf.cast(objects['label'], tf.int32))),
            'iscrowd': rows(objects['is_crowd']), 'box_mask': rows(tf.ones_like(objects['id']))}

  return input_pipeline.map_examples(source, convert)  # Keeps array_record's random access.


# ----------------------------------------------------------------------------- preprocessing


def _segment_map(panoptic, segment_ids, real):
  """The raw map (PNG bytes: RGB ids; else an int map) -> int32 [H, W] of slot k + 1 (0: no
  real slot's id)."""
  panoptic = tf.convert_to_tensor(panoptic)
  if panoptic.dtype == tf.string:
    rgb = tf.cast(tf.io.decode_png(panoptic, channels=3), tf.int32)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
  else:
    ids = tf.cast(panoptic, tf.int32)
  keys = tf.where(real > 0, tf.cast(segment_ids, tf.int32), -1)  # Padding matches no pixel.
  order = tf.argsort(keys, stable=True)
  ordered = tf.gather(keys, order)
  flat = tf.reshape(ids, [-1])
  position = tf.minimum(tf.searchsorted(ordered, flat), tf.size(keys) - 1)
  slots = tf.where(tf.gather(ordered, position) == flat, tf.gather(order, position) + 1, 0)
  return tf.reshape(slots, tf.shape(ids))


def _mask_boxes(segments, count: int):
  """[count, 4] (x_min, y_min, x_max, y_max) around each slot's pixels, the max being the last
  pixel's index (the original's masks_to_boxes), and a mask of the slots that have pixels."""
  height, width = tf.shape(segments)[0], tf.shape(segments)[1]
  flat = tf.reshape(segments, [-1])
  xs = tf.cast(tf.tile(tf.range(width), [height]), tf.float32)
  ys = tf.cast(tf.repeat(tf.range(height), width), tf.float32)
  low = lambda v: tf.math.unsorted_segment_min(v, flat, count + 1)[1:]
  high = lambda v: tf.math.unsorted_segment_max(v, flat, count + 1)[1:]
  present = tf.math.unsorted_segment_sum(tf.ones_like(flat), flat, count + 1)[1:] > 0
  boxes = tf.stack([low(xs), low(ys), high(xs), high(ys)], -1)
  return tf.where(present[:, None], boxes, 0.), tf.cast(present, tf.int32)


def _start(example, max_boxes: int):
  """Decoded image (float), its segment map, boxes and slots (max_boxes rows), original size."""
  image = tf.cast(detection_input.decode(example['image']), tf.float32)
  rows = lambda key: detection_input.fixed_rows(tf.cast(example[key], tf.int32), max_boxes)
  real = rows('box_mask')
  segments = _segment_map(example['panoptic'], rows('segment_ids'), real)
  shape = tf.shape(image)[:2]
  with tf.control_dependencies([tf.debugging.assert_equal(
      tf.shape(segments), shape, message='a panoptic PNG differs in size from its image')]):
    boxes, present = _mask_boxes(segments, max_boxes)
  return image, segments, boxes, real * present, rows('labels'), rows('iscrowd'), shape


def _finish(image, segments, boxes, mask, labels, iscrowd, pad_size):
  """detection_input's targets (real slots first) with the map renumbered alike, padded."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  order = tf.argsort(1 - mask, stable=True)  # transforms.to_targets' order.
  targets = transforms.to_targets(boxes, mask, labels, height, width)
  renumber = tf.tensor_scatter_nd_update(tf.zeros([tf.size(mask) + 1], tf.int32),
                                         order[:, None] + 1, tf.range(1, tf.size(mask) + 1))
  kept = tf.concat([[0], mask], 0)
  segments = tf.gather(renumber * kept, segments)
  image, pixel_mask = transforms.normalize_and_pad(image, pad_size)
  segments = tf.pad(segments, [[0, pad_size[0] - height], [0, pad_size[1] - width]])
  segments.set_shape(tuple(pad_size))
  return dict(targets, iscrowd=tf.gather(iscrowd, order) * targets['box_mask'], image=image,
              pixel_mask=pixel_mask, segments=segments)


def train_preprocess(input_config):
  """fn(raw example, seed [2]) -> a fixed-shape training example."""
  pad_size, max_size = detection_input.padded_sizes(input_config)
  augment, max_boxes = setting(input_config, 'augment'), setting(input_config, 'max_boxes')
  settings = dict(scales=tuple(setting(input_config, 'train_scales')), max_size=max_size,
                  crop_resize_scales=tuple(setting(input_config, 'crop_resize_scales')),
                  crop_min=setting(input_config, 'crop_min'),
                  crop_max=setting(input_config, 'crop_max'), fit=pad_size)

  def preprocess(example, seed):
    image, segments, boxes, mask, labels, iscrowd, _ = _start(example, max_boxes)
    if augment == 'detr':
      image, boxes, mask, segments = transforms.detr_augment(image, boxes, mask, seed,
                                                             segments=segments, **settings)
    else:
      image, boxes, segments = transforms.resize(image, boxes, setting(input_config, 'eval_scale'),
                                                 max_size, pad_size, segments)
    return _finish(image, segments, boxes, mask, labels, iscrowd, pad_size)

  return preprocess


def train_example_spec(input_config) -> dict[str, tf.TensorSpec]:
  """What `train_preprocess` yields, from the config alone: detection's example plus the
  segment map and crowd flags (vit_jax.framework.fit_report)."""
  (height, width), _ = detection_input.padded_sizes(input_config)
  return dict(detection_input.train_example_spec(input_config),
              iscrowd=tf.TensorSpec((setting(input_config, 'max_boxes'),), tf.int32),
              segments=tf.TensorSpec((height, width), tf.int32))


def eval_preprocess(input_config):
  """fn(raw example) -> a fixed-shape eval example with the ground truth at its original size."""
  pad_size, max_size = detection_input.padded_sizes(input_config)
  scale, max_boxes = setting(input_config, 'eval_scale'), setting(input_config, 'max_boxes')
  canvas = tuple(input_config.get('gt_canvas') or pad_size)

  def preprocess(example):
    image, segments, boxes, mask, labels, iscrowd, orig_size = _start(example, max_boxes)
    real = detection_input.fixed_rows(tf.cast(example['box_mask'], tf.int32), max_boxes)
    with tf.control_dependencies([tf.debugging.assert_less_equal(
        orig_size, tf.constant(canvas, tf.int32),
        message=f'an eval image is larger than config.input.gt_canvas {canvas}: raise it')]):
      truth = tf.pad(segments, [[0, canvas[0] - orig_size[0]], [0, canvas[1] - orig_size[1]]])
    truth.set_shape(canvas)
    image, boxes, resized = transforms.resize(image, boxes, scale, max_size, pad_size, segments)
    out = _finish(image, resized, boxes, mask, labels, iscrowd, pad_size)
    return dict(out, image_id=tf.cast(example['image_id'], tf.int32), orig_size=orig_size,
                size=tf.shape(image)[:2], panoptic=truth, segment_labels=labels,
                segment_crowd=iscrowd, segment_mask=real)

  return preprocess
