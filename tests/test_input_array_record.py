"""TFDS datasets in array_record: one global order read by index, so that the training batches
are the same for 1, 2 or 4 processes and a resume is arithmetic; tfrecord keeps per-host parts."""

import dataclasses
import itertools
import logging
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from helpers import run_two_processes, tiny_digits_config
from mesh_run import train_losses
from multihost_run import run_config
from vit_jax.classification import input as classification_input
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import input_pipeline, train

NAME = 'tiny_array_record_images'
NUM_TRAIN, NUM_TEST, BATCH, SEED = 37, 11, 8, 3


class TinyArrayRecordImages(tfds.core.GeneratorBasedBuilder):
  """37 training and 11 test images of 8x8 grey noise; `id` numbers them (test from 1000)."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(8, 8, 1)),
        'label': tfds.features.ClassLabel(num_classes=10), 'id': np.int64}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(NUM_TRAIN, 0),
            'test': self._generate_examples(NUM_TEST, 1000)}

  def _generate_examples(self, count, first):
    rng = np.random.default_rng(first)
    for i in range(first, first + count):
      yield i, {'image': rng.integers(0, 256, (8, 8, 1), dtype=np.uint8), 'label': i % 10, 'id': i}


@pytest.fixture(scope='module')
def data_dirs(tmp_path_factory):
  """The dataset prepared twice: format -> data_dir."""
  root = tmp_path_factory.mktemp('tfds')
  dirs = {f: str(root / f) for f in ('array_record', 'tfrecord')}
  for file_format, data_dir in dirs.items():
    TinyArrayRecordImages(data_dir=data_dir, file_format=file_format).download_and_prepare()
  return dirs


def _config_changes(data_dir):
  return {'seed': SEED, 'input.source': 'tfds', 'input.dataset': NAME, 'input.data_dir': data_dir,
          'input.batch_size': BATCH, 'input.eval_batch_size': BATCH}


def _source(data_dir, split='train'):
  config = tiny_digits_config(**_config_changes(data_dir))
  return config, classification_input.make_source(config.input, split)


def _stream(data_dir, num_batches, start=0, index=None, count=None, repeats=1, mix=False):
  """The classification task's training batches, with each example's id and seed beside them;
  `mix`: Mixup / CutMix on pairs of rows."""
  config, source = _source(data_dir)
  classify = classification_input.train_preprocess(config.input)
  config.input.update(mixup_alpha=0.8, cutmix_alpha=1.0, mix_group=2)
  mixing = classification_input.train_batch_preprocess(config.input, 10, 0.1) if mix else None
  batches = input_pipeline.train_batches(
      source, lambda ex, seed: dict(classify(ex, seed), id=ex['id'], seed=seed), BATCH,
      start_example=start, seed=SEED, process_index=index, process_count=count, repeats=repeats,
      batch_preprocess=mixing)
  return list(itertools.islice(batches, num_batches))


def _assert_same(got, expected):
  assert len(got) == len(expected)
  for got_batch, expected_batch in zip(got, expected):
    for key in got_batch:
      np.testing.assert_array_equal(got_batch[key], expected_batch[key], err_msg=key)


def _rows(batches, index, count):
  """What process `index` of `count` holds of global `batches`: its block of rows."""
  local = BATCH // count
  return [{k: v[index * local:(index + 1) * local] for k, v in b.items()} for b in batches]


def test_global_batches_do_not_depend_on_the_process_count(data_dirs):
  one = _stream(data_dirs['array_record'], 6)  # 48 examples: into the second epoch.
  # Independent reference: epoch e is the permutation of the records drawn with seed (SEED, e);
  # record r's id read by TFDS' own numpy path; example i augmented with seed (SEED, i).
  ids = np.array([ex['id'] for ex in tfds.builder(NAME, data_dir=data_dirs['array_record'])
                  .as_data_source('train')])
  order = np.concatenate([np.random.default_rng([SEED, e]).permutation(NUM_TRAIN)
                          for e in range(2)])
  np.testing.assert_array_equal(np.concatenate([b['id'] for b in one]), ids[order[:6 * BATCH]])
  np.testing.assert_array_equal(np.concatenate([b['seed'] for b in one]),
                                [[SEED, i] for i in range(6 * BATCH)])
  assert not np.array_equal(one[0]['image'], one[1]['image'])

  for count in (2, 4):
    for index in range(count):
      _assert_same(_stream(data_dirs['array_record'], 6, index=index, count=count),
                   _rows(one, index, count))


def test_repeated_augmentation_reads_deits_order_for_any_process_count(data_dirs):
  one = _stream(data_dirs['array_record'], 6, repeats=3, mix=True)  # Into the second epoch.
  # DeiT's RASampler: epoch e's permutation, each record 3 times in a row, cut to the epoch's
  # length; here each global batch then sorted by copy number (a stable sort).
  ids = np.array([ex['id'] for ex in tfds.builder(NAME, data_dir=data_dirs['array_record'])
                  .as_data_source('train')])
  order = np.concatenate([np.repeat(np.random.default_rng([SEED, e]).permutation(NUM_TRAIN), 3)
                          [:NUM_TRAIN] for e in range(2)])
  positions = np.arange(6 * BATCH).reshape(6, BATCH)
  positions = np.take_along_axis(positions, np.argsort(positions % NUM_TRAIN % 3, axis=1,
                                                       kind='stable'), axis=1).ravel()
  np.testing.assert_array_equal(np.concatenate([b['id'] for b in one]), ids[order[positions]])
  np.testing.assert_array_equal(np.concatenate([b['seed'][:, 1] for b in one]), positions)
  for index in range(2):
    _assert_same(_stream(data_dirs['array_record'], 6, index=index, count=2, repeats=3, mix=True),
                 _rows(one, index, 2))
  _assert_same(_stream(data_dirs['array_record'], 2, start=4 * BATCH, repeats=3, mix=True),
               one[4:])
  assert one[0]['label'].shape == (BATCH, 10)  # Mixed targets.


def test_resume_continues_the_stream_bit_exactly(data_dirs):
  reference = _stream(data_dirs['array_record'], 6)
  for start_batch in (2, 5):  # In the first epoch; in the second (example 40 of 37 per epoch).
    _assert_same(_stream(data_dirs['array_record'], 6 - start_batch, start=start_batch * BATCH),
                 reference[start_batch:])
  _assert_same(_stream(data_dirs['array_record'], 2, start=4 * BATCH, index=1, count=2),
               _rows(reference[4:], 1, 2))


def test_eval_scores_every_example_once(data_dirs):
  config, source = _source(data_dirs['array_record'], 'test')
  evaluate = classification_input.eval_preprocess(config.input)
  batches = list(input_pipeline.eval_batches(
      source, lambda ex: dict(evaluate(ex), id=ex['id']), BATCH))
  assert len(batches) == 2 and batches[0]['image'].shape == (BATCH, 16, 16, 1)
  mask = np.concatenate([b['_mask'] for b in batches]).astype(bool)
  ids = np.concatenate([b['id'] for b in batches])[mask]
  np.testing.assert_array_equal(np.sort(ids), np.arange(1000, 1000 + NUM_TEST))
  assert mask.sum() == NUM_TEST


def test_converted_source_keeps_random_access(data_dirs):
  _, source = _source(data_dirs['array_record'])
  converted = input_pipeline.map_examples(source, lambda ex: dict(ex, id=-ex['id']))
  assert isinstance(converted.read, input_pipeline.RecordReader)
  batches = [list(itertools.islice(input_pipeline.train_batches(
      s, lambda ex, seed: {'id': ex['id']}, BATCH, seed=SEED), 2)) for s in (source, converted)]
  for plain, negated in zip(*batches):
    np.testing.assert_array_equal(negated['id'], -plain['id'])
  evaluated = next(input_pipeline.eval_batches(converted, lambda ex: {'id': ex['id']}, BATCH))
  assert np.all(evaluated['id'] <= 0) and len(set(evaluated['id'].tolist())) == BATCH


@pytest.mark.parametrize('case', ['tfrecord', 'array_record read wrapped by a task'])
def test_sources_without_random_access_keep_per_host_parts_and_say_so(data_dirs, case, caplog):
  _, source = _source(data_dirs[case.split()[0]])
  if case == 'tfrecord':
    assert not isinstance(source.read, input_pipeline.RecordReader)
  else:  # As DETR's and Segmenter's TFDS sources convert examples: the task's map is kept.
    read = source.read
    source = dataclasses.replace(source, read=lambda: read().map(lambda ex: dict(ex, id=-ex['id'])))
  with caplog.at_level(logging.INFO, logger='absl'):
    batch = next(input_pipeline.train_batches(
        source, lambda ex, seed: {'id': ex['id']}, BATCH, seed=SEED))
  assert 'the global batches depend on the number of processes' in caplog.text
  ids = np.abs(batch['id'])
  assert len(set(ids.tolist())) == BATCH and ids.max() < NUM_TRAIN
  assert np.all(batch['id'] <= 0) == (case != 'tfrecord')


# DeiT's input: 3 repeats, Mixup / CutMix on pairs of rows.
DEIT_CHANGES = {'input.repeats': 3, 'input.mixup_alpha': 0.8, 'input.cutmix_alpha': 1.0,
                'input.mix_group': 2, 'loss.label_smoothing': 0.1}


@pytest.mark.slow
@pytest.mark.parametrize('deit', [False, True], ids=['plain', 'deit'])
def test_two_processes_train_like_one_and_resume_to_the_same_batches(data_dirs, tmp_path, deit):
  changes = [f'{key}={value!r}' for key, value in
             dict(_config_changes(data_dirs['array_record']), checkpoint_every=1000,
                  **(DEIT_CHANGES if deit else {})).items()]
  config = run_config(*changes)
  single = str(tmp_path / 'single')  # The reference: this process, one device.
  train.train_and_evaluate(config, single, ClassificationTask(config))

  multi = str(tmp_path / 'multi')
  run_two_processes(multi, *changes, 'save_batches=6')
  # Cross-process all-reduces sum in another order: float32 round-off only.
  np.testing.assert_allclose(train_losses(multi), train_losses(single), rtol=1e-5)
  # Each process got its rows of the one-process batches, from step 0 and resumed at step 3.
  one = _stream(data_dirs['array_record'], 6, repeats=3 if deit else 1, mix=deit)
  for index in range(2):
    saved = np.load(os.path.join(multi, f'batches_{index}.npz'))
    for start in (0, 3):
      _assert_same([{k: saved[f'from{start}_{k}_{i}'] for k in ('image', 'label')}
                    for i in range(6 - start)], _rows(one[start:], index, 2))
