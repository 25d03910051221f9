"""Segmenter's training augmentation (the mmseg 0.14.1 pipeline it used) as TF ops.

  Resize(img_scale, ratio_range=(0.5, 2.0)) -> RandomCrop(crop, cat_max_ratio=0.75) ->
  RandomFlip(0.5) -> PhotoMetricDistortion -> Normalize -> Pad(crop, 0, seg 255)

Images are float32 [H, W, 3] holding uint8 values (0..255, as the original's uint8 arrays) until
`normalize`; labels are int32 [H, W]. Every random op takes a stateless seed of shape [2].
Differences from the original, all below one grey level or one pixel of placement: bilinear
resizing is TF's (the original: OpenCV's fixed-point one), and the saturation and hue jitters work
on floating-point HSV (the original: OpenCV's 8-bit HSV).
"""

from typing import Sequence

import tensorflow as tf

IGNORE_INDEX = 255
# mmseg PhotoMetricDistortion defaults.
BRIGHTNESS_DELTA = 32
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18  # In OpenCV's 8-bit hue unit: 180 is the full circle.
CROP_TRIES = 10  # RandomCrop re-draws the crop up to 10 times for cat_max_ratio.


def rescale_size(height, width, scale: Sequence):
  """mmcv.imrescale's size for keep-ratio `scale` = (a, b): the image as large as fits with its
  long side <= max(a, b) and short side <= min(a, b); sides rounded half up. float64 as Python."""
  h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  a, b = tf.cast(scale[0], tf.float64), tf.cast(scale[1], tf.float64)
  factor = tf.minimum(tf.maximum(a, b) / tf.maximum(h, w), tf.minimum(a, b) / tf.minimum(h, w))
  return (tf.cast(tf.floor(h * factor + 0.5), tf.int32),
          tf.cast(tf.floor(w * factor + 0.5), tf.int32))


def resize_nearest(label, height, width):
  """OpenCV's INTER_NEAREST (what mmcv uses for label maps): source index floor(dst * in/out)."""
  in_h, in_w = tf.shape(label)[0], tf.shape(label)[1]

  def index(out_size, in_size):
    scale = tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)
    source = tf.floor(tf.cast(tf.range(out_size), tf.float64) * scale)
    return tf.minimum(tf.cast(source, tf.int32), in_size - 1)

  return tf.gather(tf.gather(label, index(height, in_h), axis=0), index(width, in_w), axis=1)


def random_resize(image, label, img_scale: Sequence[int], ratio_range: Sequence[float], seed):
  """Resize(img_scale, ratio_range, keep_ratio): ratio ~ U(ratio_range), then keep-ratio rescale
  to (int(img_scale[0] * ratio), int(img_scale[1] * ratio)); bilinear image, nearest label."""
  ratio = tf.random.stateless_uniform([], seed, ratio_range[0], ratio_range[1], tf.float64)
  scale = [tf.floor(float(s) * ratio) for s in img_scale]
  height, width = rescale_size(tf.shape(image)[0], tf.shape(image)[1], scale)
  image = tf.image.resize(image, tf.stack([height, width]), method='bilinear')
  image = tf.clip_by_value(tf.round(image), 0.0, 255.0)  # Back to uint8 values, as cv2 does.
  return image, resize_nearest(label, height, width)


def _crop_offset(seed, margin_h, margin_w):
  """get_crop_bbox: offsets uniform in 0..margin (inclusive) on each axis."""
  seed_h, seed_w = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  return (tf.random.stateless_uniform([], seed_h, 0, margin_h + 1, tf.int32),
          tf.random.stateless_uniform([], seed_w, 0, margin_w + 1, tf.int32))


def random_crop(image, label, crop_size: int, cat_max_ratio: float, seed):
  """RandomCrop(crop_size, cat_max_ratio): a crop of at most crop_size x crop_size at a uniform
  offset; while the crop's most frequent label (ignore excluded) covers cat_max_ratio or more of
  its labelled pixels, or it holds fewer than two labels, draw again (10 times at most; the
  last draw stands)."""
  height, width = tf.shape(label)[0], tf.shape(label)[1]
  margin_h = tf.maximum(height - crop_size, 0)
  margin_w = tf.maximum(width - crop_size, 0)

  def draw(attempt):
    return _crop_offset(tf.random.experimental.stateless_fold_in(seed, attempt), margin_h,
                        margin_w)

  def acceptable(top, left):
    crop = label[top:top + crop_size, left:left + crop_size]
    counts = tf.math.bincount(tf.reshape(crop, [-1]), minlength=256, maxlength=256)
    counts = tf.tensor_scatter_nd_update(counts, [[IGNORE_INDEX]], [0])
    present = tf.math.count_nonzero(counts)
    share = tf.cast(tf.reduce_max(counts), tf.float64) / tf.cast(
        tf.maximum(tf.reduce_sum(counts), 1), tf.float64)
    return (present > 1) & (share < cat_max_ratio)

  top, left = draw(0)
  if cat_max_ratio < 1.0:
    def redraw(attempt, top, left):
      top, left = draw(attempt + 1)
      return attempt + 1, top, left
    _, top, left = tf.while_loop(
        lambda attempt, top, left: (attempt < CROP_TRIES) & ~acceptable(top, left), redraw,
        (tf.constant(0), top, left))
  return (image[top:top + crop_size, left:left + crop_size],
          label[top:top + crop_size, left:left + crop_size])


def random_flip(image, label, seed, prob: float = 0.5):
  """RandomFlip(prob): image and label mirrored left-right together."""
  flip = tf.random.stateless_uniform([], seed) < prob
  return (tf.cond(flip, lambda: image[:, ::-1], lambda: image),
          tf.cond(flip, lambda: label[:, ::-1], lambda: label))


def _to_uint8_values(image, alpha=1.0, beta=0.0):
  """The original's convert(): float multiply-add, clip to 0..255, truncate to uint8."""
  return tf.floor(tf.clip_by_value(image * alpha + beta, 0.0, 255.0))


def photometric_distortion(image, seed):
  """PhotoMetricDistortion: each step applied with probability 1/2: brightness +- 32; contrast
  x U(0.5, 1.5) either before or after (1/2 each) saturation x U(0.5, 1.5) and hue +- 18 (of
  180)."""
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 9))
  coin = lambda s: tf.random.stateless_uniform([], s) < 0.5
  uniform = lambda s, low, high: tf.random.stateless_uniform([], s, low, high)

  def maybe(s, apply_fn, image):
    return tf.cond(coin(s), lambda: apply_fn(image), lambda: image)

  def brightness(image):
    return _to_uint8_values(image, beta=uniform(seeds[1], -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA))

  def contrast(image):
    return _to_uint8_values(image, alpha=uniform(seeds[3], *CONTRAST_RANGE))

  def saturation(image):
    hsv = tf.image.rgb_to_hsv(image / 255.0)
    factor = uniform(seeds[5], *SATURATION_RANGE)
    hsv = tf.concat([hsv[..., :1], tf.clip_by_value(hsv[..., 1:2] * factor, 0.0, 1.0),
                     hsv[..., 2:]], -1)
    return tf.round(tf.image.hsv_to_rgb(hsv) * 255.0)

  def hue(image):
    hsv = tf.image.rgb_to_hsv(image / 255.0)
    # randint(-18, 18): -18..17, as numpy's randint excludes the upper bound.
    delta = tf.random.stateless_uniform([], seeds[7], -HUE_DELTA, HUE_DELTA, tf.int32)
    shifted = tf.math.floormod(hsv[..., :1] + tf.cast(delta, tf.float32) / 180.0, 1.0)
    return tf.round(tf.image.hsv_to_rgb(tf.concat([shifted, hsv[..., 1:]], -1)) * 255.0)

  image = maybe(seeds[0], brightness, image)
  contrast_first = coin(seeds[2])
  image = tf.cond(contrast_first, lambda: maybe(seeds[4], contrast, image), lambda: image)
  image = maybe(seeds[6], saturation, image)
  image = maybe(seeds[8], hue, image)
  return tf.cond(contrast_first, lambda: image, lambda: maybe(seeds[4], contrast, image))


def normalize(image, mean: Sequence[float], std: Sequence[float]):
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def pad_to(image, label, height: int, width: int):
  """Pad(size): bottom and right; image with 0 (after Normalize: the mean colour), label with
  the ignore index."""
  pad_h = height - tf.shape(image)[0]
  pad_w = width - tf.shape(image)[1]
  image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
  label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=IGNORE_INDEX)
  image.set_shape((height, width, 3))
  label.set_shape((height, width))
  return image, label
