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
  train_split, eval_split
  image_size      training and eval crop
  eval_resize     eval: resize the short side to this, then center-crop image_size;
                  0 / None: resize straight to image_size x image_size (the original ViT)
  augment         inception_crop (random area min_area..100%, flip) | flip | none |
                  pad_crop (zero-pad by `pad` pixels, random crop back; no flip)
  channels        3 (1 for grayscale sources)
  batch_size, eval_batch_size, shuffle_buffer

Pixels go to [-1, 1] as `(x - 127.5) / 127.5`, as in the original ViT.
"""

import dataclasses
import re
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from vit_jax.framework import input_pipeline, paths
from vit_jax.framework.errors import UserError

AUGMENTATIONS = ('inception_crop', 'flip', 'pad_crop', 'none')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


def digits_arrays(split: str) -> dict[str, np.ndarray]:
  """scikit-learn's 1797 handwritten digits (8x8, 16 grey levels) as uint8 images.

  Fixed split: 360 test examples (35-37 per class) drawn once with a fixed seed, stratified; the
  other 1437 are the training set.
  """
  from sklearn import datasets, model_selection  # Only this offline source needs scikit-learn.
  if split not in ('train', 'test'):
    raise UserError(f'digits has splits train and test, not {split!r}')
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  train, test = model_selection.train_test_split(
      np.arange(len(labels)), test_size=360, stratify=labels, random_state=0)
  part = np.sort(train if split == 'train' else test)
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


def _to_unit_range(image: tf.Tensor) -> tf.Tensor:
  return (tf.cast(image, tf.float32) - 127.5) / 127.5


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
  return tf.image.resize(image, (size, size), method='bilinear')


def _resize_small_and_crop(image: tf.Tensor, resize: int, crop: int) -> tf.Tensor:
  """Short side to `resize` (aspect kept), then the central crop x crop."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = resize / tf.reduce_min(shape)
  new_shape = tf.cast(tf.round(shape * scale), tf.int32)
  image = tf.image.resize(image, new_shape, method='bilinear')
  top = (new_shape[0] - crop) // 2
  left = (new_shape[1] - crop) // 2
  return image[top:top + crop, left:left + crop]


def train_preprocess(input_config):
  size, augment = input_config.image_size, input_config.get('augment', 'inception_crop')
  channels = input_config.get('channels', 3)
  if augment not in AUGMENTATIONS:
    raise UserError(f'unknown config.input.augment {augment!r}: choose one of {AUGMENTATIONS}')

  def preprocess(example, seed):
    image = _decode(example['image'], channels)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if augment == 'inception_crop':
      begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
          tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=crop_seed,
          area_range=(input_config.get('min_area', 0.05), 1.0), min_object_covered=0.0,
          use_image_if_no_bounding_boxes=True)
      image = tf.slice(image, begin, crop_size)
    image = _resize(image, size)
    if augment == 'pad_crop':
      pad = input_config.get('pad', 4)
      image = tf.pad(image, [(pad, pad), (pad, pad), (0, 0)])
      image = tf.image.stateless_random_crop(image, (size, size, channels), crop_seed)
    if augment in ('inception_crop', 'flip'):
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image.set_shape((size, size, channels))
    return {'image': _to_unit_range(image), 'label': tf.cast(example['label'], tf.int32)}

  return preprocess



def train_example_spec(input_config) -> dict[str, tf.TensorSpec]:
  """What `train_preprocess` yields, from the config alone (no data is read), so a train step
  can be compiled for a machine this one is not (vit_jax.framework.fit_report)."""
  size, channels = input_config.image_size, input_config.get('channels', 3)
  return {'image': tf.TensorSpec((size, size, channels), tf.float32),
          'label': tf.TensorSpec((), tf.int32)}


def eval_preprocess(input_config):
  size = input_config.image_size
  resize = input_config.get('eval_resize')
  channels = input_config.get('channels', 3)

  def preprocess(example):
    image = _decode(example['image'], channels)
    image = _resize_small_and_crop(image, resize, size) if resize else _resize(image, size)
    image.set_shape((size, size, channels))
    return {'image': _to_unit_range(image), 'label': tf.cast(example['label'], tf.int32)}

  return preprocess
