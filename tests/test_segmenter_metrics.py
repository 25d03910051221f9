"""mIoU: per-class areas on the device, dataset-level sums on the host, against a numpy
transcription of mmseg 0.14.1's mean_iou (what Segmenter reports)."""

import logging

import jax
import numpy as np
import pytest

from helpers import mmseg_mean_iou
from segmenter_jax import metrics

K = 5  # Class 4 appears nowhere; class 3 is predicted but never labelled.


def hand_made_maps():
  """Three images of different content; 255 marks ignored pixels."""
  labels = [np.array([[0, 0, 1, 1],
                      [0, 0, 1, 1],
                      [2, 2, 255, 255]]),
            np.array([[1, 1, 1, 1],
                      [1, 2, 2, 255],
                      [0, 0, 0, 0]]),
            np.array([[2, 2, 2, 2],
                      [2, 2, 2, 2],
                      [255, 255, 0, 0]])]
  predictions = [np.array([[0, 1, 1, 1],
                           [0, 0, 1, 3],
                           [2, 0, 4, 4]]),  # 4 only under ignore: must not count.
                 np.array([[1, 1, 1, 1],
                           [1, 2, 1, 0],
                           [0, 0, 3, 3]]),
                 np.array([[2, 2, 2, 2],
                           [2, 2, 0, 2],
                           [3, 3, 0, 0]])]
  return predictions, labels


def accumulate(predictions, labels, batch_size):
  """Runs `areas` under jit in batches, the last one padded with a garbage example whose mask
  is 0, and feeds the evaluator as the train loop does."""
  evaluator = metrics.MeanIoU(K, ['bg', 'a', 'b', 'c', 'never'])
  areas = jax.jit(lambda p, l: metrics.areas(p, l, K))
  for start in range(0, len(labels), batch_size):
    pred = np.stack(predictions[start:start + batch_size])
    label = np.stack(labels[start:start + batch_size])
    mask = np.ones(len(label), np.int32)
    pad = batch_size - len(label)
    if pad:
      pred = np.concatenate([pred, np.full((pad,) + pred.shape[1:], 1)])
      label = np.concatenate([label, np.full((pad,) + label.shape[1:], 2)])
      mask = np.concatenate([mask, np.zeros(pad, np.int32)])
    outputs = jax.device_get(areas(pred, label))
    evaluator.update(dict(outputs, _mask=mask))
  return evaluator


def test_miou_equals_mmseg_formula_over_batches_with_padding():
  predictions, labels = hand_made_maps()
  expected = mmseg_mean_iou(predictions, labels, K)
  result = accumulate(predictions, labels, batch_size=2).result()  # Batches of 2 + 1 padded.
  assert result['num_examples'] == 3
  for key in ('miou', 'mean_accuracy', 'pixel_accuracy'):
    assert result[key] == pytest.approx(expected[key], abs=1e-12), key
  # By hand: class 0 I=7 U=12, class 1 I=8 U=11, class 2 I=9 U=12, class 3 I=0 U=3
  # (predicted, never labelled), class 4 U=0 (left out).
  assert result['miou'] == pytest.approx((7 / 12 + 8 / 11 + 9 / 12 + 0) / 4)
  assert result['pixel_accuracy'] == pytest.approx(24 / 31)
  np.testing.assert_array_equal(accumulate(predictions, labels, 2).totals['labelled'],
                                [10, 9, 12, 0, 0])


def test_areas_are_summed_over_the_dataset_not_averaged_per_image():
  # Image 1: class 1 is one pixel, missed; image 2: class 1 is large and found.
  labels = [np.array([[0, 0, 0, 1]]), np.array([[1, 1, 1, 0]])]
  predictions = [np.array([[0, 0, 0, 0]]), np.array([[1, 1, 1, 0]])]
  result = accumulate(predictions, labels, batch_size=2).result()
  per_image = np.mean([mmseg_mean_iou([p], [l], K)['miou'] for p, l in zip(predictions, labels)])
  assert result['miou'] == pytest.approx(mmseg_mean_iou(predictions, labels, K)['miou'])
  assert result['miou'] == pytest.approx((4 / 5 + 3 / 4) / 2)
  assert abs(result['miou'] - per_image) > 0.05


def test_random_maps_with_every_batch_size(caplog):
  rng = np.random.default_rng(0)
  labels = [rng.integers(0, 4, (7, 9)) for _ in range(5)]
  for label in labels:
    label[rng.random(label.shape) < 0.2] = 255
  # Predictions never say 4: that class stays out of the mean.
  predictions = [np.where(rng.random(l.shape) < 0.7, l % 255, rng.integers(0, 4, l.shape))
                 for l in labels]
  expected = mmseg_mean_iou(predictions, labels, K)
  for batch_size in (1, 2, 3, 5, 8):
    evaluator = accumulate(predictions, labels, batch_size)
    with caplog.at_level(logging.INFO):
      result = evaluator.result()
    assert result['miou'] == pytest.approx(expected['miou'], abs=1e-12)
    assert result['pixel_accuracy'] == pytest.approx(expected['pixel_accuracy'], abs=1e-12)
  # Per-class IoU in the log, by class name, in percent; the absent class as nan.
  log = caplog.text
  assert f'{"a":>24} {100 * expected["iou"][1]:6.2f}' in log
  assert f'{"never":>24}    nan' in log


def test_no_labelled_pixel_gives_nan_not_an_error():
  evaluator = metrics.MeanIoU(3)
  zeros = np.zeros((1, 3), np.int32)
  evaluator.update({'intersection': zeros, 'predicted': zeros, 'labelled': zeros,
                    '_mask': np.ones(1, np.int32)})
  result = evaluator.result()
  assert np.isnan(result['miou']) and result['pixel_accuracy'] == 0.0


def test_miou_by_object_size_hand_computed():
  # Image 1 (120 x 120): class 0 everywhere (12,700 px: large) but a 10 x 10 class-1 square
  # (100 px: small) and a 40 x 40 class-2 square (1,600 px: medium).
  label = np.zeros((120, 120), np.uint8)
  label[5:15, 5:15] = 1
  label[50:90, 50:90] = 2
  prediction = label.astype(np.int32).copy()
  prediction[50:70, 50:90] = 1  # Half of the medium object (800 px) is called class 1.
  # Image 2 (64 x 64, else ignored): two 30 x 30 class-3 squares touching at a corner are ONE
  # object of 1,800 px (8-connectivity): medium, not two small ones; predicted right.
  label2 = np.full((64, 64), 255, np.uint8)
  label2[0:30, 0:30] = 3
  label2[30:60, 30:60] = 3
  prediction2 = np.where(label2 == 255, 0, label2).astype(np.int32)
  sizes = metrics.object_size_map(label2)
  assert set(np.unique(sizes[label2 == 3])) == {1} and set(np.unique(sizes[label2 == 255])) == {-1}

  pad = lambda x, fill: np.pad(x, ((0, 0), (0, 120 - x.shape[1])), constant_values=fill)
  labels = np.stack([label, np.pad(pad(label2, 255), ((0, 56), (0, 0)), constant_values=255)])
  predictions = np.stack([prediction, np.pad(pad(prediction2, 0), ((0, 56), (0, 0)))])
  evaluator = metrics.MeanIoUByObjectSize(num_classes=4)
  evaluator.update({'_mask': np.array([1, 1]), 'prediction': predictions, 'label': labels})
  evaluator.update({'_mask': np.array([0]), 'prediction': np.zeros((1, 8, 8), np.int32),
                    'label': np.zeros((1, 8, 8), np.uint8)})  # Padding: not counted.
  result = evaluator.result()
  assert result['num_examples'] == 2
  # Small: class 1 exactly right (IoU 1); no other class on small pixels.
  assert result['miou_small'] == pytest.approx(1.0)
  # Medium: class 2 I = 800, U = 1600 -> 0.5; class 1 predicted on 800 px never labelled
  # there -> 0; class 3 right -> 1. Mean 0.5.
  assert result['miou_medium'] == pytest.approx(0.5)
  # Large: class 0 exactly right.
  assert result['miou_large'] == pytest.approx(1.0)
