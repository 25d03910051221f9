"""DeiT's augmentations against timm's own functions on the same images and random parameters."""

import functools

import numpy as np
import pytest
import tensorflow as tf
import timm.data.auto_augment as timm_aa
import timm.data.mixup as timm_mixup
import torch
from PIL import Image, ImageFilter

from vit_jax.classification import augment
from vit_jax.framework.errors import UserError


@pytest.fixture(scope='module')
def image():
  rng = np.random.RandomState(0)
  pixels = rng.randint(0, 256, (37, 45, 3)).astype(np.uint8)
  pixels[:10] = pixels[:10] // 4 + 30  # A low-contrast band: auto-contrast and equalize work.
  return pixels


PIXEL_OPS = [  # (ours, timm's, argument): Pillow's arithmetic, equal to the bit.
    (augment.auto_contrast, timm_aa.auto_contrast, None),
    (augment.equalize, timm_aa.equalize, None),
    (augment.invert, timm_aa.invert, None),
    (augment.posterize, timm_aa.posterize, 1),
    (augment.posterize, timm_aa.posterize, 3),
    (augment.solarize, timm_aa.solarize, 26),
    (augment.solarize_add, timm_aa.solarize_add, 99),
    (augment.color, timm_aa.color, 0.19),
    (augment.color, timm_aa.color, 1.81),
    (augment.contrast, timm_aa.contrast, 0.19),
    (augment.contrast, timm_aa.contrast, 1.81),
    (augment.brightness, timm_aa.brightness, 1.81),
    (augment.sharpness, timm_aa.sharpness, 0.19),
    (augment.sharpness, timm_aa.sharpness, 1.81),
]


@pytest.mark.parametrize('ours, theirs, argument', PIXEL_OPS,
                         ids=[f'{o.__name__}-{a}' for o, _, a in PIXEL_OPS])
def test_pixel_ops_equal_timms(image, ours, theirs, argument):
  args = () if argument is None else (argument,)
  expected = np.asarray(theirs(Image.fromarray(image), *args))
  np.testing.assert_array_equal(np.asarray(ours(image, *args)), expected)


def test_posterize_to_zero_bits_is_black(image):
  # m = 10 gives 4 - int(4) = 0 bits: black under the Pillow DeiT ran (Pillow 13 refuses 0).
  assert not np.asarray(augment.posterize(image, 0)).any()


WARPS = [  # (ours, timm's, our argument, timm's argument)
    (augment.rotate, timm_aa.rotate, 27.0, 27.0),
    (augment.rotate, timm_aa.rotate, -13.5, -13.5),
    (augment.shear_x, timm_aa.shear_x, 0.27, 0.27),
    (augment.shear_y, timm_aa.shear_y, -0.27, -0.27),
    (augment.translate_x, timm_aa.translate_x_rel, 0.405 * 45, 0.405),
    (augment.translate_y, timm_aa.translate_y_rel, -0.2 * 37, -0.2),
]


@pytest.mark.parametrize('ours, theirs, argument, timm_argument', WARPS,
                         ids=[f'{w[0].__name__}-{w[2]:.3g}' for w in WARPS])
def test_warps_equal_timms_with_bilinear_resampling(image, ours, theirs, argument,
                                                    timm_argument):
  """Against timm's op with PIL's bilinear resampling and the ImageNet-mean fill: at most one
  grey level apart (TF's float32 bilinear against PIL's doubles), on under 5% of the pixels."""
  expected = np.asarray(theirs(Image.fromarray(image), timm_argument, fillcolor=augment.FILL,
                               resample=Image.BILINEAR)).astype(int)
  difference = np.abs(np.asarray(ours(image, argument)).astype(int) - expected)
  assert difference.max() <= 1 and (difference > 0).mean() < 0.05


@pytest.mark.parametrize('ours, theirs, argument, timm_argument', WARPS,
                         ids=[f'{w[0].__name__}-{w[2]:.3g}' for w in WARPS])
def test_warps_equal_timms_with_bicubic_resampling(image, ours, theirs, argument, timm_argument):
  """DeiT's resampling (timm's hparams interpolation=BICUBIC, PIL's affine BICUBIC): equal."""
  expected = np.asarray(theirs(Image.fromarray(image), timm_argument, fillcolor=augment.FILL,
                               resample=Image.BICUBIC))
  np.testing.assert_array_equal(np.asarray(ours(image, argument, interpolation='bicubic')),
                                expected)


@pytest.mark.slow  # 5 traces, 20 warps: 30 s on 2 cores at load 7.
def test_bicubic_warps_on_random_images_and_parameters():
  """Each warp, 4 random images (noise, and blurred noise with its flat runs) of random sizes at
  random levels: at most one grey level from PIL's, and only a rotation's cos or sin rounded
  differently from Python's can make one (measured: 5 of 216k pixels of rotations, none of the
  shears and translations, over 40 images of up to 80 x 80). In a tf.function, as tf.data runs
  it (graph rewrites must not reorder the float64 sums)."""
  rng = np.random.RandomState(1)
  warps = [(augment.rotate, timm_aa.rotate, 30.0, None),
           (augment.shear_x, timm_aa.shear_x, 0.3, None),
           (augment.shear_y, timm_aa.shear_y, 0.3, None),
           (augment.translate_x, timm_aa.translate_x_rel, 0.45, 1),
           (augment.translate_y, timm_aa.translate_y_rel, 0.45, 0)]
  for ours, theirs, scale, axis in warps:
    ours = tf.function(functools.partial(ours, interpolation='bicubic'), input_signature=[
        tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.float64)])
    differences = []
    for trial in range(4):
      pixels = rng.randint(0, 256, (rng.randint(8, 48), rng.randint(8, 48), 3)).astype(np.uint8)
      if trial % 2:
        pixels = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(2)))
      level = rng.uniform(-1.0, 1.0) * scale
      argument = level if axis is None else level * pixels.shape[axis]
      expected = np.asarray(theirs(Image.fromarray(pixels), level, fillcolor=augment.FILL,
                                   resample=Image.BICUBIC)).astype(int)
      got = np.asarray(ours(pixels, tf.constant(argument, tf.float64))).astype(int)
      differences.append(np.abs(got - expected).ravel())
    differences = np.concatenate(differences)
    assert differences.max() <= 1 and (differences > 0).mean() < 1e-3, ours


def test_bicubic_warp_of_float_images_is_pils_mode_f(image):
  """A float image is warped unrounded and unclipped: PIL's mode F, channel by channel."""
  matrix = (0.9, 0.4, -3.0, -0.4, 0.9, 8.0)
  pixels = image.astype(np.float32) * 1.5 - 40.0
  expected = np.stack([np.asarray(Image.fromarray(pixels[..., c], mode='F').transform(
      image.shape[1::-1], Image.AFFINE, matrix, Image.BICUBIC, fillcolor=augment.FILL[c]))
                       for c in range(3)], axis=-1)
  got = augment.affine(pixels, matrix, interpolation='bicubic')
  assert got.dtype == tf.float32
  np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic'])
def test_rand_augment_levels_are_timms(image, interpolation):
  """Each of the 15 ops at magnitude 9 (and its sign) equals timm's AugmentOp at magnitude 9
  without noise, applied (prob 1); bilinear warps within the tolerance above, bicubic ones
  (DeiT's) equal."""
  resample = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}[interpolation]
  hparams = dict(img_mean=augment.FILL, interpolation=resample, translate_const=100)
  for index, (name, _) in enumerate(augment.RAND_INCREASING):
    for negate in (False, True):
      op = timm_aa.AugmentOp(name, prob=1.0, magnitude=9, hparams=hparams)
      # timm negates with random.random() > 0.5: fix the draw.
      with _python_random(0.9 if negate else 0.1):
        expected = np.asarray(op(Image.fromarray(image))).astype(int)
      ours = np.asarray(augment.apply_op(image, index, 9.0, negate, interpolation)).astype(int)
      difference = np.abs(ours - expected)
      tolerance = (0, 0.0) if interpolation == 'bicubic' else (1, 0.05)
      assert difference.max() <= tolerance[0] and (difference > 0).mean() <= tolerance[1], (
          name, negate)


def test_unknown_warp_interpolation_is_refused(image):
  with pytest.raises(UserError, match='bilinear or bicubic'):
    augment.rotate(image, 10.0, interpolation='lanczos')


class _python_random:
  """timm's samplers draw from Python's `random`: every draw returns `value` inside."""

  def __init__(self, value):
    self.value = value

  def __enter__(self):
    import random  # pylint: disable=g-import-not-at-top
    self._random, self._saved = random, random.random
    random.random = lambda: self.value

  def __exit__(self, *exc):
    self._random.random = self._saved


@pytest.mark.slow
def test_rand_augment_sampler_statistics():
  """One op per draw, each applied half the time: on a flat grey image 5 of the 15 ops change
  nothing (AutoContrast, Equalize, Color, Contrast, Sharpness), so 1/2 + 1/2 x 5/15 = 2/3 of
  the draws leave it as it is (300 draws: 3 standard deviations are 0.08)."""
  images = tf.zeros([8, 8, 3], tf.uint8) + 100
  rand_augment = tf.function(augment.rand_augment)
  unchanged = [bool(np.all(rand_augment(images, tf.constant([i, 7]), num_ops=1) == 100))
               for i in range(300)]
  assert abs(np.mean(unchanged) - 2 / 3) < 0.08


def test_erase_box_and_random_erasing():
  image = tf.zeros([20, 30, 3])
  noise = tf.random.stateless_normal([20, 30, 3], [1, 2])
  erased = np.asarray(augment.erase(image, 3, 5, 4, 7, noise))
  expected = np.zeros([20, 30, 3], np.float32)
  expected[3:7, 5:12] = np.asarray(noise)[3:7, 5:12]
  np.testing.assert_array_equal(erased, expected)
  random_erasing = tf.function(augment.random_erasing)
  fractions = [float(np.mean(random_erasing(image, tf.constant([i, 0])) != 0))
               for i in range(400)]
  erased = [f for f in fractions if f > 0]
  assert 0.18 < len(erased) / len(fractions) < 0.32  # probability 0.25
  assert min(erased) >= 0.015 and max(erased) <= 1 / 3 + 0.02  # area 2% .. 1/3


@pytest.mark.parametrize('use_cutmix, lam', [(False, 0.3), (True, 0.75), (True, 0.19)])
def test_mixup_and_cutmix_equal_timms(use_cutmix, lam):
  """Same batch, lambda and CutMix centre as timm's Mixup(batch mode, correct_lam, smoothing
  0.1): images and targets equal in float32. lam 0.75 and 0.19 give even box sides (timm >= 0.4
  rounds an odd side's lower half up, DeiT's timm 0.3.2 down; we follow 0.3.2)."""
  rng = np.random.RandomState(0)
  images = rng.randn(4, 3, 32, 32).astype(np.float32)
  labels = np.array([1, 4, 0, 9])
  mixer = timm_mixup.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, mode='batch',
                           correct_lam=True, label_smoothing=0.1, num_classes=10)
  mixer._params_per_batch = lambda: (lam, use_cutmix)
  np.random.seed(3)
  cy, cx = np.random.randint(0, 32), np.random.randint(0, 32)
  np.random.seed(3)
  expected_images, expected_targets = mixer(torch.from_numpy(images.copy()),
                                            torch.from_numpy(labels))
  ours, targets = augment.mix(tf.constant(images.transpose(0, 2, 3, 1)), tf.constant(labels),
                              lam, use_cutmix, cy, cx, num_classes=10, smoothing=0.1)
  np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), expected_images.numpy(),
                             rtol=0, atol=1e-6)
  np.testing.assert_allclose(targets, expected_targets.numpy(), rtol=0, atol=1e-6)


def test_mixup_parameters_follow_the_switch_and_betas():
  mixup_parameters = tf.function(augment.mixup_parameters)
  draws = [mixup_parameters(tf.constant([i, 1]), 32, 32) for i in range(400)]
  cutmix = np.array([bool(d[1]) for d in draws])
  lams = np.array([float(d[0]) for d in draws])
  assert 0.42 < cutmix.mean() < 0.58
  # Beta(1, 1) is uniform (mean 1/2, variance 1/12); Beta(0.8, 0.8) has variance 1/10.4.
  assert abs(lams[cutmix].var() - 1 / 12) < 0.02 and abs(lams[~cutmix].var() - 1 / 10.4) < 0.02
