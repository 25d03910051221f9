"""Image classification data: TFDS by name, an image folder, or scikit-learn's digits (offline).

config.input fields:
  source          tfds | folder | digits
  dataset         TFDS name (source=tfds), e.g. cifar10, imagenet2012; prepared in array_record
                  (`tfds build NAME --file_format=array_record`) it is read by index, and the
                  training batches do not depend on the number of processes
  data_dir        TFDS data dir (tfds) or the folder root (folder: root/<split>/<class>/*.jpg;
                  the training split's class folders name the classes of every split; a
                  split may take a percent of each class, e.g. train[:98%] and train[98%:])
  on_bad_image    folder: skip (default; counted in the log) | stop (one line naming the files)
  train_split, eval_split  (folder and digits: a percent slice within each class, train[:10%])
  image_size      training and eval crop
  eval_resize     eval: resize the short side to this, then center-crop image_size;
                  0 / None: resize straight to image_size x image_size (the original ViT)
  eval_crop_ratio DeiT's eval (timm's crop_pct): resize the short side to
                  int(image_size / ratio) as torchvision does, then the centre crop (0.875);
                  0 / None: `eval_resize` applies
  augment         inception_crop (random area min_area..100%, flip) | flip | none |
                  pad_crop (zero-pad by `pad` pixels, random crop back; no flip) |
                  random_resized_crop (timm's: area min_area..100%, aspect 3/4..4/3, 10 tries,
                  then flip; the crop is resized to uint8 pixels as PIL's is)
  interpolation   bilinear (default) | bicubic (PIL's: antialiased when shrinking); every resize
                  and RandAugment's warps (as timm's transforms pass it on)
  normalization   vit: [-1, 1] as `(x - 127.5) / 127.5` (default, the original ViT) |
                  deit: ImageNet mean and std of x / 255 (timm's)
  randaugment     '' (off) | timm's string, e.g. rand-m9-mstd0.5-inc1 (DeiT) | big_vision's
                  randaug(N,M), e.g. randaug(2,15) (AugReg: TF-EfficientNet's ops, on the
                  resized crop truncated to uint8 as big_vision's; big_vision_randaugment.py);
                  after the flip
  random_erasing  probability of timm's RandomErasing (pixel mode), after normalisation (0: off)
  mixup_alpha, cutmix_alpha   timm's Mixup in batch mode, after batching (both 0: off)
  mix_prob, mix_switch_prob   a group is mixed with mix_prob (1.0); CutMix, when both alphas
                  are on, with mix_switch_prob (0.5)
  mix_group       examples mixed together (one lambda, partners = the group reversed): DeiT's
                  per-GPU batch (64); must divide the host's batch. 0: the host's batch, which
                  makes the batches depend on the process count. Targets are smoothed by
                  config.loss.label_smoothing.
  repeats         repeated augmentation (the loop's key, see input_pipeline.train_batches)
  channels        3 (1 for grayscale sources)
  batch_size, eval_batch_size, shuffle_buffer

Each example's randomness comes from its stateless seed (config seed, example index), each
mixed group's from its first example's: the stream is the same on resume and for any process
count (sources read in one global order).
"""

import dataclasses
import re
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from vit_jax.classification import augment as timm_augment
from vit_jax.classification import big_vision_randaugment
from vit_jax.framework import input_pipeline, paths
from vit_jax.framework.errors import UserError, choose

AUGMENTATIONS = ('inception_crop', 'random_resized_crop', 'flip', 'pad_crop', 'none')
INTERPOLATIONS = ('bilinear', 'bicubic')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


def digits_arrays(split: str) -> dict[str, np.ndarray]:
  """scikit-learn's 1797 handwritten digits (8x8, 16 grey levels) as uint8 images.

  Fixed split: 360 test examples (35-37 per class) drawn once with a fixed seed, stratified; the
  other 1437 are the training set. A percent slice takes it within each class, as for folders:
  'train[:10%]' is a small training set with every class (configs/deit_digits.py).
  """
  from sklearn import datasets, model_selection  # Only this offline source needs scikit-learn.
  try:
    name, start, stop = _split_slice(split)
  except UserError:
    name = None
  if name not in ('train', 'test'):
    raise UserError(f'digits has splits train and test (optionally sliced, e.g. train[:10%]), '
                    f'not {split!r}')
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  train, test = model_selection.train_test_split(
      np.arange(len(labels)), test_size=360, stratify=labels, random_state=0)
  part = np.sort(train if name == 'train' else test)
  if (start, stop) != (0, 100):
    part = np.sort(np.concatenate([
        members[round(len(members) * start / 100):round(len(members) * stop / 100)]
        for members in (part[labels[part] == c] for c in range(10))]))
  return {'image': images[part], 'label': labels[part]}


def folder_classes(root: str, train_split: str) -> list[str]:
  """The class names of an image folder: the training split's class folders, sorted. Every split
  labels with this one list, so a folder missing from one split cannot shift the others."""
  train_dir = _split_dir(root, _split_slice(train_split)[0])
  classes = sorted(_class_files(train_dir))
  if not classes:
    raise UserError(f'no class folders in {train_dir}: put images at {train_dir}/<class>/*.jpg')
  return classes


def folder_arrays(root: str, split: str, classes: list[str],
                  on_bad_image: str = 'skip') -> dict[str, np.ndarray]:
  """Image paths and labels under root/<split>/<class>/, labelled by their index in `classes`.

  Files that do not decode are skipped or stop the run (`on_bad_image`, see
  `input_pipeline.readable_images`).
  """
  folder, start, stop = _split_slice(split)
  split_dir = _split_dir(root, folder)
  class_files = _class_files(split_dir)
  unknown = [name for name in class_files if name not in classes]
  if unknown:
    raise UserError(f'class folders {unknown} in {split_dir} are not in the training split\'s '
                    f'classes {classes}: every split must use the training split\'s class names')
  images, labels = [], []
  for name, files in class_files.items():
    files = files[round(len(files) * start / 100):round(len(files) * stop / 100)]
    images += [paths.join(split_dir, name, f) for f in files]
    labels += [classes.index(name)] * len(files)
  if not images:
    raise UserError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) under {split_dir}/<class>/')
  readable = input_pipeline.readable_images(images, on_bad_image, split_dir)
  return {'image': np.array(images)[readable], 'label': np.array(labels, np.int64)[readable]}


def _class_files(split_dir: str) -> dict[str, list[str]]:
  """Class folder name -> its image files, both sorted; an empty class folder is an error."""
  class_files = {}
  for name in paths.listdir(split_dir):
    if paths.isdir(paths.join(split_dir, name)):
      class_files[name] = sorted(f for f in paths.listdir(paths.join(split_dir, name))
                                 if f.lower().endswith(IMAGE_EXTENSIONS))
      if not class_files[name]:
        raise UserError(f'class folder {paths.join(split_dir, name)} holds no images '
                        f'({", ".join(IMAGE_EXTENSIONS)}): add images or remove the folder')
  return class_files


def _split_slice(split: str) -> tuple[str, float, float]:
  """'train[:98%]' -> ('train', 0, 98): TFDS's percent slices, taken within each class so that
  both parts of a split keep every class; 'train' -> ('train', 0, 100)."""
  match = re.fullmatch(r'([^\[\]]+)(?:\[(\d*)%?:(\d*)%?\])?', split)
  if not match or ('[' in split and '%' not in split):
    raise UserError(f'folder split {split!r}: use a folder name, optionally with a percent '
                    'slice such as train[:98%] or train[98%:]')
  folder, start, stop = match.groups()
  return folder, float(start or 0), float(stop or 100)


def _split_dir(root: str, split: str) -> str:
  split_dir = paths.join(root or '', split)
  if not root or not paths.isdir(split_dir):
    raise UserError(f'image folder {split_dir!r} does not exist: put images at '
                    f'ROOT/{split}/<class>/*.jpg and pass --config.input.data_dir=ROOT')
  return split_dir


def make_source(input_config, split: str,
                num_classes: Optional[int] = None) -> input_pipeline.Source:
  """The examples of `split`; for a folder, `num_classes` (the model's) is checked against it."""
  kind = input_config.source
  if kind == 'digits':
    return input_pipeline.array_source(digits_arrays(split))
  if kind == 'folder':
    root = input_config.get('data_dir')
    classes = folder_classes(root, input_config.train_split)
    if num_classes is not None and num_classes != len(classes):
      raise UserError(f'config.model.num_classes is {num_classes} but {root} has '
                      f'{len(classes)} classes {classes}: pass '
                      f'--config.model.num_classes={len(classes)}')
    if split == input_config.train_split:
      logging.info('Image folder %s: %d classes %s.', root, len(classes), classes)
      if len(classes) == 1:
        logging.warning('Image folder %s has a single class %r: the model can only predict it.',
                        root, classes[0])
    arrays = folder_arrays(root, split, classes, input_config.get('on_bad_image', 'skip'))
    # Paths travel through shuffling, skipping and host slicing; a file is read only when its
    # example is about to be used on this host.
    read_file = paths.tf_read_file(root)
    return dataclasses.replace(input_pipeline.array_source(arrays),
                               load=lambda ex: dict(ex, image=read_file(ex['image'])))
  if kind == 'tfds':
    return input_pipeline.tfds_source(
        input_config.dataset, split, input_config.get('data_dir'),
        decoders={'image': tfds.decode.SkipDecoding()},
        shuffle_buffer=input_config.get('shuffle_buffer', 10_000),
        hint='Or train on your own images: --config.input.source=folder '
             '--config.input.data_dir=ROOT with ROOT/<split>/<class>/*.jpg.')
  raise UserError(f'unknown config.input.source {kind!r}: use tfds, folder or digits')


def _decode(image: tf.Tensor, channels: int) -> tf.Tensor:
  """Encoded bytes -> uint8 HxWxC; arrays pass through (grey ones made RGB if asked)."""
  if image.dtype == tf.string:
    image = tf.io.decode_image(image, channels=channels, expand_animations=False)
  elif channels == 3 and image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  return image


def _normalizer(input_config):
  """config.input.normalization as a function of float pixels in [0, 255]."""
  name = input_config.get('normalization', 'vit')
  stats = choose('config.input.normalization', name, input_pipeline.NORMALIZATIONS)
  if name == 'vit':  # The original's arithmetic, to the bit.
    return lambda image: (tf.cast(image, tf.float32) - 127.5) / 127.5
  if input_config.get('channels', 3) != 3:
    raise UserError('config.input.normalization=deit needs RGB images: set '
                    '--config.input.channels=3 or --config.input.normalization=vit')
  mean, std = (tf.constant(v, tf.float32) for v in stats)
  return lambda image: (tf.cast(image, tf.float32) / 255.0 - mean) / std  # ToTensor, Normalize.


def _interpolation(input_config) -> str:
  method = input_config.get('interpolation', 'bilinear')
  if method not in INTERPOLATIONS:
    raise UserError(f'unknown config.input.interpolation {method!r}: choose one of '
                    f'{INTERPOLATIONS}')
  return method


def _resize(image: tf.Tensor, size, method: str = 'bilinear') -> tf.Tensor:
  """To `size` (an int: square); bicubic as PIL's (antialiased when shrinking)."""
  size = (size, size) if isinstance(size, int) else size
  return tf.image.resize(image, size, method=method, antialias=method == 'bicubic')


def _to_pixels(image: tf.Tensor) -> tf.Tensor:
  """Float pixels -> uint8 as PIL stores a resized image (rounded, clipped)."""
  if image.dtype == tf.uint8:
    return image
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _resize_small_and_crop(image: tf.Tensor, resize: int, crop: int) -> tf.Tensor:
  """Short side to `resize` (aspect kept), then the central crop x crop."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = resize / tf.reduce_min(shape)
  new_shape = tf.cast(tf.round(shape * scale), tf.int32)
  image = tf.image.resize(image, new_shape, method='bilinear')
  top = (new_shape[0] - crop) // 2
  left = (new_shape[1] - crop) // 2
  return image[top:top + crop, left:left + crop]


def _resize_by_ratio_and_crop(image: tf.Tensor, crop: int, ratio: float, method: str):
  """torchvision's Resize(int(crop / ratio)) (short side; long side truncated) and
  CenterCrop(crop) (offsets rounded half to even), on uint8 pixels as PIL's: DeiT's eval."""
  short = int(crop / ratio)
  shape = tf.cast(tf.shape(image)[:2], tf.float64)
  new_shape = tf.where(shape == tf.reduce_min(shape), tf.cast(short, tf.float64),
                       tf.floor(short * shape / tf.reduce_min(shape)))
  new_shape = tf.cast(new_shape, tf.int32)
  image = _to_pixels(_resize(image, new_shape, method))
  top, left = (tf.cast(tf.round(tf.cast(new_shape[i] - crop, tf.float64) / 2), tf.int32)
               for i in (0, 1))
  return tf.cast(image[top:top + crop, left:left + crop], tf.float32)


def rand_augment_args(spec: str) -> dict:
  """timm's RandAugment string -> `augment.rand_augment`'s arguments, e.g.
  'rand-m9-mstd0.5-inc1' -> 2 ops at magnitude N(9, 0.5). Only the increasing op list
  (inc) exists here."""
  parts = spec.split('-')
  args = {'num_ops': 2, 'magnitude': 10.0, 'magnitude_std': 0.0}
  names = {'m': 'magnitude', 'n': 'num_ops', 'mstd': 'magnitude_std'}
  increasing = False
  try:
    if parts[0] != 'rand':
      raise ValueError
    for part in parts[1:]:
      key, value = re.fullmatch(r'([a-z]+)([\d.]+)', part).groups()
      if key == 'inc':
        increasing = True  # timm takes bool(value) of the string: inc0 is on too.
      else:
        args[names[key]] = int(value) if key == 'n' else float(value)
  except (ValueError, KeyError, AttributeError):
    increasing = None
  if not increasing:
    raise UserError(f'config.input.randaugment {spec!r}: use timm\'s form rand-mM[-nN]'
                    '[-mstdS]-inc1, e.g. rand-m9-mstd0.5-inc1 (only the increasing ops, inc1, '
                    'are implemented), or big_vision\'s randaug(N,M)')
  return args


def train_preprocess(input_config):
  size, augment = input_config.image_size, input_config.get('augment', 'inception_crop')
  channels = input_config.get('channels', 3)
  if augment not in AUGMENTATIONS:
    raise UserError(f'unknown config.input.augment {augment!r}: choose one of {AUGMENTATIONS}')
  method, normalize = _interpolation(input_config), _normalizer(input_config)
  spec = input_config.get('randaugment') or ''
  big_vision_args = big_vision_randaugment.parse(spec) if spec.startswith('randaug') else None
  rand_args = rand_augment_args(spec) if spec and not big_vision_args else None
  if big_vision_args and channels != 3:
    raise UserError(f'config.input.randaugment={spec} needs RGB images: set '
                    '--config.input.channels=3')
  erasing = input_config.get('random_erasing') or 0.0

  def preprocess(example, seed):
    image = _decode(example['image'], channels)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if augment == 'inception_crop':
      begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
          tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=crop_seed,
          area_range=(input_config.get('min_area', 0.05), 1.0), min_object_covered=0.0,
          use_image_if_no_bounding_boxes=True)
      image = tf.slice(image, begin, crop_size)
    if augment == 'random_resized_crop':
      top, left, height, width = timm_augment.random_resized_crop_box(
          tf.shape(image)[0], tf.shape(image)[1], crop_seed,
          scale=(input_config.get('min_area', 0.08), 1.0))
      image = _to_pixels(_resize(image[top:top + height, left:left + width], size, method))
    else:
      image = _resize(image, size, method)
    if augment == 'pad_crop':
      pad = input_config.get('pad', 4)
      image = tf.pad(image, [(pad, pad), (pad, pad), (0, 0)])
      image = tf.image.stateless_random_crop(image, (size, size, channels), crop_seed)
    if augment in ('inception_crop', 'random_resized_crop', 'flip'):
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if rand_args:  # Seeds folded in beside the crop's and flip's, which stay as they were.
      image = timm_augment.rand_augment(
          _to_pixels(image), tf.random.experimental.stateless_fold_in(seed, 1),
          interpolation=method, **rand_args)  # timm's: the warps resample as the crop.
    if big_vision_args:  # big_vision's resize casts to uint8: truncates.
      image = big_vision_randaugment.rand_augment(
          tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8),
          tf.random.experimental.stateless_fold_in(seed, 1), **big_vision_args)
    image = normalize(image)
    image.set_shape((size, size, channels))
    if erasing:
      image = timm_augment.random_erasing(
          image, tf.random.experimental.stateless_fold_in(seed, 2), probability=erasing)
    return {'image': image, 'label': tf.cast(example['label'], tf.int32)}

  return preprocess


def train_batch_preprocess(input_config, num_classes: int, label_smoothing: float = 0.0,
                           host_batch: Optional[int] = None):
  """Mixup / CutMix (timm's batch mode) as `input_pipeline.train_batches`' batch hook: (host
  batch, the examples' seeds) -> batch with mixed images and mixed smoothed targets
  ([batch, num_classes] float32). None when config.input asks for neither. `host_batch`, if
  known, is checked against config.input.mix_group now rather than when tf.data traces."""
  mixup_alpha = input_config.get('mixup_alpha') or 0.0
  cutmix_alpha = input_config.get('cutmix_alpha') or 0.0
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return None
  # timm: CutMix alone when mixup is off, Mixup alone when CutMix is; else switch.
  switch = (input_config.get('mix_switch_prob', 0.5) if mixup_alpha > 0 and cutmix_alpha > 0
            else float(cutmix_alpha > 0))
  prob, group = input_config.get('mix_prob', 1.0), input_config.get('mix_group') or 0

  def check_group(local):
    size = group or local
    if local % size or size % 2:
      raise UserError(f'config.input.mix_group {size} must be even and divide the host\'s batch '
                      f'of {local} examples: set --config.input.mix_group')
    return size

  if host_batch:
    check_group(host_batch)

  def mix_batch(batch, seeds):
    images = batch['image']
    local, height, width, channels = images.shape
    size = check_group(local)

    def mix_group(args):
      group_images, labels, seed = args
      apply_seed, draw_seed = tf.unstack(tf.random.experimental.stateless_split(
          tf.random.experimental.stateless_fold_in(seed, 3), 2))
      lam, use_cutmix, cy, cx = timm_augment.mixup_parameters(
          draw_seed, height, width, mixup_alpha or 1.0, cutmix_alpha or 1.0, switch)
      apply = tf.random.stateless_uniform([], apply_seed) < prob
      return timm_augment.mix(group_images, labels, tf.where(apply, lam, 1.0),
                              use_cutmix & apply, cy, cx, num_classes, label_smoothing)

    grouped = (tf.reshape(images, [local // size, size, height, width, channels]),
               tf.reshape(batch['label'], [local // size, size]), seeds[::size])
    mixed, targets = tf.map_fn(mix_group, grouped,
                               fn_output_signature=(tf.float32, tf.float32))
    return dict(batch, image=tf.reshape(mixed, images.shape),
                label=tf.reshape(targets, [local, num_classes]))

  return mix_batch


def train_example_spec(input_config, num_classes: Optional[int] = None) -> dict[str, tf.TensorSpec]:
  """What the training stream yields per example, from the config alone (no data is read), so a
  train step can be compiled for a machine this one is not (vit_jax.framework.fit_report).
  With Mixup / CutMix the label is a [num_classes] target distribution."""
  size, channels = input_config.image_size, input_config.get('channels', 3)
  label = tf.TensorSpec((), tf.int32)
  if num_classes and ((input_config.get('mixup_alpha') or 0) > 0
                      or (input_config.get('cutmix_alpha') or 0) > 0):
    label = tf.TensorSpec((num_classes,), tf.float32)
  return {'image': tf.TensorSpec((size, size, channels), tf.float32), 'label': label}


def eval_preprocess(input_config):
  size = input_config.image_size
  resize, ratio = input_config.get('eval_resize'), input_config.get('eval_crop_ratio')
  channels = input_config.get('channels', 3)
  method, normalize = _interpolation(input_config), _normalizer(input_config)
  if resize and ratio:
    raise UserError('config.input.eval_resize and eval_crop_ratio both set: keep one (DeiT\'s '
                    'eval is eval_crop_ratio=0.875, ViT\'s eval_resize)')

  def preprocess(example):
    image = _decode(example['image'], channels)
    if ratio:
      image = _resize_by_ratio_and_crop(image, size, ratio, method)
    elif resize:
      image = _resize_small_and_crop(image, resize, size)
    else:
      image = _resize(image, size, method)
    image.set_shape((size, size, channels))
    return {'image': normalize(image), 'label': tf.cast(example['label'], tf.int32)}

  return preprocess
