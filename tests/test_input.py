"""Input: exact eval (every example once), a resumable train stream, the three sources."""

import itertools
import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from helpers import tiny_digits_config
from vit_jax.classification import input as classification_input
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import input_pipeline, train
from vit_jax.framework.errors import UserError


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


def test_converted_in_memory_source_keeps_one_global_stream():
  ids = np.arange(20)
  source = input_pipeline.array_source({'id': ids})
  converted = input_pipeline.map_examples(source, lambda ex: {'id': 100 + ex['id']})
  assert converted.read_all is not None
  plain, shifted = (next(input_pipeline.train_batches(s, lambda ex, seed: ex, 8))['id']
                    for s in (source, converted))
  np.testing.assert_array_equal(shifted, 100 + plain)
  assert not np.array_equal(np.sort(plain), ids[:8])  # Shuffled: the test sees the order.
  eval_ids = next(input_pipeline.eval_batches(converted, lambda ex: ex, 32))['id']
  np.testing.assert_array_equal(eval_ids[:20], 100 + ids)


def test_digits_split_is_fixed():
  train = classification_input.digits_arrays('train')
  test = classification_input.digits_arrays('test')
  assert len(train['label']) == 1437 and len(test['label']) == 360
  assert set(np.bincount(test['label'])) <= {35, 36, 37}  # Stratified: ~36 per class.
  np.testing.assert_array_equal(test['label'], classification_input.digits_arrays('test')['label'])
  assert train['image'].dtype == np.uint8 and train['image'].max() == 255
  small = classification_input.digits_arrays('train[:10%]')  # Within each class.
  np.testing.assert_array_equal(np.bincount(small['label']),
                                np.round(np.bincount(train['label']) / 10))
  assert {x.tobytes() for x in small['image']} <= {x.tobytes() for x in train['image']}


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


def _write_images(folder, count, brightness=0, seed=0):
  """`count` small JPEGs of the given brightness (plus noise) in `folder`."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  for i in range(count):
    pixels = np.full((20, 30, 3), brightness, np.uint8) + rng.integers(0, 20, (20, 30, 3),
                                                                      dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, f'{i}.jpg'))


def _folder_config(root, **changes):
  config = tiny_digits_config(**changes)
  config.input.update(source='folder', data_dir=str(root), image_size=16, channels=3)
  return config


def test_image_folder_source(tmp_path):
  for split, count in (('train', 3), ('test', 2)):
    for label, name in enumerate(('cat', 'dog')):
      _write_images(tmp_path / split / name, count, brightness=200 * label)
  config = _folder_config(tmp_path)
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


def test_class_missing_from_eval_split_keeps_the_training_labels(tmp_path):
  for name, brightness in (('ant', 0), ('bee', 100), ('cat', 200)):
    _write_images(tmp_path / 'train' / name, 2, brightness)
  _write_images(tmp_path / 'test' / 'cat', 2, 200)  # No ant or bee images to test on.
  config = _folder_config(tmp_path)
  batch = next(input_pipeline.eval_batches(
      classification_input.make_source(config.input, 'test', num_classes=3),
      classification_input.eval_preprocess(config.input), 4))
  assert batch['label'][batch['_mask'].astype(bool)].tolist() == [2, 2]


@pytest.mark.parametrize('extra_folder, images, message', [
    ('test/bird', 1, r"class folders \['bird'\] in .*test are not in the training split's classes "
                  r"\['cat', 'dog'\]"),
    ('train/bird', 0, r'class folder .*bird holds no images'),
])
def test_class_folder_that_would_shift_labels_is_an_error(tmp_path, extra_folder, images,
                                                          message):
  for split in ('train', 'test'):
    for name in ('cat', 'dog'):
      _write_images(tmp_path / split / name, 1)
  # 'bird' sorts before 'cat': counted as a class, it would shift both labels.
  _write_images(tmp_path / extra_folder, images)
  config = _folder_config(tmp_path)
  with pytest.raises(UserError, match=message):
    classification_input.make_source(config.input, 'test', num_classes=2)


def test_num_classes_must_match_the_folder(tmp_path):
  for name in ('cat', 'dog'):
    _write_images(tmp_path / 'train' / name, 1)
  config = _folder_config(tmp_path)
  with pytest.raises(UserError, match=r"num_classes is 10 but .* has 2 classes \['cat', 'dog'\]: "
                                      r'pass --config.model.num_classes=2'):
    classification_input.make_source(config.input, 'train', num_classes=10)


def _write_bad_files(folder):
  """A truncated JPEG, a zero-byte PNG and a text file named .jpg; returns their paths."""
  _write_images(folder, 1, seed=1)
  truncated, empty, text = folder / 'truncated.jpg', folder / 'empty.png', folder / 'notes.jpg'
  data = (folder / '0.jpg').read_bytes()
  truncated.write_bytes(data[:len(data) // 2])
  (folder / '0.jpg').unlink()
  empty.write_bytes(b'')
  text.write_text('not an image')
  return sorted(str(p) for p in (truncated, empty, text))


def test_images_that_do_not_decode_are_skipped_or_named(tmp_path, caplog):
  _write_images(tmp_path / 'train' / 'cat', 3)
  bad = _write_bad_files(tmp_path / 'train' / 'dog')
  _write_images(tmp_path / 'train' / 'dog', 3, 200)  # 0.jpg..2.jpg beside the bad ones.
  config = _folder_config(tmp_path)
  source = classification_input.make_source(config.input, 'train', num_classes=2)
  assert source.global_num_examples == 6
  assert 'Skipping 3 of 9 images' in caplog.text and bad[0] in caplog.text

  config.input.on_bad_image = 'stop'
  with pytest.raises(UserError, match=r'3 image\(s\) in .*train do not decode: ' +
                     re.escape(', '.join(bad))):
    classification_input.make_source(config.input, 'train', num_classes=2)


@pytest.mark.slow
def test_folder_with_bad_images_trains_to_the_end(tmp_path, caplog):
  for split in ('train', 'test'):
    _write_images(tmp_path / 'data' / split / 'cat', 2)
    _write_bad_files(tmp_path / 'data' / split / 'dog')
    _write_images(tmp_path / 'data' / split / 'dog', 2, 200)
  config = _folder_config(tmp_path / 'data', total_steps=3, **{
      'model.num_classes': 2, 'input.batch_size': 8, 'input.eval_batch_size': 4})
  metrics = train.train_and_evaluate(config, str(tmp_path / 'workdir'), ClassificationTask(config))
  assert metrics['step'] == 3 and metrics['num_examples'] == 4
  assert 'batch_size 8 is larger than the training split (4 examples)' in caplog.text


def test_folder_percent_slices_split_every_class(tmp_path):
  for name, count in (('cat', 10), ('dog', 20)):
    _write_images(tmp_path / 'train' / name, count)
  config = _folder_config(tmp_path, **{'input.train_split': 'train[:80%]'})
  parts = {split: classification_input.folder_arrays(
      str(tmp_path), split, classification_input.folder_classes(str(tmp_path), 'train[:80%]'))
           for split in ('train[:80%]', 'train[80%:]')}
  assert np.bincount(parts['train[:80%]']['label']).tolist() == [8, 16]
  assert np.bincount(parts['train[80%:]']['label']).tolist() == [2, 4]
  assert sorted(np.concatenate([p['image'] for p in parts.values()]).tolist()) == sorted(
      str(path) for path in tmp_path.glob('train/*/*.jpg'))
  assert classification_input.make_source(config.input, 'train[80%:]', 2).num_examples == 6
  with pytest.raises(UserError, match=r"folder split 'train\[:800\]': use a folder name, "
                                      r'optionally with a percent slice'):
    classification_input.folder_arrays(str(tmp_path), 'train[:800]', ['cat', 'dog'])
