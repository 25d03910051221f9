"""Input: exact eval (every example once), a resumable train stream, the three sources."""

import itertools
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from helpers import tiny_digits_config
from vit_jax import classification_input, input_pipeline
from vit_jax.errors import UserError


def test_eval_scores_every_example_exactly_once():
  ids = np.arange(360)
  source = input_pipeline.array_source({'id': ids, 'x': ids.astype(np.float32)})
  batches = list(input_pipeline.eval_batches(source, lambda ex: ex, batch_size=128))
  assert len(batches) == 3  # 128 + 128 + 104 real examples and 24 padding slots.
  mask = np.concatenate([b['_mask'] for b in batches]).astype(bool)
  seen = np.concatenate([b['id'] for b in batches])[mask]
  assert mask.sum() == 360
  np.testing.assert_array_equal(np.sort(seen), ids)
  assert not np.any(np.concatenate([b['x'] for b in batches])[~mask])


def test_hosts_split_examples_without_overlap():
  parts = [input_pipeline.host_part(10, index=i, count=3) for i in range(3)]
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(10))
  assert [len(p) for p in parts] == [4, 3, 3]


def test_digits_split_is_fixed():
  train = classification_input.digits_arrays('train')
  test = classification_input.digits_arrays('test')
  assert len(train['label']) == 1437 and len(test['label']) == 360
  assert set(np.bincount(test['label'])) <= {35, 36, 37}  # Stratified: ~36 per class.
  np.testing.assert_array_equal(test['label'], classification_input.digits_arrays('test')['label'])
  assert train['image'].dtype == np.uint8 and train['image'].max() == 255


def _digits_stream(config, start_example):
  source = classification_input.make_source(config.input, 'train')
  return input_pipeline.train_batches(
      source, classification_input.train_preprocess(config.input), config.input.batch_size,
      start_example=start_example, seed=config.seed)


def test_resumed_stream_continues_the_same_stream():
  config = tiny_digits_config()
  config.input.batch_size = 256  # 1437 examples: batches 5 and 6 cross into epoch 2.
  reference = list(itertools.islice(_digits_stream(config, 0), 8))
  resumed = list(itertools.islice(_digits_stream(config, 4 * 256), 4))
  for expected, got in zip(reference[4:], resumed):
    np.testing.assert_array_equal(expected['image'], got['image'])
    np.testing.assert_array_equal(expected['label'], got['label'])
  # Augmentation and shuffling really happen: epochs differ in order.
  assert not np.array_equal(reference[0]['label'], reference[6]['label'])


def test_tfds_source_on_mock_cifar10():
  config = tiny_digits_config()
  config.input.update(source='tfds', dataset='cifar10', image_size=24, channels=3,
                      augment='inception_crop', batch_size=4)
  with tfds.testing.mock_data(num_examples=10):
    source = classification_input.make_source(config.input, 'train')
    batch = next(_stream(source, config))
    eval_batch = next(input_pipeline.eval_batches(
        classification_input.make_source(config.input, 'test'),
        classification_input.eval_preprocess(config.input), 8))
  assert batch['image'].shape == (4, 24, 24, 3) and batch['label'].shape == (4,)
  assert -1.0 <= batch['image'].min() and batch['image'].max() <= 1.0
  assert eval_batch['image'].shape == (8, 24, 24, 3) and eval_batch['_mask'].sum() == 8


def _stream(source, config):
  return input_pipeline.train_batches(source, classification_input.train_preprocess(config.input),
                                      config.input.batch_size)


def test_image_folder_source(tmp_path):
  rng = np.random.default_rng(0)
  for split, count in (('train', 3), ('test', 2)):
    for label, name in enumerate(('cat', 'dog')):
      os.makedirs(tmp_path / split / name)
      for i in range(count):
        pixels = np.full((20, 30, 3), 200 * label, np.uint8) + rng.integers(0, 20, (20, 30, 3),
                                                                             dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / split / name / f'{i}.jpg')
  config = tiny_digits_config()
  config.input.update(source='folder', data_dir=str(tmp_path), image_size=16, channels=3)
  batches = list(input_pipeline.eval_batches(
      classification_input.make_source(config.input, 'test'),
      classification_input.eval_preprocess(config.input), 8))
  mask = batches[0]['_mask'].astype(bool)
  assert mask.sum() == 4
  labels, images = batches[0]['label'][mask], batches[0]['image'][mask]
  assert sorted(labels.tolist()) == [0, 0, 1, 1]
  # Class 'dog' images are bright: the label follows the folder.
  assert np.all(images[labels == 1].mean(axis=(1, 2, 3)) > images[labels == 0].mean(axis=(1, 2, 3)))
  assert next(_stream(classification_input.make_source(config.input, 'train'), config))[
      'image'].shape == (32, 16, 16, 3)


def test_missing_folder_is_a_clear_error(tmp_path):
  config = tiny_digits_config()
  config.input.update(source='folder', data_dir=str(tmp_path / 'nothing'))
  with pytest.raises(UserError, match='does not exist'):
    classification_input.make_source(config.input, 'train')
