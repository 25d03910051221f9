"""ImageNet ReaL accuracy: a top-1 prediction counts when it is in the image's ReaL label set;
images whose set is empty are left out (Beyer et al. 2020). Hand-computed cases, and the whole
eval on TFDS mock imagenet2012_real against a count made here from the same examples."""

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from helpers import load_config
from vit_jax.classification import task as classification
from vit_jax.framework import evaluation, reproduce, sharding


def test_label_sets_become_masks_and_an_empty_set_an_empty_mask():
  mask = classification.real_label_set(tf.constant([3, 1, 3], tf.int64), 5).numpy()
  np.testing.assert_array_equal(mask, [0, 1, 0, 1, 0])
  empty = classification.real_label_set(tf.zeros([0], tf.int64), 5).numpy()
  np.testing.assert_array_equal(empty, [0, 0, 0, 0, 0])


def test_hand_computed_case():
  # Four images, classes 0..3: sets {1, 2}, {} (left out), {0}, {3}; predictions 1, 0, 2, 3.
  real = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], np.uint8)
  logits = np.eye(4, dtype=np.float32)[[1, 0, 2, 3]]
  hit, has_real = classification.real_correct(logits, real)
  np.testing.assert_array_equal(hit, [True, False, False, True])
  np.testing.assert_array_equal(has_real, [True, False, True, True])
  accuracy = classification.Accuracy()
  labels = np.array([1, 0, 0, 2])  # Original labels: predictions 1 and 0 are right.
  accuracy.update({'_mask': np.array([1, 1, 1, 1]), 'correct': logits.argmax(-1) == labels,
                   'loss': np.zeros(4), 'real_correct': hit, 'has_real': has_real})
  accuracy.update({'_mask': np.array([0]), 'correct': np.array([True]), 'loss': np.zeros(1),
                   'real_correct': np.array([True]), 'has_real': np.array([True])})  # Padding.
  result = accuracy.result()
  assert result['accuracy'] == 0.5
  assert result['real_accuracy'] == pytest.approx(2 / 3)  # 2 of the 3 images with a set.
  assert result['real_num_examples'] == 3


def test_constant_predictor_on_mock_imagenet_real_scores_its_share_of_the_sets(tmp_path):
  """A ViT whose head always says class c: ReaL accuracy = share of the images with a
  non-empty set that contain c; top-1 = share of original labels equal to c."""
  config = load_config('vit_finetune', 'b16,imagenet2012')
  config.model.update(variant=None, patch_size=8, hidden_size=8, num_layers=1, num_heads=1,
                      mlp_dim=8)
  config.input.update(dataset=classification.REAL_DATASET, eval_split='validation',
                      image_size=16, eval_batch_size=8)
  with tfds.testing.mock_data(num_examples=20):
    examples = list(tfds.builder('imagenet2012_real').as_dataset(split='validation'))
    sets = [set(ex['real_label'].numpy().tolist()) for ex in examples]
    originals = np.array([int(ex['original_label']) for ex in examples])
    c = int(np.bincount([k for s in sets for k in s], minlength=1000).argmax())
    task = classification.ClassificationTask(config)
    rng = np.random.default_rng(0)
    params = reproduce.abstract_variables(  # Random weights, shapes without an init.
        task, lambda x: rng.standard_normal(x.shape).astype(x.dtype))['params']
    head_bias = np.zeros(1000, np.float32)
    head_bias[c] = 100.0  # Dominates the logits whatever the image.
    params['head'] = {'kernel': 1e-3 * params['head']['kernel'], 'bias': head_bias}
    mesh = sharding.make_mesh(config.mesh)
    batch_sharding = sharding.batch_sharding(mesh, sharding.logical_rules(config.sharding_rules))
    step = jax.jit(lambda v, b: dict(task.eval_outputs(v, b), _mask=b['_mask']))
    result = evaluation.evaluate(task, step, {'params': params}, batch_sharding)
  with_sets = [s for s in sets if s]
  assert result['num_examples'] == 20
  assert result['real_num_examples'] == len(with_sets)
  assert result['real_accuracy'] == pytest.approx(sum(c in s for s in with_sets) / len(with_sets))
  assert result['real_accuracy'] > 0
  assert result['accuracy'] == pytest.approx(np.mean(originals == c))
