"""DeiT's training augmentations as timm implements them (reference/deit.md §4), in TensorFlow
for the host's tf.data pipeline: RandomResizedCrop's box, RandAugment `rand-m9-mstd0.5-inc1`,
random erasing (pixel mode) and batch Mixup / CutMix with smoothed targets.

Every op is a deterministic function of its input and its random parameters (`magnitude`,
`factor`, the erased box and its noise, lambda and the CutMix box), so each is checked against
timm's own function on the same parameters; the samplers (`random_resized_crop_box`,
`rand_augment`, `random_erasing`, `mixup_parameters`) draw those parameters from a stateless seed
as timm's draw them.

Pixel ops (RandAugment's) take and return uint8 (H, W, C) images and reproduce Pillow's
arithmetic (lookup tables, the L conversion, truncating blends). The warps (rotate, shear,
translate) resample as PIL's Image.transform(AFFINE): `interpolation='bicubic'` (DeiT's, timm's
hparams interpolation=BICUBIC) equals PIL's to the bit (PIL's transform cubic has a = -1, not
its resize's -0.5; float64 in its order of operations); a rotation can differ by one grey level
on a few pixels in 10^5 where TF's cos or sin rounds otherwise than Python's. 'bilinear' is TF's
float32 projective transform: within one grey level of PIL's BILINEAR on a few % of pixels.
"""

import math

import tensorflow as tf

from vit_jax.framework.errors import UserError

FILL = (124, 116, 104)  # RandAugment's fill: round(255 x ImageNet mean).


# ------------------------------------------------------------------ RandAugment's pixel ops


def _lookup(image: tf.Tensor, tables: tf.Tensor) -> tf.Tensor:
  """Each channel c of a uint8 image through its own 256-entry table tables[c]."""
  channels = tf.shape(image)[-1]
  index = tf.cast(image, tf.int32) + 256 * tf.range(channels)
  return tf.cast(tf.clip_by_value(tf.gather(tf.reshape(tables, [-1]), index), 0, 255), tf.uint8)


def _histograms(image: tf.Tensor) -> tf.Tensor:
  """(C, 256) pixel counts per channel."""
  channels = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, tf.shape(image)[-1]]))
  return tf.map_fn(lambda c: tf.math.bincount(c, minlength=256, maxlength=256), channels)


def auto_contrast(image):
  """ImageOps.autocontrast: each channel's min -> 0 and max -> 255, truncated (int())."""
  pixels = tf.cast(tf.reshape(image, [-1, tf.shape(image)[-1]]), tf.float64)
  low, high = tf.reduce_min(pixels, 0)[:, None], tf.reduce_max(pixels, 0)[:, None]
  levels = tf.range(256, dtype=tf.float64)[None]
  scale = 255.0 / tf.maximum(high - low, 1.0)
  stretched = tf.cast(tf.floor(levels * scale - low * scale), tf.int32)
  return _lookup(image, tf.where(high > low, stretched, tf.cast(levels, tf.int32)))


def equalize(image):
  """ImageOps.equalize: per channel, levels spread by the cumulative histogram."""
  histograms = _histograms(image)
  last = tf.gather(histograms, tf.reduce_max(  # The count of the highest level present.
      tf.where(histograms > 0, tf.range(256), 0), axis=1), batch_dims=1)
  step = (tf.reduce_sum(histograms, 1) - last) // 255
  before = tf.cumsum(histograms, axis=1, exclusive=True)
  safe_step = tf.maximum(step, 1)[:, None]
  equalized = (safe_step // 2 + before) // safe_step
  return _lookup(image, tf.where(step[:, None] > 0, equalized, tf.range(256)[None]))


def invert(image):
  return 255 - image


def posterize(image, bits):
  """Keeps the top `bits` bits (0 bits: black)."""
  mask = tf.bitwise.left_shift(255, 8 - tf.cast(bits, tf.int32)) & 255  # In int32: 8 is a shift.
  return tf.cast(tf.cast(image, tf.int32) & mask, tf.uint8)


def solarize(image, threshold):
  """Levels at or above `threshold` inverted."""
  return tf.where(tf.cast(image, tf.int32) >= threshold, 255 - image, image)


def solarize_add(image, addition, threshold=128):
  """Levels below `threshold` raised by `addition` (at most to 255)."""
  raised = tf.cast(tf.minimum(tf.cast(image, tf.int32) + addition, 255), tf.uint8)
  return tf.where(tf.cast(image, tf.int32) < threshold, raised, image)


def _luminance(image):
  """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16."""
  rgb = tf.cast(image, tf.int32)
  return (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) // 65536


def blend(degenerate, image, factor):
  """Image.blend(degenerate, image, factor): float32, clamped, truncated."""
  degenerate, image = tf.cast(degenerate, tf.float32), tf.cast(image, tf.float32)
  blended = degenerate + tf.cast(factor, tf.float32) * (image - degenerate)
  return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


def color(image, factor):
  """ImageEnhance.Color: blend from the image's grey version."""
  grey = _luminance(image)[..., None]
  return blend(tf.broadcast_to(grey, tf.shape(image)), image, factor)


def contrast(image, factor):
  """ImageEnhance.Contrast: blend from the mean grey level, rounded."""
  mean = tf.reduce_mean(tf.cast(_luminance(image), tf.float64))
  return blend(tf.fill(tf.shape(image), tf.floor(mean + 0.5)), image, factor)


def brightness(image, factor):
  """ImageEnhance.Brightness: blend from black."""
  return blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor, truncate: bool = False):
  """ImageEnhance.Sharpness: blend from ImageFilter.SMOOTH ([1 1 1; 1 5 1; 1 1 1] / 13,
  rounded; the border pixels left as they are). truncate: the smoothed levels truncated, as
  TF-EfficientNet's RandAugment (big_vision's) casts them."""
  pixels = tf.cast(image, tf.float32)[None]
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  channels = tf.shape(image)[-1]
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
  smooth = tf.nn.depthwise_conv2d(pixels, kernel, [1, 1, 1, 1], 'VALID')[0]
  smooth = smooth if truncate else tf.floor(smooth + 0.5)
  smooth = tf.cast(tf.clip_by_value(smooth, 0.0, 255.0), tf.uint8)
  degenerate = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  inside = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
  return blend(tf.where(inside, degenerate, image), image, factor)


# --------------------------------------------------------------- RandAugment's warps


def affine(image, matrix, fill=FILL, interpolation: str = 'bilinear'):
  """PIL's Image.transform(AFFINE, matrix, BILINEAR or BICUBIC): output pixel (x, y) samples
  the input at (a x + b y + c, d x + e y + f) (pixel centres at +0.5); a sample outside the
  image is `fill`, one inside interpolates between the nearest pixels (the edge's repeated).
  Bilinear returns uint8; bicubic returns the image's dtype (a float image unrounded, as PIL's
  mode F)."""
  if interpolation == 'bicubic':
    return _bicubic_affine(image, matrix, fill)
  if interpolation != 'bilinear':
    raise UserError(f'RandAugment interpolation {interpolation!r}: use bilinear or bicubic')
  a, b, c, d, e, f = [tf.cast(m, tf.float32) for m in matrix]
  # TF's transform maps output indices (centres at integers) to input indices.
  return project(image, (a, b, c + 0.5 * (a + b) - 0.5, d, e, f + 0.5 * (d + e) - 0.5), fill)


def project(image, transform, fill=FILL, interpolation: str = 'BILINEAR'):
  """Output pixel (x, y) samples the input at index (a x + b y + c, d x + e y + f) (TF's and
  tfa.image's convention: pixel centres at integers), `transform` = (a, b, c, d, e, f);
  BILINEAR or NEAREST; a sample outside the image is `fill`."""
  transform = tf.stack([tf.cast(t, tf.float32) for t in transform] + [0.0, 0.0])
  pixels = tf.cast(image, tf.float32)[None]

  def warp(images, interpolation, fill_mode):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transform[None], output_shape=tf.shape(image)[:2],
        fill_value=0.0, interpolation=interpolation, fill_mode=fill_mode)[0]
  warped = warp(pixels, interpolation, 'NEAREST')
  inside = warp(tf.ones_like(pixels[..., :1]), 'NEAREST', 'CONSTANT') > 0.5
  filled = tf.where(inside, warped, tf.constant(fill, tf.float32)[:tf.shape(image)[-1]])
  return tf.cast(tf.clip_by_value(tf.floor(filled), 0.0, 255.0), tf.uint8)


def _float64(value):
  """A Python float straight to float64 (tf.cast would pass it through float32 first)."""
  return tf.cast(value, tf.float64) if tf.is_tensor(value) else tf.constant(value, tf.float64)


def _cubic(v0, v1, v2, v3, d):
  """PIL's transform cubic through four samples, at fraction d of the way from v1 to v2: Keys'
  kernel with a = -1 (its resize uses -0.5), written in PIL's operation order so that float64
  rounds as its doubles do."""
  p2 = v2 - v0
  p3 = 2.0 * (v0 - v1) + v2 - v3
  p4 = -v0 + v1 - v2 + v3
  return v1 + d * (p2 + d * (p3 + d * p4))


def _bicubic_affine(image, matrix, fill):
  """PIL's affine transform with BICUBIC (libImaging/Geometry.c), to the bit on uint8: the 4x4
  neighbours of the sample point (rows and columns clamped to the image), the cubic along each
  row then down the column in float64, clipped to 0..255 and truncated; `fill` outside."""
  a, b, c, d, e, f = [_float64(m) for m in matrix]
  height, width, channels = tf.unstack(tf.shape(image))
  h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  y = tf.range(h, dtype=tf.float64)[:, None] + 0.5
  x = tf.range(w, dtype=tf.float64)[None, :] + 0.5
  x_in, y_in = tf.reshape(a * x + b * y + c, [-1]), tf.reshape(d * x + e * y + f, [-1])
  inside = (x_in >= 0.0) & (x_in < w) & (y_in >= 0.0) & (y_in < h)
  x_in, y_in = x_in - 0.5, y_in - 0.5  # Pixel centres to indices.
  left, top = tf.floor(x_in), tf.floor(y_in)
  dx, dy = x_in - left, y_in - top
  # The image edge-padded by 2: a point inside has its neighbours (indices left - 1 ..
  # left + 2, left >= -1) at padded columns left + 1 .. left + 4.
  padded = tf.gather(image, tf.clip_by_value(tf.range(-2, height + 2), 0, height - 1))
  padded = tf.gather(padded, tf.clip_by_value(tf.range(-2, width + 2), 0, width - 1), axis=1)
  top = tf.clip_by_value(tf.cast(top, tf.int32), -1, height - 1) + 1  # Outside: any pixels.
  left = tf.clip_by_value(tf.cast(left, tf.int32), -1, width - 1) + 1
  if image.dtype == tf.uint8:  # Up to 4 channels packed in an int32: a third of the gathers.
    pixels = tf.reshape(tf.bitcast(tf.pad(padded, [[0, 0], [0, 0], [0, 4 - channels]]),
                                   tf.int32), [-1])
    gather = lambda index: tf.bitcast(tf.gather(pixels, index), tf.uint8)[..., :channels]
  else:
    pixels = tf.reshape(tf.transpose(padded, [2, 0, 1]), [channels, -1])
    gather = lambda index: tf.transpose(tf.gather(pixels, index, axis=1), [1, 2, 3, 0])

  def taps(rows, cols):
    """The neighbours at these row and column offsets, (column, row, pixel, channel) float64."""
    index = ((top + tf.constant(rows)[:, None]) * (width + 4)
             + left + tf.constant(cols)[:, None, None])
    return tf.cast(gather(index), tf.float64)

  def cubic(samples, d):  # Along the first axis; d broadcast once (TF's broadcasting is slow).
    return _cubic(*tf.unstack(samples), tf.broadcast_to(d[:, None], tf.shape(samples)[1:]))

  def along_rows(rows):  # (row, pixel, channel); dx all 0 (shears and shifts along y): column 1.
    return tf.cond(tf.reduce_all(dx == 0.0), lambda: taps(rows, [1])[0],
                   lambda: cubic(taps(rows, [0, 1, 2, 3]), dx))

  # dy all 0 (shears and shifts along x): row 1 alone. Either shortcut is what the cubic gives.
  values = tf.cond(tf.reduce_all(dy == 0.0), lambda: along_rows([1])[0],
                   lambda: cubic(along_rows([0, 1, 2, 3]), dy))
  if image.dtype == tf.uint8:
    values = tf.floor(tf.clip_by_value(values, 0.0, 255.0))
  values = tf.where(inside[:, None], values, tf.constant(fill, tf.float64)[:channels])
  return tf.reshape(tf.cast(values, image.dtype), tf.shape(image))


def rotate(image, degrees, fill=FILL, interpolation: str = 'bilinear'):
  """Image.rotate(degrees) about the centre (counter-clockwise), its matrix computed as PIL's
  (angle mod 360, cos and sin rounded to 15 decimals) in float64."""
  height, width = tf.cast(tf.shape(image)[0], tf.float64), tf.cast(tf.shape(image)[1], tf.float64)
  angle = -(tf.math.floormod(_float64(degrees), 360.0) * (math.pi / 180.0))
  cos, sin = [tf.round(v * 1e15) / 1e15 for v in (tf.cos(angle), tf.sin(angle))]
  cx, cy = width / 2.0, height / 2.0
  matrix = (cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy)
  return affine(image, matrix, fill, interpolation)


def shear_x(image, factor, fill=FILL, interpolation: str = 'bilinear'):
  return affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill, interpolation)


def shear_y(image, factor, fill=FILL, interpolation: str = 'bilinear'):
  return affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill, interpolation)


def translate_x(image, pixels, fill=FILL, interpolation: str = 'bilinear'):
  return affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill, interpolation)


def translate_y(image, pixels, fill=FILL, interpolation: str = 'bilinear'):
  return affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill, interpolation)


# ------------------------------------------------- rand-m9-mstd0.5-inc1: ops and their levels


def _signed(value, negate):
  return tf.where(negate, -value, value)


# timm's `_RAND_INCREASING_TRANSFORMS`, each as (image, magnitude in [0, 10], negate,
# the warps' interpolation) -> image.
RAND_INCREASING = (
    ('AutoContrast', lambda x, m, s, r: auto_contrast(x)),
    ('Equalize', lambda x, m, s, r: equalize(x)),
    ('Invert', lambda x, m, s, r: invert(x)),
    ('Rotate', lambda x, m, s, r: rotate(x, _signed(m / 10 * 30, s), interpolation=r)),
    ('PosterizeIncreasing', lambda x, m, s, r: posterize(x, 4 - tf.cast(m / 10 * 4, tf.int32))),
    ('SolarizeIncreasing',
     lambda x, m, s, r: solarize(x, 256 - tf.cast(m / 10 * 256, tf.int32))),
    ('SolarizeAdd', lambda x, m, s, r: solarize_add(x, tf.cast(m / 10 * 110, tf.int32))),
    ('ColorIncreasing', lambda x, m, s, r: color(x, 1.0 + _signed(m / 10 * 0.9, s))),
    ('ContrastIncreasing', lambda x, m, s, r: contrast(x, 1.0 + _signed(m / 10 * 0.9, s))),
    ('BrightnessIncreasing', lambda x, m, s, r: brightness(x, 1.0 + _signed(m / 10 * 0.9, s))),
    ('SharpnessIncreasing', lambda x, m, s, r: sharpness(x, 1.0 + _signed(m / 10 * 0.9, s))),
    ('ShearX', lambda x, m, s, r: shear_x(x, _signed(m / 10 * 0.3, s), interpolation=r)),
    ('ShearY', lambda x, m, s, r: shear_y(x, _signed(m / 10 * 0.3, s), interpolation=r)),
    ('TranslateXRel', lambda x, m, s, r: translate_x(
        x, _signed(m / 10 * 0.45, s) * tf.cast(tf.shape(x)[1], tf.float64), interpolation=r)),
    ('TranslateYRel', lambda x, m, s, r: translate_y(
        x, _signed(m / 10 * 0.45, s) * tf.cast(tf.shape(x)[0], tf.float64), interpolation=r)),
)


def apply_op(image, index, magnitude, negate, interpolation: str = 'bilinear'):
  """RAND_INCREASING[index] at `magnitude` (after noise and clipping), negated if `negate`; the
  warps resample with `interpolation` (bilinear or bicubic, timm's hparams['interpolation'])."""
  magnitude = tf.cast(magnitude, tf.float64)
  branches = [lambda fn=fn: fn(image, magnitude, negate, interpolation)
              for _, fn in RAND_INCREASING]
  return tf.switch_case(tf.cast(index, tf.int32), branches)


def rand_augment(image, seed, num_ops: int = 2, magnitude: float = 9.0,
                 magnitude_std: float = 0.5, prob: float = 0.5, interpolation: str = 'bilinear'):
  """timm's RandAugment `rand-m{magnitude}-n{num_ops}-mstd{magnitude_std}-inc1`: `num_ops` ops
  drawn uniformly with replacement, each applied with probability `prob` at a magnitude
  ~ N(magnitude, magnitude_std) clipped to [0, 10], signed ops negated with probability 1/2;
  the warps resample with `interpolation` (timm takes the transform's: bicubic for DeiT)."""
  for seed in tf.unstack(tf.random.experimental.stateless_split(seed, num_ops)):
    op_seed, apply_seed, noise_seed, sign_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    index = tf.random.stateless_uniform([], op_seed, 0, len(RAND_INCREASING), tf.int32)
    level = tf.clip_by_value(
        magnitude + magnitude_std * tf.random.stateless_normal([], noise_seed, dtype=tf.float64),
        0.0, 10.0)
    negate = tf.random.stateless_uniform([], sign_seed) < 0.5
    apply = tf.random.stateless_uniform([], apply_seed) < prob
    image = tf.cond(apply, lambda: apply_op(image, index, level, negate, interpolation),
                    lambda: image)
  return image


# ------------------------------------------------------------ RandomResizedCrop's box


def random_resized_crop_box(height, width, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                            attempts: int = 10):
  """timm's RandomResizedCropAndInterpolation.get_params: (top, left, h, w) of the first of
  `attempts` boxes that fits (area ~ U(scale) of the image, log-aspect (w / h) uniform in
  `ratio`, offsets uniform and inclusive); if none fits, the centred box of the whole image
  clipped to the aspect range."""
  height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
  h_float, w_float = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  draws = tf.random.stateless_uniform([attempts, 4], seed, dtype=tf.float64)
  area = h_float * w_float * (scale[0] + (scale[1] - scale[0]) * draws[:, 0])
  aspect = tf.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * draws[:, 1])
  box_w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  box_h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  fits = (box_w <= width) & (box_h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  top = tf.cast(draws[first, 2] * tf.cast(height - box_h[first] + 1, tf.float64), tf.int32)
  left = tf.cast(draws[first, 3] * tf.cast(width - box_w[first] + 1, tf.float64), tf.int32)
  in_ratio = w_float / h_float
  fallback_w = tf.where(in_ratio > max(ratio),
                        tf.cast(tf.round(h_float * max(ratio)), tf.int32), width)
  fallback_h = tf.where(in_ratio < min(ratio),
                        tf.cast(tf.round(w_float / min(ratio)), tf.int32), height)
  fit = tf.reduce_any(fits)
  box_h, box_w = tf.where(fit, box_h[first], fallback_h), tf.where(fit, box_w[first], fallback_w)
  top = tf.where(fit, top, (height - box_h) // 2)
  left = tf.where(fit, left, (width - box_w) // 2)
  return top, left, box_h, box_w


# ----------------------------------------------------------------- random erasing


def erase(image, top, left, height, width, noise):
  """The box [top, top + height) x [left, left + width) of a normalised float (H, W, C) image
  replaced by `noise` (same shape as the image; only the box's values are used)."""
  rows = tf.range(tf.shape(image)[0])[:, None, None]
  cols = tf.range(tf.shape(image)[1])[None, :, None]
  inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
  return tf.where(inside, noise, image)


def random_erasing(image, seed, probability: float = 0.25, min_area: float = 0.02,
                   max_area: float = 1 / 3, min_aspect: float = 0.3, attempts: int = 10):
  """timm's RandomErasing(mode='pixel', max_count=1) on a normalised float image: with
  `probability`, the first of `attempts` boxes that fits (area ~ U(min_area, max_area) of the
  image, log-aspect uniform) filled with per-pixel, per-channel N(0, 1)."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  erase_seed, box_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  area = tf.cast(height * width, tf.float32)
  draws = tf.random.stateless_uniform([attempts, 4], box_seed)
  target = area * (min_area + (max_area - min_area) * draws[:, 0])
  log_aspect = math.log(min_aspect) + (math.log(1 / min_aspect) - math.log(min_aspect)) * draws[:, 1]
  aspect = tf.exp(log_aspect)
  box_h = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
  box_w = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
  fits = (box_w < width) & (box_h < height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  box_h, box_w = box_h[first], box_w[first]
  top = tf.cast(draws[first, 2] * tf.cast(height - box_h + 1, tf.float32), tf.int32)
  left = tf.cast(draws[first, 3] * tf.cast(width - box_w + 1, tf.float32), tf.int32)
  do_erase = (tf.random.stateless_uniform([], erase_seed) < probability) & tf.reduce_any(fits)
  # The image's worth of noise only for the images erased: drawing it is most of the cost.
  noise = lambda: tf.random.stateless_normal(tf.shape(image), noise_seed, dtype=image.dtype)
  return tf.cond(do_erase, lambda: erase(image, top, left, box_h, box_w, noise()), lambda: image)


# ----------------------------------------------------------------- Mixup / CutMix


def smoothed_targets(labels, num_classes: int, smoothing: float):
  """One-hot targets with `smoothing` spread evenly: on 1 - e + e/K, off e/K (timm's)."""
  off = smoothing / num_classes
  return tf.one_hot(labels, num_classes, on_value=1.0 - smoothing + off, off_value=off)


def cutmix_box(height: int, width: int, lam, cy, cx):
  """timm's rand_bbox: a box of sides int(H sqrt(1 - lam)), int(W sqrt(1 - lam)) centred at
  (cy, cx), clipped to the image, as (top, bottom, left, right)."""
  ratio = tf.sqrt(1.0 - tf.cast(lam, tf.float64))
  cut_h = tf.cast(tf.cast(height, tf.float64) * ratio, tf.int32)
  cut_w = tf.cast(tf.cast(width, tf.float64) * ratio, tf.int32)
  top, bottom = tf.clip_by_value(cy - cut_h // 2, 0, height), tf.clip_by_value(cy + cut_h // 2, 0, height)
  left, right = tf.clip_by_value(cx - cut_w // 2, 0, width), tf.clip_by_value(cx + cut_w // 2, 0, width)
  return top, bottom, left, right


def mix(images, labels, lam, use_cutmix, cy, cx, num_classes: int, smoothing: float = 0.1):
  """timm's Mixup in batch mode with `correct_lam`: each example mixed with its partner in the
  reversed batch, by `lam` (Mixup) or by pasting the partner's CutMix box (lambda then
  corrected to the share of the image left); targets mixed the same way from smoothed one-hots.
  Returns (images, targets)."""
  height, width = tf.shape(images)[1], tf.shape(images)[2]
  partner = tf.reverse(images, [0])
  top, bottom, left, right = cutmix_box(height, width, lam, cy, cx)
  rows = tf.range(height)[:, None, None]
  cols = tf.range(width)[None, :, None]
  box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  box_area = tf.cast((bottom - top) * (right - left), tf.float32)
  cut_lam = 1.0 - box_area / tf.cast(height * width, tf.float32)
  lam = tf.where(use_cutmix, cut_lam, tf.cast(lam, tf.float32))
  mixed = tf.cond(tf.convert_to_tensor(use_cutmix), lambda: tf.where(box[None], partner, images),
                  lambda: lam * images + (1.0 - lam) * partner)
  targets = smoothed_targets(labels, num_classes, smoothing)
  return mixed, lam * targets + (1.0 - lam) * tf.reverse(targets, [0])


def mixup_parameters(seed, height: int, width: int, mixup_alpha: float = 0.8,
                     cutmix_alpha: float = 1.0, switch_prob: float = 0.5):
  """(lam, use_cutmix, cy, cx) as timm's Mixup draws them for one batch: CutMix with
  `switch_prob` and lam ~ Beta(cutmix_alpha), else lam ~ Beta(mixup_alpha)."""
  switch_seed, beta_seed, y_seed, x_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  use_cutmix = tf.random.stateless_uniform([], switch_seed) < switch_prob
  alpha = tf.where(use_cutmix, cutmix_alpha, mixup_alpha)
  gamma_seeds = tf.random.experimental.stateless_split(beta_seed, 2)
  a = tf.random.stateless_gamma([], gamma_seeds[0], alpha=alpha)
  b = tf.random.stateless_gamma([], gamma_seeds[1], alpha=alpha)
  cy = tf.random.stateless_uniform([], y_seed, 0, height, tf.int32)
  cx = tf.random.stateless_uniform([], x_seed, 0, width, tf.int32)
  return a / (a + b), use_cutmix, cy, cx
