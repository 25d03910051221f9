"""Segmentation data: sources, Segmenter's training pipeline, fixed-shape eval examples.

config.input fields:
  source          shapes | tfds | folder | pascal_context | cityscapes
  data_dir        folder roots (see below); tfds: the TFDS data dir (optional)
  dataset         tfds: the TFDS name (scene_parse150)
  train_split, eval_split
  class_names     optional, for the per-class log (labels are 0..config.model.num_classes-1
                  or 255 = ignored; anything else is an error)
  reduce_zero_label
                  ADE20K's convention: label 0 ("other") becomes 255, every other label - 1
  image_dirs, label_dirs
                  folder: optional {split: dir} under data_dir; default images/<split> and
                  annotations/<split> (the layout of ADEChallengeData2016 and of mmseg's
                  custom datasets); a label map is <label dir>/<image stem><label_suffix>
  label_suffix    folder: default '.png'
  on_bad_image    folders: skip (default; an image or label map that does not decode drops the
                  pair, counted in the log) | stop (one line naming the files)
  shapes          source=shapes: see segmenter_jax/shapes.py ('train' has num_train images,
                  any other split num_eval)
  normalization   vit (mean = std = 127.5) | deit (ImageNet mean and std, x 255)
  img_scale       (long, short) of the keep-ratio resize, e.g. ADE20K (2048, 512)
  ratio_range     training: the resize ratio is uniform in this range, e.g. (0.5, 2.0)
  crop_size       training crop (square); also the eval window
  cat_max_ratio   training crop: redraw while one class covers this share or more (0.75)
  photometric     training: mmseg's PhotoMetricDistortion
  eval_stride     sliding-window stride
  eval_scales     e.g. (1.0,) or (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
  eval_flip       also average the mirrored views
  train_subset    N: train on a fixed N of the training split's images (the first N of one
                  permutation seeded by 0, so smaller subsets lie inside larger ones); folder
                  and shapes sources
  batch_size, eval_batch_size, shuffle_buffer

Folder layouts (data_dir is the root):
  folder          images/<split>/*.jpg|png, annotations/<split>/*.png (configurable, above)
  pascal_context  VOC2010: JPEGImages/<id>.jpg, SegmentationClassContext/<id>.png (60 classes,
                  0 = background, as mmseg's converter writes them),
                  ImageSets/SegmentationContext/<split>.txt
  cityscapes      leftImg8bit/<split>/<city>/<name>_leftImg8bit.png with
                  gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png (19 classes), or, when
                  those were not generated, _gtFine_labelIds.png mapped to train ids here

Raw examples (what a `Source` yields) hold `image` (encoded bytes, a path until `Source.load`,
or uint8 pixels) and `label`; after `Source.load` the label is decoded (palette PNGs give their
indices) and mapped to training labels: uint8 [H, W].

Training examples: `image` float32 [crop, crop, 3] normalised, `label` int32 [crop, crop] (255
where the crop exceeds the image). Eval examples keep the ORIGINAL image and label, because the
original scores predictions at the original resolution: both are padded into a fixed canvas,
transposed first when the image is portrait (so that one landscape canvas fits both
orientations), with their sizes; every resize happens on the device (see inference.py).
  image       uint8 [canvas_h, canvas_w, 3] (normalised on the device)
  label       uint8 [canvas_h, canvas_w], 255 outside the image
  size        int32 [2] (h, w) in canvas orientation
  scaled_size int32 [num_scales, 2]: after the keep-ratio resize to img_scale x scale
  view_size   int32 [num_scales, 2]: after Segmenter's short-side-to-window upsampling
  transposed  int32: 1 when the canvas holds the transposed image
The canvases (`EvalGeometry`) are measured once from the eval split's image headers.
"""

import dataclasses
import io
import math
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from segmenter_jax import augment, shapes
from vit_jax.framework import input_pipeline, paths
from vit_jax.framework.errors import UserError, choose

SOURCES = ('shapes', 'tfds', 'folder', 'pascal_context', 'cityscapes')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
IGNORE_INDEX = augment.IGNORE_INDEX

# Cityscapes label id -> train id (cityscapesscripts' labels.py); every other id is ignored.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                        23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
                      'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car',
                      'truck', 'bus', 'train', 'motorcycle', 'bicycle')


def normalization(input_config) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) in pixel units; Segmenter rounds 255 * the encoder's values to 2 decimals."""
  mean, std = choose('config.input.normalization', input_config.get('normalization', 'vit'),
                     input_pipeline.NORMALIZATIONS)
  return tuple(round(255 * v, 2) for v in mean), tuple(round(255 * v, 2) for v in std)


def class_names(input_config, num_classes: int) -> tuple[str, ...]:
  """config.input.class_names, else the source's own, else class_0, class_1, ..."""
  given = input_config.get('class_names')
  if given:
    if len(given) != num_classes:
      raise UserError(f'config.input.class_names has {len(given)} names for {num_classes} '
                      'classes (config.model.num_classes)')
    return tuple(given)
  names = {'shapes': shapes.CLASSES, 'cityscapes': CITYSCAPES_CLASSES}.get(
      input_config.get('source'), ())
  return tuple(names) if len(names) == num_classes else tuple(
      f'class_{i}' for i in range(num_classes))


# ----------------------------------------------------------------------------- label maps


def label_table(reduce_zero_label: bool = False, id_map: Optional[dict] = None) -> np.ndarray:
  """uint8 [256]: stored label value -> training label."""
  table = np.arange(256, dtype=np.int64)
  if id_map is not None:
    table = np.full(256, IGNORE_INDEX)
    for stored, label in id_map.items():
      table[stored] = label
  if reduce_zero_label:  # mmseg: 0 -> 255, then every label - 1, and 254 (was 255) -> 255.
    table = np.where(table == 0, IGNORE_INDEX, table - 1)
    table = np.where(table == IGNORE_INDEX - 1, IGNORE_INDEX, table)
  return table.astype(np.uint8)


def _decode_label_bytes(data: bytes, table: np.ndarray) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as image:
    array = np.asarray(image)  # Palette images give their indices, unlike tf.io.decode_png.
  if array.ndim == 3:  # RGB label maps: the class is in the first (red) channel.
    array = array[..., 0]
  if array.dtype != np.uint8:
    raise UserError(f'label maps must be 8-bit (got {array.dtype}): save them as 8-bit PNGs '
                    'with values 0..num_classes-1 and 255 for ignore')
  return table[array]


def _label_loader(table: np.ndarray):
  """fn(raw example) -> example with the label decoded and mapped: uint8 [H, W]."""
  def load(example):
    label = example['label']
    if label.dtype == tf.string:
      label = tf.numpy_function(lambda data: _decode_label_bytes(data, table), [label],
                                tf.uint8, stateful=False)
      label.set_shape((None, None))
    else:
      label = tf.gather(tf.constant(table), tf.cast(label, tf.int32))
    return dict(example, label=label)
  return load


def _file_loader(table: np.ndarray, root: str):
  """Paths (under `root`) -> bytes, then the label decoded and mapped."""
  decode = _label_loader(table)
  read_file = paths.tf_read_file(root)

  def load(example):
    return decode(dict(example, image=read_file(example['image']),
                       label=read_file(example['label'])))
  return load


# ----------------------------------------------------------------------------- sources


def make_source(input_config, split: str) -> input_pipeline.Source:
  """One split as this host reads it (see the module docstring)."""
  kind = input_config.get('source')
  shuffle_buffer = input_config.get('shuffle_buffer', 10_000)
  subset = input_config.get('train_subset') if split == input_config.get('train_split') else None
  if kind == 'shapes':
    data = shapes.generate(shapes.ShapesSettings.from_config(input_config.get('shapes')), split)
    arrays = _subset({'image': data['image'], 'label': data['label']}, subset, split)
    return input_pipeline.array_source(arrays, shuffle_buffer)
  if kind == 'tfds':
    if subset:
      raise UserError('config.input.train_subset needs a folder or shapes source, not tfds')
    return _tfds_source(input_config, split, shuffle_buffer)
  if kind in ('folder', 'pascal_context', 'cityscapes'):
    images, labels, table = file_lists(input_config, split)
    arrays = _subset({'image': images, 'label': labels}, subset, split)
    source = input_pipeline.array_source(arrays, shuffle_buffer)
    return dataclasses.replace(source, load=_file_loader(table, input_config.get('data_dir')))
  raise UserError(f'unknown config.input.source {kind!r}: use one of {SOURCES}')


def _subset(arrays: dict, size: Optional[int], split: str) -> dict:
  """The first `size` examples of one permutation seeded by 0 (in their original order), so
  that a subset is the same in every run and lies inside every larger one."""
  count = len(arrays['label'])
  if not size:
    return arrays
  if not 0 < size <= count:
    raise UserError(f'config.input.train_subset {size} must be in 1..{count} (the images of '
                    f'split {split!r})')
  keep = np.sort(np.random.default_rng(0).permutation(count)[:size])
  return {k: v[keep] for k, v in arrays.items()}


def _tfds_source(input_config, split, shuffle_buffer):
  name = input_config.get('dataset') or 'scene_parse150'
  if name == 'scene_parse150':
    # Worth knowing: TFDS builds scene_parse150's annotations from the 2017 challenge's
    # annotations_instance/ files, whose red channel is one of 100 instance categories, not
    # the 150 scene-parsing classes of ADEChallengeData2016 that the paper reports.
    logging.warning('TFDS scene_parse150 labels come from the 2017 instance annotations (100 '
                    'categories in the red channel); for the paper\'s 150-class ADE20K use '
                    'source=folder on ADEChallengeData2016 with reduce_zero_label')
  source = input_pipeline.tfds_source(
      name, split, input_config.get('data_dir'),
      decoders={'image': tfds.decode.SkipDecoding(), 'annotation': tfds.decode.SkipDecoding()},
      shuffle_buffer=shuffle_buffer,
      hint='Or use the ADEChallengeData2016 folder: --config.input.source=folder '
           '--config.input.data_dir=DIR --config.input.train_split=training '
           '--config.input.eval_split=validation.')
  table = label_table(input_config.get('reduce_zero_label', False))
  rename = lambda ex: {'image': ex['image'], 'label': ex['annotation']}
  # map_examples keeps an array_record source's random access (process-count-invariant batches).
  return dataclasses.replace(input_pipeline.map_examples(source, rename),
                             load=_label_loader(table))


def file_lists(input_config, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(image paths, label paths, label table) of a folder source's split."""
  kind = input_config.get('source')
  root = input_config.get('data_dir') or ''
  if not root or not paths.isdir(root):
    raise UserError(f'config.input.data_dir {root!r} is not a folder: point it at the '
                    f'{kind} root (layouts in segmenter_jax/segmentation_input.py)')
  reduce_zero_label = bool(input_config.get('reduce_zero_label', False))
  if kind == 'pascal_context':
    images, labels = _pascal_context_files(root, split)
    table = label_table(reduce_zero_label)
  elif kind == 'cityscapes':
    images, labels, table = _cityscapes_files(root, split)
  else:
    images, labels = _folder_files(input_config, root, split)
    table = label_table(reduce_zero_label)
  if '://' not in root:  # Cheap to check locally; remote stores fail when read.
    missing = [f for f in labels if not os.path.exists(f)]
    if missing:
      raise UserError(f'{len(missing)} of {len(labels)} label maps of split {split!r} are '
                      f'missing, e.g. {missing[0]}')
    readable = input_pipeline.readable_images(
        images + labels, input_config.get('on_bad_image', 'skip'), f'{root} (split {split!r})')
    pairs = readable[:len(images)] & readable[len(images):]  # An image without its labels: out.
    images = [image for image, ok in zip(images, pairs) if ok]
    labels = [label for label, ok in zip(labels, pairs) if ok]
  return np.array(images, dtype=str), np.array(labels, dtype=str), table


def _split_dir(root, given: Optional[dict], default: str, split: str, what: str) -> str:
  path = os.path.join(root, (given or {}).get(split) or default)
  if not paths.isdir(path):
    raise UserError(f'{what} folder {path} for split {split!r} does not exist: set '
                    f'config.input.data_dir or config.input.{what}_dirs.{split}')
  return path


def _folder_files(input_config, root, split):
  image_dir = _split_dir(root, input_config.get('image_dirs'), os.path.join('images', split),
                         split, 'image')
  label_dir = _split_dir(root, input_config.get('label_dirs'),
                         os.path.join('annotations', split), split, 'label')
  suffix = input_config.get('label_suffix') or '.png'
  names = sorted(f for f in paths.listdir(image_dir)
                 if f.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    raise UserError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {image_dir}')
  return ([os.path.join(image_dir, n) for n in names],
          [os.path.join(label_dir, os.path.splitext(n)[0] + suffix) for n in names])


def _pascal_context_files(root, split):
  list_file = os.path.join(root, 'ImageSets', 'SegmentationContext', f'{split}.txt')
  if not paths.exists(list_file):
    raise UserError(f'{list_file} does not exist: data_dir must be VOC2010 with '
                    f'ImageSets/SegmentationContext/{split}.txt, JPEGImages/ and '
                    'SegmentationClassContext/ (mmseg\'s pascal_context converter writes them)')
  with paths.open(list_file) as f:
    ids = [line.strip() for line in f if line.strip()]
  return ([os.path.join(root, 'JPEGImages', f'{i}.jpg') for i in ids],
          [os.path.join(root, 'SegmentationClassContext', f'{i}.png') for i in ids])


def _cityscapes_files(root, split):
  image_root = os.path.join(root, 'leftImg8bit', split)
  if not paths.isdir(image_root):
    raise UserError(f'{image_root} does not exist: data_dir must hold leftImg8bit/{split}/<city>/ '
                    f'and gtFine/{split}/<city>/')
  images = sorted(paths.glob(os.path.join(image_root, '*', '*_leftImg8bit.png')))
  if not images:
    raise UserError(f'no *_leftImg8bit.png images under {image_root}/<city>/')
  stems = [os.path.join(root, 'gtFine', split, os.path.basename(os.path.dirname(p)),
                        os.path.basename(p)[:-len('_leftImg8bit.png')]) for p in images]
  train_ids = [s + '_gtFine_labelTrainIds.png' for s in stems]
  if all(paths.exists(p) for p in train_ids):
    return images, train_ids, label_table()
  logging.info('cityscapes %s: no *_labelTrainIds.png, mapping *_labelIds.png to train ids', split)
  return images, [s + '_gtFine_labelIds.png' for s in stems], label_table(
      id_map=CITYSCAPES_TRAIN_IDS)


# ----------------------------------------------------------------------------- preprocessing


def _decode_image(image):
  image = tf.convert_to_tensor(image)
  if image.dtype == tf.string:
    image = tf.io.decode_image(image, channels=3, expand_animations=False)
  return image


def _same_size(image, label):
  """`label`, once it is checked to have `image`'s height and width (a map of another size
  would be stretched by the training resize, and would not line up in the eval canvas)."""
  check = tf.debugging.assert_equal(tf.shape(label), tf.shape(image)[:2],
                                    message='label map and image differ in size')
  with tf.control_dependencies([check]):
    return tf.identity(label)


def _settings(input_config):
  crop = int(input_config.crop_size)
  img_scale = tuple(int(s) for s in input_config.img_scale)
  if crop <= 0 or len(img_scale) != 2 or min(img_scale) <= 0:
    raise UserError(f'config.input needs crop_size > 0 and img_scale = (long, short) > 0, got '
                    f'{crop} and {tuple(input_config.img_scale)}')
  return crop, img_scale


def train_preprocess(input_config):
  """fn(loaded example, seed [2]) -> {'image' float32 [crop, crop, 3], 'label' int32 [crop,
  crop]}: Segmenter's training pipeline (augment.py)."""
  crop, img_scale = _settings(input_config)
  ratio_range = tuple(input_config.get('ratio_range', (0.5, 2.0)))
  cat_max_ratio = float(input_config.get('cat_max_ratio', 0.75))
  photometric = bool(input_config.get('photometric', True))
  mean, std = normalization(input_config)
  if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
    raise UserError(f'config.input.ratio_range must be (low, high) with 0 < low <= high, got '
                    f'{ratio_range}')

  def preprocess(example, seed):
    image = _decode_image(example['image'])
    label = tf.cast(_same_size(image, example['label']), tf.int32)
    image = tf.cast(image, tf.float32)
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    image, label = augment.random_resize(image, label, img_scale, ratio_range, seeds[0])
    image, label = augment.random_crop(image, label, crop, cat_max_ratio, seeds[1])
    image, label = augment.random_flip(image, label, seeds[2])
    if photometric:
      image = augment.photometric_distortion(image, seeds[3])
    image = augment.normalize(image, mean, std)
    image, label = augment.pad_to(image, label, crop, crop)
    return {'image': image, 'label': label}

  return preprocess



def train_example_spec(input_config) -> dict[str, tf.TensorSpec]:
  """What `train_preprocess` yields, from the config alone (no data is read), so a train step
  can be compiled for a machine this one is not (vit_jax.framework.fit_report)."""
  crop, _ = _settings(input_config)
  return {'image': tf.TensorSpec((crop, crop, 3), tf.float32),
          'label': tf.TensorSpec((crop, crop), tf.int32)}


def scaled_sizes(height, width, scales: Sequence[float], img_scale: Sequence[int],
                 window: int):
  """The sizes of the original's eval views of an image (height, width; int tensors of any
  shape): (after mmseg's keep-ratio resize to img_scale x scale, after Segmenter's resize that
  brings a short side below the window up to the window, aspect kept). Each [..., scales, 2]
  int32, in float64 as the original's Python arithmetic."""
  scaled, views = [], []
  for scale in scales:
    target = (math.floor(img_scale[0] * scale), math.floor(img_scale[1] * scale))
    h1, w1 = augment.rescale_size(height, width, target)
    h, w = tf.cast(h1, tf.float64), tf.cast(w1, tf.float64)
    win = tf.fill(tf.shape(h), tf.constant(window, tf.float64))
    up = tf.minimum(h, w) < win
    wide = h < w
    # segm/model/utils.py resize(): int(ratio * window) on the long side.
    h2 = tf.where(up, tf.where(wide, win, tf.floor(h / w * win)), h)
    w2 = tf.where(up, tf.where(wide, tf.floor(w / h * win), win), w)
    scaled.append(tf.stack([h1, w1], -1))
    views.append(tf.cast(tf.stack([h2, w2], -1), tf.int32))
  return tf.stack(scaled, -2), tf.stack(views, -2)


@dataclasses.dataclass(frozen=True)
class EvalGeometry:
  """Static canvases of the eval split (landscape: height <= width), measured from its sizes."""
  canvas: tuple[int, int]  # Holds every original image and label.
  scaled_canvases: tuple[tuple[int, int], ...]  # Per scale: every keep-ratio resized image.
  view_canvases: tuple[tuple[int, int], ...]  # Per scale: every view the windows slide over.


def eval_geometry(sizes: np.ndarray, scales: Sequence[float], img_scale: Sequence[int],
                  window: int) -> EvalGeometry:
  """Canvases for images of `sizes` [N, 2] (h, w)."""
  sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
  if not len(sizes):
    raise UserError('the eval split is empty')
  landscape = np.sort(sizes, axis=1)  # Portrait images are stored transposed.
  scaled, views = scaled_sizes(landscape[:, 0], landscape[:, 1], scales, img_scale, window)
  largest = lambda a: tuple(tuple(int(v) for v in row) for row in np.asarray(a).max(0))
  return EvalGeometry(canvas=tuple(int(v) for v in landscape.max(0)),
                      scaled_canvases=largest(scaled), view_canvases=largest(views))


def image_sizes(input_config, split: str) -> np.ndarray:
  """(h, w) of every image of the split (all hosts), from file headers where possible."""
  kind = input_config.get('source')
  if kind == 'shapes':
    settings = shapes.ShapesSettings.from_config(input_config.get('shapes'))
    return np.full((shapes.split_size(settings, split), 2), settings.image_size)
  if kind == 'tfds':
    name = input_config.get('dataset') or 'scene_parse150'
    ds = tfds.builder(name, data_dir=input_config.get('data_dir')).as_dataset(
        split=split, shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding(),
                                                    'annotation': tfds.decode.SkipDecoding()})
    shape = ds.map(lambda ex: tf.image.extract_jpeg_shape(ex['image'])[:2],
                   num_parallel_calls=tf.data.AUTOTUNE)
    return np.array(list(shape.as_numpy_iterator()), np.int64).reshape(-1, 2)
  images, _, _ = file_lists(input_config, split)
  sizes = []
  for path in images:
    try:
      with paths.open(path, 'rb') as f, Image.open(f) as image:
        sizes.append((image.height, image.width))  # Reads the header only.
    except (OSError, tf.errors.OpError) as e:
      raise UserError(f'cannot read image {path}: {e}') from None
  return np.array(sizes, np.int64)


def eval_preprocess(input_config, geometry: EvalGeometry):
  """fn(loaded example) -> a fixed-shape eval example (module docstring)."""
  crop, img_scale = _settings(input_config)
  scales = tuple(input_config.get('eval_scales', (1.0,)))
  canvas_h, canvas_w = geometry.canvas

  def preprocess(example):
    image = _decode_image(example['image'])
    label = tf.cast(_same_size(image, example['label']), tf.uint8)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    transposed = height > width
    image = tf.cond(transposed, lambda: tf.transpose(image, [1, 0, 2]), lambda: image)
    label = tf.cond(transposed, lambda: tf.transpose(label), lambda: label)
    size = tf.stack([tf.minimum(height, width), tf.maximum(height, width)])
    fits = tf.debugging.assert_less_equal(
        size, tf.constant([canvas_h, canvas_w]),
        message='image larger than the eval canvas measured from the split')
    with tf.control_dependencies([fits]):
      image = tf.pad(image, [[0, canvas_h - size[0]], [0, canvas_w - size[1]], [0, 0]])
    label = tf.pad(label, [[0, canvas_h - size[0]], [0, canvas_w - size[1]]],
                   constant_values=IGNORE_INDEX)
    image.set_shape((canvas_h, canvas_w, 3))
    label.set_shape((canvas_h, canvas_w))
    scaled, views = scaled_sizes(size[0], size[1], scales, img_scale, crop)
    return {'image': tf.cast(image, tf.uint8), 'label': label, 'size': size,
            'scaled_size': scaled, 'view_size': views,
            'transposed': tf.cast(transposed, tf.int32)}

  return preprocess


def check_labels(batch: dict, num_classes: int) -> None:
  """A label that is neither a class nor the ignore index is a data error, not a silent zero."""
  label = np.asarray(batch['label'])
  bad = (label >= num_classes) & (label != IGNORE_INDEX)
  if bad.any():
    raise UserError(f'label value {int(label[bad].max())} is neither a class '
                    f'(0..{num_classes - 1}) nor the ignore index 255: set '
                    'config.model.num_classes (or reduce_zero_label) to match the label maps')
