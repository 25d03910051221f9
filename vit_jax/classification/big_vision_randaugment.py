"""big_vision's `randaug(N, M)`, the AugReg recipe's RandAugment (reference/deit.md §4.6): the
TF-EfficientNet RandAugment that big_vision's pp/autoaugment.py forks, in TensorFlow for the
host's tf.data pipeline. It is not timm's (augment.py, DeiT's):

- 16 ops: timm's 15 without the "increasing" variants, plus Cutout. Each of the N layers draws
  one uniformly and always applies it (no per-op probability) at the fixed magnitude M (no
  noise, not clipped to 10: M = 20 rotates by 60 degrees).
- Arguments at M: rotate 30 M/10 degrees, shear 0.3 M/10, translate 100 M/10 pixels (absolute,
  whatever the image size), each negated with probability 1/2; Cutout a square of side
  2 int(40 M/10) centred on a uniform pixel; Posterize int(4 M/10) bits; Solarize threshold
  int(256 M/10); SolarizeAdd int(110 M/10); Color/Contrast/Brightness/Sharpness factor
  1.8 M/10 + 0.1, never negated. So randaug(2,0) (AugReg's light1) is not a no-op.
- Fill 128 grey; warps take the nearest pixel in TF's index coordinates (pixel centres at
  integers: the shears are PIL's moved by half their factor).
- TensorFlow's uint8 arithmetic, as big_vision runs it (measured on TF 2.21): a shift of 8 bits
  is clamped to 7, so Posterize to 0 bits keeps 1 bit; Solarize compares against its threshold
  cast to uint8, i.e. modulo 256, so M = 0, 10 and 20 (thresholds 0, 256, 512) invert every
  pixel and M = 15 (384) solarizes at 128.
- Color's grey is tf.image.rgb_to_grayscale's (not PIL's L); Contrast blends toward the constant
  (pixel count / 256), the grey histogram's sum where PIL takes the mean grey; Sharpness truncates
  its smoothed levels where PIL rounds.

AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd, Brightness and the Sharpness
and blend arithmetic are augment.py's, Pillow's (big_vision's AutoContrast computes in float32
where Pillow uses float64, so a level can come out one lower there).
"""

import math
import re

import tensorflow as tf

from vit_jax.classification import augment
from vit_jax.framework.errors import UserError

FILL = (128, 128, 128)
MAX_MAGNITUDE = 20.0  # AugReg's strongest; past 22.5 Posterize's shift would go negative.


def rotate(image, degrees):
  """tfa.image.rotate (counter-clockwise about the centre), nearest pixel, fill 128."""
  radians = tf.cast(degrees, tf.float32) * math.pi / 180.0
  cos, sin = tf.cos(radians), tf.sin(radians)
  height = tf.cast(tf.shape(image)[0] - 1, tf.float32)
  width = tf.cast(tf.shape(image)[1] - 1, tf.float32)
  x_offset = (width - (cos * width - sin * height)) / 2.0
  y_offset = (height - (sin * width + cos * height)) / 2.0
  return augment.project(image, (cos, -sin, x_offset, sin, cos, y_offset), FILL, 'NEAREST')


def shear_x(image, factor):
  return augment.project(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), FILL, 'NEAREST')


def shear_y(image, factor):
  return augment.project(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), FILL, 'NEAREST')


def translate_x(image, pixels):
  """Content moved left by `pixels` (right when negative), as PIL's translate."""
  return augment.project(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), FILL, 'NEAREST')


def translate_y(image, pixels):
  return augment.project(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), FILL, 'NEAREST')


def cutout(image, half_side, cy, cx):
  """Rows [cy - half_side, cy + half_side) x the same columns around cx, clipped, set to 128."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  top, left = tf.maximum(cy - half_side, 0), tf.maximum(cx - half_side, 0)
  bottom, right = tf.minimum(cy + half_side, height), tf.minimum(cx + half_side, width)
  grey = tf.fill(tf.shape(image), tf.constant(FILL[0], image.dtype))
  return augment.erase(image, top, left, bottom - top, right - left, grey)


def posterize(image, bits: int):
  return augment.posterize(image, min(max(bits, 1), 8))  # TF clamps the shift of 8 to 7.


def solarize(image, threshold: int):
  return augment.solarize(image, threshold % 256)  # Compared in uint8.


def color(image, factor):
  grey = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
  return augment.blend(grey, image, factor)


def contrast(image, factor):
  pixels = tf.cast(tf.shape(image)[0] * tf.shape(image)[1], tf.float32)
  level = tf.floor(tf.minimum(pixels / 256.0, 255.0))  # The histogram's sum over 256 bins.
  return augment.blend(tf.fill(tf.shape(image), level), image, factor)


def ops(magnitude: float):
  """The 16 ops in big_vision's order, each as (image, negate, cutout centre) -> image."""
  level = magnitude / 10.0
  enhance = 1.8 * level + 0.1
  signed = lambda value, negate: tf.where(negate, -value, value)
  return (
      ('AutoContrast', lambda x, s, c: augment.auto_contrast(x)),
      ('Equalize', lambda x, s, c: augment.equalize(x)),
      ('Invert', lambda x, s, c: augment.invert(x)),
      ('Rotate', lambda x, s, c: rotate(x, signed(30.0 * level, s))),
      ('Posterize', lambda x, s, c: posterize(x, int(4 * level))),
      ('Solarize', lambda x, s, c: solarize(x, int(256 * level))),
      ('Color', lambda x, s, c: color(x, enhance)),
      ('Contrast', lambda x, s, c: contrast(x, enhance)),
      ('Brightness', lambda x, s, c: augment.brightness(x, enhance)),
      ('Sharpness', lambda x, s, c: augment.sharpness(x, enhance, truncate=True)),
      ('ShearX', lambda x, s, c: shear_x(x, signed(0.3 * level, s))),
      ('ShearY', lambda x, s, c: shear_y(x, signed(0.3 * level, s))),
      ('TranslateX', lambda x, s, c: translate_x(x, signed(100.0 * level, s))),
      ('TranslateY', lambda x, s, c: translate_y(x, signed(100.0 * level, s))),
      ('Cutout', lambda x, s, c: cutout(x, int(40 * level), *c)),
      ('SolarizeAdd', lambda x, s, c: augment.solarize_add(x, int(110 * level))),
  )


def apply_op(image, index, magnitude: float, negate, centre=(0, 0)):
  """ops(magnitude)[index] on a uint8 RGB image; `negate` the warp's sign, `centre` Cutout's."""
  branches = [lambda fn=fn: fn(image, negate, centre) for _, fn in ops(magnitude)]
  return tf.switch_case(tf.cast(index, tf.int32), branches)


def rand_augment(image, seed, num_layers: int = 2, magnitude: float = 10.0):
  """`num_layers` ops drawn uniformly with replacement, each applied at `magnitude`."""
  count = len(ops(magnitude))

  def layer(image, layer_seed):
    op_seed, sign_seed, y_seed, x_seed = tf.unstack(
        tf.random.experimental.stateless_split(layer_seed, 4))
    index = tf.random.stateless_uniform([], op_seed, 0, count, tf.int32)
    negate = tf.random.stateless_uniform([], sign_seed) < 0.5
    centre = (tf.random.stateless_uniform([], y_seed, 0, tf.shape(image)[0], tf.int32),
              tf.random.stateless_uniform([], x_seed, 0, tf.shape(image)[1], tf.int32))
    return tf.ensure_shape(apply_op(image, index, magnitude, negate, centre), image.shape)
  # A loop, not one graph per layer: the 16 branches are traced once.
  return tf.foldl(layer, tf.random.experimental.stateless_split(seed, num_layers),
                  initializer=tf.convert_to_tensor(image))


def parse(spec: str) -> dict:
  """big_vision's pp string 'randaug(N,M)' (also 'randaug(N)', 'randaug()': its defaults 2, 10)
  -> rand_augment's arguments."""
  match = re.fullmatch(r'randaug\(\s*(\d+)?\s*(?:,\s*(\d+(?:\.\d*)?)\s*)?\)', spec.strip())
  if match is None or float(match.group(2) or 10) > MAX_MAGNITUDE:
    raise UserError(f'config.input.randaugment {spec!r}: use big_vision\'s form randaug(N,M) '
                    f'with M in [0, {MAX_MAGNITUDE:g}], e.g. randaug(2,15)')
  return {'num_layers': int(match.group(1) or 2), 'magnitude': float(match.group(2) or 10)}
