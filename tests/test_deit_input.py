"""DeiT's input in the classification pipeline: the crop box, resize and eval crop against timm
and torchvision on the same images, RandAugment strings, Mixup groups, and repeated
augmentation giving the same batches for one and two processes and on resume, in the stream and
in training."""

import itertools
import random

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import timm.data.transforms as timm_transforms
import torch
from PIL import Image
from torchvision import transforms

from helpers import load_config, tiny_digits_config
from test_train import Preempted, PreemptedTask
from vit_jax.classification import augment
from vit_jax.classification import input as classification_input
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import checkpoint, input_pipeline, train
from vit_jax.framework.errors import UserError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope='module')
def photo():
  from sklearn import datasets  # A bundled photo: resizing a photo, not noise, is compared.
  return datasets.load_sample_images().images[0]


def _photo(photo, height, width):
  return np.asarray(Image.fromarray(photo).resize((width, height), Image.BILINEAR))


class _SameDraws(random.Random):
  """Python's `random` as timm's RandomResizedCrop calls it, answering with our sampler's
  uniform draws (attempt k: area, log-aspect, then top and left if the box fits)."""

  def __init__(self, draws):
    super().__init__()
    self.draws, self.uniforms, self.ints = draws, 0, 0

  def uniform(self, a, b):
    value = a + (b - a) * self.draws[self.uniforms // 2, self.uniforms % 2]
    self.uniforms += 1
    return value

  def randint(self, a, b):  # Inclusive, as timm's offsets are.
    value = a + int(self.draws[(self.uniforms - 1) // 2, 2 + self.ints] * (b - a + 1))
    self.ints += 1
    return value


@pytest.mark.parametrize('height, width, scale', [
    (70, 90, (0.08, 1.0)), (70, 90, (0.5, 1.0)),
    (10, 200, (0.9, 1.0)), (200, 10, (0.9, 1.0))])  # No box fits: timm's centre fallback.
def test_random_resized_crop_box_equals_timms_on_the_same_draws(height, width, scale,
                                                                monkeypatch):
  for s in range(20):
    seed = tf.constant([s, 7], tf.int64)
    ours = tuple(int(v) for v in augment.random_resized_crop_box(height, width, seed, scale))
    draws = tf.random.stateless_uniform([10, 4], seed, dtype=tf.float64).numpy()
    monkeypatch.setattr(timm_transforms, 'random', _SameDraws(draws))
    theirs = timm_transforms.RandomResizedCropAndInterpolation.get_params(
        Image.new('RGB', (width, height)), scale, (3 / 4, 4 / 3))
    assert ours == tuple(theirs), (s, ours, theirs)


@pytest.mark.parametrize('box', [(5, 10, 50, 60), (0, 0, 70, 90), (20, 30, 20, 25)])
def test_crop_resized_bicubic_within_one_grey_level_of_pils(photo, box):
  image = _photo(photo, 70, 90)
  top, left, height, width = box
  theirs = np.asarray(Image.fromarray(image).crop((left, top, left + width, top + height))
                      .resize((32, 32), Image.BICUBIC)).astype(int)
  crop = image[top:top + height, left:left + width]
  ours = classification_input._to_pixels(classification_input._resize(crop, 32, 'bicubic'))
  difference = np.abs(ours.numpy().astype(int) - theirs)
  assert difference.max() <= 1 and difference.mean() < 0.25, (difference.max(), difference.mean())


@pytest.mark.parametrize('shape', [(75, 61), (61, 75), (64, 64), (97, 130)])
def test_eval_crop_ratio_is_deits_eval_within_one_grey_level(photo, shape):
  image = _photo(photo, *shape)
  config = ml_collections.ConfigDict(dict(image_size=32, eval_crop_ratio=0.875, channels=3,
                                          interpolation='bicubic', normalization='deit'))
  ours = classification_input.eval_preprocess(config)({'image': image, 'label': 0})['image']
  # DeiT's datasets.py: Resize(int(size / ratio), bicubic), CenterCrop, ToTensor, Normalize.
  deit = transforms.Compose([
      transforms.Resize(int(32 / 0.875), interpolation=transforms.InterpolationMode.BICUBIC),
      transforms.CenterCrop(32), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
  theirs = deit(Image.fromarray(image)).permute(1, 2, 0).numpy()
  grey_levels = np.abs(ours.numpy() - theirs) * np.array(STD) * 255
  assert grey_levels.max() < 1.01 and grey_levels.mean() < 0.2


def test_eval_resize_and_crop_ratio_together_are_refused():
  config = ml_collections.ConfigDict(dict(image_size=32, eval_crop_ratio=0.875, eval_resize=36))
  with pytest.raises(UserError, match='keep one'):
    classification_input.eval_preprocess(config)


def test_rand_augment_strings():
  assert classification_input.rand_augment_args('rand-m9-mstd0.5-inc1') == dict(
      num_ops=2, magnitude=9.0, magnitude_std=0.5)
  assert classification_input.rand_augment_args('rand-m7-n3-inc1')['num_ops'] == 3
  assert classification_input.rand_augment_args('rand-m9-inc0')['magnitude'] == 9  # As timm.
  for bad in ('rand-m9-mstd0.5', 'auto-m9-inc1', 'rand-q9-inc1', 'rand-m9x-inc1', 'rand-n2.5-inc1'):
    with pytest.raises(UserError, match='rand-m9-mstd0.5-inc1'):
      classification_input.rand_augment_args(bad)


@pytest.mark.parametrize('interpolation', ['bicubic', 'bilinear'])
def test_rand_augment_warps_resample_as_the_crop(monkeypatch, interpolation):
  """timm hands the transform's interpolation to RandAugment: DeiT's warps are bicubic."""
  seen = []

  def spy(image, seed, **kwargs):
    seen.append(kwargs['interpolation'])
    return image
  monkeypatch.setattr(augment, 'rand_augment', spy)
  config = load_config('deit', 'Ti').input
  assert config.interpolation == 'bicubic'
  config.update(image_size=16, interpolation=interpolation)
  classification_input.train_preprocess(config)(
      {'image': np.zeros((20, 24, 3), np.uint8), 'label': 0}, tf.constant([0, 1]))
  assert seen == [interpolation]


def _batch(num_examples, size=8, num_classes=10):
  rng = np.random.default_rng(0)
  return {'image': tf.constant(rng.normal(size=(num_examples, size, size, 3)), tf.float32),
          'label': tf.constant(np.arange(num_examples) % num_classes, tf.int32)}


def test_mixup_mixes_each_group_with_its_reversal():
  config = ml_collections.ConfigDict(dict(mixup_alpha=0.8, cutmix_alpha=1.0, mix_group=4))
  mix = classification_input.train_batch_preprocess(config, 10, label_smoothing=0.1)
  seeds = tf.stack([tf.fill([8], tf.constant(5, tf.int64)), tf.range(8, dtype=tf.int64)], 1)
  targets = mix(_batch(8), seeds)['label'].numpy()
  np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
  for row in range(8):  # Each row's mass: its own label and its partner's, in its group of 4.
    partner = row // 4 * 4 + 3 - row % 4
    assert set(np.flatnonzero(targets[row] > 0.01)) <= {row % 10, partner % 10}

  off = classification_input.train_batch_preprocess(
      ml_collections.ConfigDict(dict(mixup_alpha=0.8, mix_prob=0.0)), 10, label_smoothing=0.1)
  batch = _batch(8)
  unmixed = off(batch, seeds)
  np.testing.assert_array_equal(unmixed['image'], batch['image'])
  np.testing.assert_allclose(unmixed['label'], augment.smoothed_targets(batch['label'], 10, 0.1))
  assert classification_input.train_batch_preprocess(ml_collections.ConfigDict(), 10) is None
  with pytest.raises(UserError, match='mix_group 3 must be even'):
    classification_input.train_batch_preprocess(
        ml_collections.ConfigDict(dict(mixup_alpha=0.8, mix_group=3)), 10)(_batch(6), seeds[:6])


NUM_EXAMPLES, BATCH, SEED = 37, 12, 3


def _deit_input(**changes):
  """configs/deit.py's input at 16 pixels, on 37 in-memory RGB images numbered by `id`."""
  config = load_config('deit', 'Ti')
  config.input.update(image_size=16, batch_size=BATCH, mix_group=2, **changes)
  rng = np.random.default_rng(0)
  source = input_pipeline.array_source({
      'image': rng.integers(0, 256, (NUM_EXAMPLES, 20, 24, 3), dtype=np.uint8),
      'label': np.arange(NUM_EXAMPLES) % 10, 'id': np.arange(NUM_EXAMPLES)})
  preprocess = classification_input.train_preprocess(config.input)
  mix = classification_input.train_batch_preprocess(config.input, 10, 0.1)

  def stream(num_batches, start=0, index=None, count=None):
    batches = input_pipeline.train_batches(
        source, lambda ex, seed: dict(preprocess(ex, seed), id=ex['id'], seed=seed), BATCH,
        start_example=start, seed=SEED, process_index=index, process_count=count,
        repeats=config.input.repeats, batch_preprocess=mix)
    return list(itertools.islice(batches, num_batches))
  return stream


def _assert_same(got, expected):
  assert len(got) == len(expected)
  for got_batch, expected_batch in zip(got, expected):
    for key in expected_batch:
      np.testing.assert_array_equal(got_batch[key], expected_batch[key], err_msg=key)


@pytest.mark.slow  # The recipe's input traced four times: 20 s (test_input_array_record has
def test_repeated_augmentation_is_the_same_for_two_processes_and_on_resume():  # a fast one).
  stream = _deit_input()
  one = stream(5)  # 60 examples: the second epoch starts at example 37.
  halves = [stream(5, index=i, count=2) for i in range(2)]
  _assert_same([{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*halves)], one)
  _assert_same(stream(2, start=3 * BATCH), one[3:])

  ids = np.concatenate([b['id'] for b in one])
  positions = np.concatenate([b['seed'][:, 1] for b in one])
  np.testing.assert_array_equal(np.sort(positions), np.arange(5 * BATCH))  # Own seeds.
  epoch = ids[positions < NUM_EXAMPLES]
  counts = np.bincount(epoch, minlength=NUM_EXAMPLES)
  assert sorted(counts[counts > 0]) == [1] + [3] * 12  # 13 examples, the last one cut short.
  first = one[0]
  for example in set(first['id'].tolist()):  # Copies sit a third of a batch apart.
    rows = np.flatnonzero(first['id'] == example)
    assert np.all(np.diff(rows) == BATCH // 3), (example, rows)
  for batch in one:  # Targets mixed with smoothing, augmented images all different.
    assert batch['label'].shape == (BATCH, 10) and batch['image'].shape == (BATCH, 16, 16, 3)
    np.testing.assert_allclose(batch['label'].sum(1), 1.0, rtol=1e-6)
    assert len({image.tobytes() for image in batch['image']}) == BATCH


def test_deit_config_trains_on_mixed_targets():
  task = ClassificationTask(load_config('deit', 'Ti'))
  spec = task.train_example_spec()
  assert spec['image'].shape == (224, 224, 3)
  assert spec['label'] == tf.TensorSpec((1000,), tf.float32)
  assert task.train_batch_preprocess() is not None
  # Mixed targets already carry the smoothing: the loss takes them as they are.
  logits = torch.randn(4, 1000).numpy()
  targets = np.full((4, 1000), 1e-4, np.float32)
  targets[np.arange(4), [1, 2, 3, 4]] = 0.9001
  expected = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(targets),
                                               reduction='none').numpy()
  np.testing.assert_allclose(task.per_example_loss(logits, targets), expected, rtol=1e-5)


@pytest.mark.slow  # Two short training runs with the recipe's input: ~60 s.
def test_training_with_deits_input_resumes_bit_exactly(tmp_path):
  deit_input = load_config('deit', 'Ti').input
  recipe = {key: deit_input[key] for key in (
      'augment', 'interpolation', 'randaugment', 'normalization', 'random_erasing', 'mixup_alpha',
      'cutmix_alpha', 'mix_prob', 'mix_switch_prob', 'repeats')}
  config = tiny_digits_config(**{'loss.label_smoothing': 0.1, 'keep_checkpoints': 5})
  config.input.update(channels=3, mix_group=4, **recipe)
  uninterrupted, interrupted = str(tmp_path / 'uninterrupted'), str(tmp_path / 'interrupted')
  train.train_and_evaluate(config, uninterrupted, ClassificationTask(config))
  with pytest.raises(Preempted):
    train.train_and_evaluate(config, interrupted, PreemptedTask(config, stop_after=4))
  train.train_and_evaluate(config, interrupted, ClassificationTask(config))
  expected, got = (checkpoint.load_state(w, 6) for w in (uninterrupted, interrupted))
  jax.tree.map(np.testing.assert_array_equal, got['params'], expected['params'])
