"""AugReg's ImageNet-1k recipe (configs/vit_augreg_i1k.py): big_vision's vit_i1k values for every
variant and augmentation level, its RandAugment ops against Pillow (and numpy where big_vision's
arithmetic is not Pillow's) on the same parameters, and a short training run with it."""

import jax
import numpy as np
import optax
import pytest
import tensorflow as tf
from flax import linen as nn
from PIL import Image, ImageOps
from scipy import ndimage

from helpers import load_config, tiny_digits_config
from test_augment import image  # pylint: disable=unused-import  # The same test image.
from vit_jax.classification import augment
from vit_jax.classification import big_vision_randaugment as bv
from vit_jax.classification import input as classification_input
from vit_jax.classification import vit
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import optim
from vit_jax.framework.errors import UserError

# big_vision configs/vit_i1k.py: MIXUP_DEF's p (a Beta alpha), RANDAUG_DEF, the default per variant.
LEVELS = {'none': (0.0, ''), 'light1': (0.0, 'randaug(2,0)'), 'light2': (0.2, 'randaug(2,10)'),
          'medium1': (0.2, 'randaug(2,15)'), 'medium2': (0.5, 'randaug(2,15)'),
          'strong1': (0.5, 'randaug(2,20)'), 'strong2': (0.8, 'randaug(2,20)')}
DEFAULTS = {'Ti/16': 'light1', 'S/32': 'medium1', 'S/16': 'medium2', 'B/32': 'medium2',
            'B/16': 'medium2', 'L/16': 'medium2'}
WIDTH = {'Ti': 192, 'S': 384, 'B': 768, 'L': 1024}


@pytest.mark.parametrize('variant', sorted(DEFAULTS))
@pytest.mark.parametrize('aug', [None] + sorted(LEVELS))
def test_config_is_big_visions_vit_i1k(variant, aug):
  config = load_config('vit_augreg_i1k', variant + (f',aug={aug}' if aug else ''))
  mixup, randaug = LEVELS[aug or DEFAULTS[variant]]
  assert (config.input.mixup_alpha, config.input.cutmix_alpha) == (mixup, 0.0)
  assert config.input.randaugment == randaug
  assert (config.input.dataset, config.input.train_split, config.input.eval_split) == (
      'imagenet2012', 'train[:99%]', 'train[99%:]')
  assert (config.input.augment, config.input.min_area, config.input.normalization) == (
      'inception_crop', 0.05, 'vit')
  assert (config.input.image_size, config.input.eval_resize) == (224, 256)
  assert (config.input.batch_size, config.total_epochs, config.input.shuffle_buffer) == (
      4096, 300, 250_000)
  assert (config.loss.name, config.loss.label_smoothing) == ('sigmoid_xent', 0.0)
  assert (config.model.variant, config.model.classifier, config.model.head_bias_init) == (
      variant, 'token', -6.9)
  assert config.model.representation_size == WIDTH[variant.split('/')[0]]
  assert config.model.dropout_rate == 0.0 and config.model.drop_path_rate == 0.0
  o = config.optim
  assert (o.name, o.lr, o.b1, o.b2, o.mu_dtype, o.grad_clip_norm) == (
      'adamw', 1e-3, 0.9, 0.999, 'bfloat16', 1.0)
  assert (o.weight_decay, o.wd_times_lr, o.wd_mask) == (1e-4, False, r'.*/kernel')
  assert (o.schedule.name, o.schedule.warmup_steps, o.schedule.end_value) == (
      'warmup_cosine', 10_000, 0.0)
  if randaug:
    assert bv.parse(randaug)['num_layers'] == 2
  optim.make_optimizer(o, total_steps=93_000)  # Builds: absolute decay is adamw's.


def test_model_has_the_pre_logits_and_the_class_token():
  model = vit.build_vit(load_config('vit_augreg_i1k', 'Ti/16').model)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                          np.zeros((1, 224, 224, 3)))['params']
  params = nn.meta.unbox(params)
  assert params['pre_logits']['kernel'].shape == (192, 192)
  assert params['head']['kernel'].shape == (192, 1000)
  assert params['cls'].shape == (1, 1, 192)


GREY = (128, 128, 128)


def _nearest(image, matrix):
  """Output (x, y) takes the input pixel nearest to index (a x + b y + c, d x + e y + f), in
  float32 with halves rounded away from zero (TF's and tfa's nearest sampling); grey outside."""
  a, b, c, d, e, f = np.float32(matrix)
  y, x = np.mgrid[:image.shape[0], :image.shape[1]].astype(np.float32)
  round_ = lambda v: (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(int)
  column, row = round_(a * x + b * y + c), round_(d * x + e * y + f)
  inside = (column >= 0) & (column < image.shape[1]) & (row >= 0) & (row < image.shape[0])
  picked = image[np.clip(row, 0, image.shape[0] - 1), np.clip(column, 0, image.shape[1] - 1)]
  return np.where(inside[..., None], picked, np.uint8(128))


def _rotation(image, degrees):
  """PIL's rotate (counter-clockwise about the image centre) as an index-coordinate matrix."""
  cos, sin = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
  cy, cx = (image.shape[0] - 1) / 2, (image.shape[1] - 1) / 2
  return (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)


def _smooth_truncated(image):
  """ImageFilter.SMOOTH's 3x3 kernel, levels truncated (TF's cast), border pixels kept."""
  kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13.0
  out = image.copy()
  for c in range(3):
    out[1:-1, 1:-1, c] = np.floor(ndimage.correlate(image[..., c].astype(float), kernel)[1:-1, 1:-1])
  return Image.fromarray(out)


def _blend(degenerate, image, factor):
  return np.asarray(Image.blend(degenerate, Image.fromarray(image), factor))


def _references(image, magnitude, negate):
  """Each of the 16 ops at `magnitude` by reference/deit.md §4.6's levels, from Pillow (numpy
  for big_vision's own Contrast constant and truncated smoothing)."""
  level, sign = magnitude / 10, -1 if negate else 1
  pil, enhance = Image.fromarray(image), 1.8 * magnitude / 10 + 0.1
  height, width = image.shape[:2]
  mean = min(height * width // 256, 255)  # big_vision's Contrast: the histogram's sum / 256.
  grey = np.asarray(pil.convert('L'))
  bits = min(max(int(4 * level), 1), 8)  # TF clamps a shift of 8 to 7.
  return [
      ImageOps.autocontrast(pil), ImageOps.equalize(pil), ImageOps.invert(pil),
      _nearest(image, _rotation(image, sign * 30 * level)),
      ImageOps.posterize(pil, bits),
      ImageOps.solarize(pil, int(256 * level) % 256),  # A uint8 threshold.
      _blend(Image.fromarray(np.stack([grey] * 3, -1)), image, enhance),  # Pillow's grey.
      _blend(Image.new('RGB', pil.size, (mean,) * 3), image, enhance),
      _blend(Image.new('RGB', pil.size), image, enhance),
      _blend(_smooth_truncated(image), image, enhance),
      _nearest(image, (1, sign * 0.3 * level, 0, 0, 1, 0)),
      _nearest(image, (1, 0, 0, sign * 0.3 * level, 1, 0)),
      _nearest(image, (1, 0, sign * 100 * level, 0, 1, 0)),
      _nearest(image, (1, 0, 0, 0, 1, sign * 100 * level)),
      None,  # Cutout: test_cutout_box.
      _solarize_add(image, int(110 * level)),
  ]


def _solarize_add(image, addition):
  added = np.minimum(image.astype(int) + addition, 255)
  return np.where(image < 128, added, image)


# Allowed (largest level difference, share of differing pixels): Color's grey is TF's
# rgb_to_grayscale, a level off Pillow's L on some pixels (x |1 - factor| after the blend); the
# smoothing's float32 sums land below an exact integer on a few pixels; the rotation's float32
# cos and sin move a sample or two across a half-pixel.
TOLERANCES = {'Color': (3, 0.3), 'Sharpness': (3, 0.01), 'Rotate': (255, 0.005)}


@pytest.mark.parametrize('magnitude', [0.0, 10.0, 15.0, 20.0])
def test_ops_at_augreg_magnitudes_equal_pillow(image, magnitude):
  for negate in (False, True):
    references = _references(image, magnitude, negate)
    for index, (name, _) in enumerate(bv.ops(magnitude)):
      if references[index] is None:
        continue
      ours = np.asarray(bv.apply_op(image, index, magnitude, negate)).astype(int)
      difference = np.abs(ours - np.asarray(references[index]).astype(int))
      most, share = TOLERANCES.get(name, (0, 0.0))
      assert difference.max() <= most and (difference > 0).mean() <= share, (
          name, magnitude, negate, difference.max(), (difference > 0).mean())


@pytest.mark.parametrize('degrees', [45.0, -45.0, 30.0, -60.0])
def test_rotation_is_pillows_with_nearest_resampling(image, degrees):
  """Pillow's rotate (resample NEAREST, grey fill): equal at 45 degrees, elsewhere apart only
  where a sample sits on a half-pixel (Pillow rounds it up, TF away from zero), < 2% here."""
  expected = np.asarray(Image.fromarray(image).rotate(degrees, resample=Image.NEAREST,
                                                      fillcolor=GREY))
  differs = (np.asarray(bv.rotate(image, degrees)) != expected).any(-1)
  assert differs.mean() < (1e-9 if abs(degrees) == 45 else 0.02)


def test_magnitude_zero_is_not_a_no_op(image):
  """light1's randaug(2,0): Posterize keeps 1 bit, Solarize inverts, enhance factors are 0.1."""
  ops = dict((name, index) for index, (name, _) in enumerate(bv.ops(0.0)))
  np.testing.assert_array_equal(bv.apply_op(image, ops['Solarize'], 0.0, False), 255 - image)
  np.testing.assert_array_equal(bv.apply_op(image, ops['Posterize'], 0.0, False),
                                image & 0x80)
  np.testing.assert_array_equal(bv.apply_op(image, ops['Brightness'], 0.0, False),
                                (image * np.float32(0.1)).astype(np.uint8))
  for name in ('Rotate', 'ShearX', 'TranslateY', 'Cutout'):  # These are.
    np.testing.assert_array_equal(bv.apply_op(image, ops[name], 0.0, True), image)


@pytest.mark.parametrize('cy, cx', [(0, 0), (18, 22), (36, 44), (5, 40)])
def test_cutout_box(image, cy, cx):
  """A (2 x 60)-pixel square at magnitude 15 around (cy, cx), clipped, filled with grey."""
  expected = image.copy()
  expected[max(cy - 60, 0):cy + 60, max(cx - 60, 0):cx + 60] = 128
  got = bv.apply_op(image, 14, 15.0, False, (cy, cx))
  np.testing.assert_array_equal(got, expected)
  expected = image.copy()
  expected[max(cy - 4, 0):cy + 4, max(cx - 4, 0):cx + 4] = 128
  np.testing.assert_array_equal(bv.cutout(image, 4, cy, cx), expected)


def test_equalize_divides_by_255_as_pillow():
  """A channel whose step differs between // 255 and // 256: (1056 - 35) // 255 = 4, // 256 = 3."""
  channel = np.full((32, 33), 100, np.uint8).ravel()
  channel[:35] = 200
  channel[35:400] = 50
  pixels = np.stack([channel.reshape(32, 33)] * 3, -1)
  np.testing.assert_array_equal(augment.equalize(pixels),
                                np.asarray(ImageOps.equalize(Image.fromarray(pixels))))


def test_sampler_draws_every_op_and_is_deterministic(image):
  """One layer at magnitude 15: every one of the 16 ops turns up in 160 draws (each output is
  one op's, with one of the signs), and the image is a function of the seed."""
  run = tf.function(lambda seed: bv.rand_augment(image, seed, num_layers=1, magnitude=15.0))
  outputs = [run(tf.constant([3, i])).numpy() for i in range(160)]
  np.testing.assert_array_equal(run(tf.constant([3, 7])), outputs[7])
  candidates = {(index, negate): np.asarray(bv.apply_op(image, index, 15.0, negate)).tobytes()
                for index in range(16) if index != 14 for negate in (False, True)}
  seen = {index for out in outputs for (index, _), candidate in candidates.items()
          if out.tobytes() == candidate}
  cutouts = [out for out in outputs if (out == 128).all(-1).sum() >= 100]  # A grey square.
  assert seen == set(range(16)) - {14} and cutouts


def test_randaugment_strings():
  assert bv.parse('randaug(2,15)') == {'num_layers': 2, 'magnitude': 15.0}
  assert bv.parse('randaug()') == {'num_layers': 2, 'magnitude': 10.0}
  for bad in ('randaug(2,25)', 'randaug(2;15)', 'randaug(a)'):
    with pytest.raises(UserError, match='randaug'):
      bv.parse(bad)
  config = load_config('vit_augreg_i1k', 'B/16').input
  config.update(channels=1)
  with pytest.raises(UserError, match='channels=3'):
    classification_input.train_preprocess(config)


@pytest.mark.slow  # 65-190 s on the shared 2-core machine at load 7-9 (input graph, compile).
def test_recipe_trains_on_its_own_input():
  """Three steps on one batch of the recipe's input (big_vision's RandAugment at 20, Mixup 0.8
  targets), loss (sigmoid, head bias) and optimizer (clipped Adam, absolute decay) on digits."""
  recipe = load_config('vit_augreg_i1k', 'Ti/16,aug=strong2')
  config = tiny_digits_config(**{'loss.name': 'sigmoid_xent'})
  config.input.update(channels=3, mix_group=4, **{key: recipe.input[key] for key in (
      'augment', 'min_area', 'randaugment', 'normalization', 'mixup_alpha', 'cutmix_alpha')})
  config.model.update(representation_size=32, head_bias_init=-2.3)
  config.optim.update({key: recipe.optim[key] for key in (
      'name', 'lr', 'b1', 'b2', 'mu_dtype', 'weight_decay', 'wd_times_lr', 'wd_mask',
      'grad_clip_norm')})
  config.optim.schedule = dict(name='warmup_cosine', warmup_steps=1)
  task = ClassificationTask(config)
  batch = next(task.train_input(0))
  assert batch['image'].shape == (32, 16, 16, 3) and batch['label'].shape == (32, 10)
  assert -1 <= batch['image'].min() and batch['image'].max() <= 1
  np.testing.assert_allclose(batch['label'].sum(1), 1.0, rtol=1e-6)  # Mixed one-hots.
  tx, _ = optim.make_optimizer(config.optim, total_steps=10)
  params = nn.meta.unbox(task.init_variables(jax.random.key(0)))['params']
  np.testing.assert_array_equal(params['head']['bias'], np.float32(-2.3))

  @jax.jit
  def step(params, state):
    def loss(params):
      return task.loss({'params': params}, batch, jax.random.key(1),
                       task.loss_normalizers(batch))[0]
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value

  state, losses = tx.init(params), []
  for _ in range(3):
    params, state, value = step(params, state)
    losses.append(float(value))
  assert np.isfinite(losses).all() and losses[2] < losses[1], losses
