"""DETR's image and box transforms (facebookresearch/detr datasets/transforms.py) as TF ops.

Images are float32 [H, W, 3] in 0..255 with dynamic H, W; boxes are absolute (x0, y0, x1, y1)
pixel-edge coordinates [R, 4] beside an int32 mask [R] (1 = real box), so every op keeps a fixed
number of box rows. Randomness is stateless: every random op takes a seed of shape [2].
Panoptic data adds `segments`, an int32 [H, W] map of segment ids, transformed alike (resized
with PyTorch's nearest rule, as the original resizes its masks) and returned last.
"""

from typing import Optional, Sequence

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def target_size(height, width, size, max_size: Optional[int] = None):
  """The original's get_size_with_aspect_ratio: the short side to `size`, but the long side at
  most `max_size` (short side then round(max_size * short / long), half to even as Python's
  round), the long side truncated. float64 keeps Python's arithmetic exactly. Returns int32
  (new_height, new_width)."""
  h = tf.cast(height, tf.float64)
  w = tf.cast(width, tf.float64)
  size = tf.cast(size, tf.float64)
  if max_size:
    short, long = tf.minimum(w, h), tf.maximum(w, h)
    too_long = long / short * size > max_size
    size = tf.where(too_long, tf.round(max_size * short / long), size)
  new_h = tf.where(w < h, tf.floor(size * h / w), size)
  new_w = tf.where(w < h, size, tf.floor(size * w / h))
  # Unchanged when the short side already has the size (the original returns (h, w) as is).
  unchanged = ((w <= h) & (w == size)) | ((h <= w) & (h == size))
  new_h = tf.where(unchanged, h, new_h)
  new_w = tf.where(unchanged, w, new_w)
  return tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)


def fit_size(height, width, fit: Sequence[int]):
  """(height, width) scaled down, aspect kept, until it fits in `fit` = (max_h, max_w)."""
  h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  max_h, max_w = (tf.constant(float(s), tf.float64) for s in fit)
  scale = tf.minimum(tf.constant(1.0, tf.float64), tf.minimum(max_h / h, max_w / w))
  new_h = tf.clip_by_value(tf.floor(h * scale + 1e-6), 1.0, max_h)
  new_w = tf.clip_by_value(tf.floor(w * scale + 1e-6), 1.0, max_w)
  return tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)


def _with(result: tuple, segments) -> tuple:
  return result if segments is None else result + (segments,)


def resize_nearest(segments, height, width):
  """[H, W] -> [height, width] by PyTorch's nearest rule: source = floor(target * H / height)."""
  def source(size_in, size_out):
    scale = tf.cast(size_in, tf.float32) / tf.cast(size_out, tf.float32)
    index = tf.cast(tf.floor(tf.cast(tf.range(size_out), tf.float32) * scale), tf.int32)
    return tf.minimum(index, size_in - 1)
  rows = source(tf.shape(segments)[0], height)
  return tf.gather(tf.gather(segments, rows), source(tf.shape(segments)[1], width), axis=1)


def resize(image, boxes, size, max_size: Optional[int] = None,
           fit: Optional[Sequence[int]] = None, segments=None):
  """Resize (bilinear, antialiased like PIL's) by the original's size rule; boxes scaled by the
  per-axis ratios. `fit` (max_h, max_w): shrink further if the result would not fit there."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  new_h, new_w = target_size(height, width, size, max_size)
  if fit is not None:
    new_h, new_w = fit_size(new_h, new_w, fit)
  image = tf.image.resize(image, tf.stack([new_h, new_w]), method='bilinear', antialias=True)
  ratio_w = tf.cast(new_w, tf.float32) / tf.cast(width, tf.float32)
  ratio_h = tf.cast(new_h, tf.float32) / tf.cast(height, tf.float32)
  if segments is not None:
    segments = resize_nearest(segments, new_h, new_w)
  return _with((image, boxes * tf.stack([ratio_w, ratio_h, ratio_w, ratio_h])), segments)


def hflip(image, boxes, segments=None):
  """Mirror left-right: x -> width - x, so x0 and x1 swap."""
  width = tf.cast(tf.shape(image)[1], tf.float32)
  x0, y0, x1, y1 = tf.unstack(boxes, axis=-1)
  if segments is not None:
    segments = tf.reverse(segments, axis=[1])
  return _with((tf.image.flip_left_right(image),
                tf.stack([width - x1, y0, width - x0, y1], axis=-1)), segments)


def crop(image, boxes, mask, top, left, height, width, segments=None):
  """The original's crop: boxes shifted, clipped to the crop; boxes left without area dropped
  (mask 0)."""
  image = image[top:top + height, left:left + width]
  if segments is not None:
    segments = segments[top:top + height, left:left + width]
  offset = tf.cast(tf.stack([left, top, left, top]), tf.float32)
  limit = tf.cast(tf.stack([width, height, width, height]), tf.float32)
  boxes = tf.clip_by_value(boxes - offset, 0.0, limit)
  return _with((image, boxes, mask * tf.cast(has_area(boxes), tf.int32)), segments)


def has_area(boxes):
  return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _randint(seed, low, high):
  """Uniform integer in [low, high], both inclusive (Python's random.randint)."""
  return tf.random.stateless_uniform([], seed, minval=low, maxval=high + 1, dtype=tf.int32)


def random_resize(image, boxes, sizes: Sequence[int], seed, max_size: Optional[int] = None,
                  fit: Optional[Sequence[int]] = None, segments=None):
  """RandomResize: the short side to one of `sizes`, drawn uniformly."""
  size = tf.gather(tf.constant(sizes, tf.int32), _randint(seed, 0, len(sizes) - 1))
  return resize(image, boxes, size, max_size, fit, segments)


def random_size_crop(image, boxes, mask, min_size: int, max_size: int, seed, segments=None):
  """RandomSizeCrop: crop width in [min_size, min(W, max_size)], height likewise, then a
  uniform position. Images smaller than min_size are cropped to at most their own size (the
  original would raise)."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  seeds = tf.random.experimental.stateless_split(seed, 4)
  crop_w = _randint(seeds[0], tf.minimum(min_size, width), tf.minimum(width, max_size))
  crop_h = _randint(seeds[1], tf.minimum(min_size, height), tf.minimum(height, max_size))
  top = _randint(seeds[2], 0, height - crop_h)
  left = _randint(seeds[3], 0, width - crop_w)
  return crop(image, boxes, mask, top, left, crop_h, crop_w, segments)


def detr_augment(image, boxes, mask, seed, *, scales: Sequence[int], max_size: Optional[int],
                 crop_resize_scales: Sequence[int], crop_min: int, crop_max: int,
                 fit: Optional[Sequence[int]] = None, segments=None):
  """make_coco_transforms('train'): flip (p 0.5); then with p 0.5 a multi-scale resize, else
  resize to crop_resize_scales -> random size crop -> multi-scale resize."""
  seeds = tf.random.experimental.stateless_split(seed, 6)
  flip = tf.random.stateless_uniform([], seeds[0]) < 0.5
  flipped = tf.cond(flip, lambda: hflip(image, boxes, segments),
                    lambda: _with((image, boxes), segments))
  image, boxes, segments = flipped[0], flipped[1], flipped[2] if segments is not None else None

  def resize_only():
    out = random_resize(image, boxes, scales, seeds[2], max_size, fit, segments)
    return out[:2] + (mask,) + out[2:]

  def resize_crop_resize():
    small = random_resize(image, boxes, crop_resize_scales, seeds[3], segments=segments)
    cropped = random_size_crop(small[0], small[1], mask, crop_min, crop_max, seeds[4],
                               *small[2:])
    out = random_resize(cropped[0], cropped[1], scales, seeds[5], max_size, fit, *cropped[3:])
    return out[:2] + (cropped[2],) + out[2:]

  return tf.cond(tf.random.stateless_uniform([], seeds[1]) < 0.5, resize_only,
                 resize_crop_resize)


def normalize_and_pad(image, pad_size: Sequence[int]):
  """RGB/255 standardised with ImageNet's mean/std, then zero-padded bottom/right to
  `pad_size` (h, w). Returns (image, pixel_mask) with pixel_mask 1 on image pixels."""
  image = (image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  paddings = [[0, pad_size[0] - height], [0, pad_size[1] - width]]
  image = tf.pad(image, paddings + [[0, 0]])
  pixel_mask = tf.pad(tf.ones([height, width], tf.int32), paddings)
  image.set_shape(tuple(pad_size) + (3,))
  pixel_mask.set_shape(tuple(pad_size))
  return image, pixel_mask


def to_targets(boxes, mask, labels, height, width):
  """Real boxes first (order kept), as normalised (cx, cy, w, h) of the unpadded image; padding
  rows are zeros."""
  order = tf.argsort(1 - mask, stable=True)
  boxes, mask, labels = tf.gather(boxes, order), tf.gather(mask, order), tf.gather(labels, order)
  x0, y0, x1, y1 = tf.unstack(boxes, axis=-1)
  w, h = tf.cast(width, tf.float32), tf.cast(height, tf.float32)
  cxcywh = tf.stack([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h], -1)
  real = tf.cast(mask, tf.float32)
  return {'boxes': cxcywh * real[:, None], 'labels': labels * mask, 'box_mask': mask}
