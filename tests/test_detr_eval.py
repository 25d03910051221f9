"""COCO eval: DETR's PostProcess and pycocotools AP over the whole eval split."""

import contextlib
import copy
import io
import types

import ml_collections
import numpy as np
import pytest
import torch
from pycocotools import coco, cocoeval

from detr_jax import coco_eval, detection_input
from helpers import COCO_FIXTURE_ANNOTATIONS, mock_coco, mock_coco_examples, write_coco_folder
from vit_jax.framework import input_pipeline


def _eval_batches(config, split, batch_size):
  source = detection_input.make_source(config, split)
  return list(input_pipeline.eval_batches(source, detection_input.eval_preprocess(config),
                                          batch_size))


def _perfect_outputs(batch, num_classes, queries=6):
  """Logits and boxes that predict every target exactly (other queries: no-object)."""
  b, slots = batch['labels'].shape
  logits = np.zeros((b, queries, num_classes + 1), np.float32)
  logits[..., -1] = 10.0
  boxes = np.full((b, queries, 4), 0.5, np.float32)
  for i, j in zip(*np.nonzero(batch['box_mask'])):
    logits[i, j, -1] = 0.0
    logits[i, j, batch['labels'][i, j]] = 10.0
    boxes[i, j] = batch['boxes'][i, j]
  return {'logits': logits, 'boxes': boxes, 'image_id': batch['image_id'],
          'orig_size': batch['orig_size'], '_mask': batch['_mask']}


# The fixture without its zero-width and (partly) outside boxes, which no prediction can match
# in the official AP; the crowd region, the negative image and the odd ids stay.
CLEAN = tuple(a for a in COCO_FIXTURE_ANNOTATIONS if a['id'] not in (5, 6, 7))


@pytest.mark.parametrize('layout', ['coco_ids', 'contiguous'])
def test_perfect_predictions_on_the_folder_score_one(tmp_path, layout):
  config = write_coco_folder(tmp_path, annotations=CLEAN)
  config.category_layout = layout
  ground_truth, label_to_category = coco_eval.ground_truth(config, 'val')
  assert len(ground_truth['annotations']) == len(CLEAN)  # The file as it is, crowd included.
  evaluator = coco_eval.CocoEvaluator(ground_truth, label_to_category)
  for batch in _eval_batches(config, 'val', 2):  # Ids 7, 42, 1000 and one padding slot.
    evaluator.update(_perfect_outputs(batch, len(label_to_category)))
  result = evaluator.result()
  assert evaluator.image_ids == {7, 42, 1000}
  assert set(result) == set(coco_eval.METRICS)
  for name in ('AP', 'AP50', 'AP75', 'AP_small'):
    assert result[name] == pytest.approx(1.0, abs=1e-12)
  assert result['AP_medium'] == result['AP_large'] == -1.0  # No such boxes in the fixture.
  # The same predictions with the wrong layout's categories miss everything.
  wrong = coco_eval.CocoEvaluator(ground_truth, list(range(100, 100 + len(label_to_category))))
  for batch in _eval_batches(config, 'val', 2):
    wrong.update(_perfect_outputs(batch, len(label_to_category)))
  assert wrong.result()['AP'] == 0.0


def test_perfect_predictions_score_one():
  config = ml_collections.ConfigDict(dict(
      source='shapes', shapes=dict(num_train=4, num_eval=30, image_size=48, max_objects=2,
                                   min_object_size=8, max_object_size=40),
      max_boxes=3, augment='none', eval_scale=48, max_size=64, pad_size=(64, 64),
      category_layout='coco_ids'))
  ground_truth, label_to_category = coco_eval.ground_truth(config, 'validation')
  assert [c['id'] for c in ground_truth['categories']] == [1, 2, 3]
  evaluator = coco_eval.CocoEvaluator(ground_truth, label_to_category)
  for batch in _eval_batches(config, 'validation', 8):
    evaluator.update(_perfect_outputs(batch, len(label_to_category)))
  result = evaluator.result()
  for name in ('AP', 'AP50', 'AP75'):
    assert result[name] == pytest.approx(1.0)
  assert len(evaluator.image_ids) == 30


def _reference_results(outputs, label_to_category):
  """A hand-built pycocotools results list: the original PostProcess, one dict per query."""
  results = []
  for logits, boxes, image_id, (h, w), real in zip(outputs['logits'], outputs['boxes'],
                                                    outputs['image_id'], outputs['orig_size'],
                                                    outputs['_mask']):
    if not real:
      continue
    prob = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for p, (cx, cy, bw, bh) in zip(prob, boxes):
      label = int(np.argmax(p[:-1]))
      results.append({'image_id': int(image_id), 'category_id': label_to_category[label],
                      'bbox': [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h],
                      'score': float(p[label])})
  return results


def _pycocotools_stats(ground_truth, results, image_ids):
  with contextlib.redirect_stdout(io.StringIO()):
    gt = coco.COCO()
    gt.dataset = copy.deepcopy(ground_truth)
    gt.createIndex()
    evaluator = cocoeval.COCOeval(gt, gt.loadRes(results), iouType='bbox')
    evaluator.params.imgIds = sorted(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return evaluator.stats[:6]


def _noisy_outputs(batch, num_classes, rng, queries=10):
  """Near-perfect predictions with noise: AP strictly between 0 and 1."""
  outputs = _perfect_outputs(batch, num_classes, queries)
  outputs['logits'] = outputs['logits'] + rng.normal(0, 3, outputs['logits'].shape)
  outputs['boxes'] = np.clip(outputs['boxes'] + rng.normal(0, 0.03, outputs['boxes'].shape),
                             0.01, 1)
  return outputs


def test_evaluator_equals_pycocotools_and_accumulates_over_batches(tmp_path, capsys):
  config = write_coco_folder(tmp_path)
  config.category_layout = 'contiguous'
  ground_truth, label_to_category = coco_eval.ground_truth(config, 'val')
  rng = np.random.default_rng(0)
  (batch,) = _eval_batches(config, 'val', 4)
  outputs = _noisy_outputs(batch, len(label_to_category), rng)
  expected = _pycocotools_stats(ground_truth, _reference_results(outputs, label_to_category),
                                [7, 42, 1000])
  assert 0.05 < expected[0] < 0.95

  whole = coco_eval.CocoEvaluator(ground_truth, label_to_category)
  whole.update(outputs)
  np.testing.assert_allclose(list(whole.result().values()), expected, rtol=1e-12)
  # The same examples one at a time, with padding examples full of garbage between them.
  split = coco_eval.CocoEvaluator(ground_truth, label_to_category)
  for i in range(4):
    one = {k: v[i:i + 1] for k, v in outputs.items()}
    split.update(one)
    garbage = {k: rng.uniform(0, 50, v.shape).astype(v.dtype) for k, v in one.items()}
    split.update(dict(garbage, image_id=one['image_id'], _mask=np.zeros(1, np.int32)))
  np.testing.assert_allclose(list(split.result().values()), expected, rtol=1e-12)
  assert 'Average Precision' not in capsys.readouterr().out  # pycocotools' table is logged.


def test_postprocess_matches_hugging_face():
  from transformers.models.detr.image_processing_detr import DetrImageProcessor
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 2, (3, 7, 5)).astype(np.float32)
  boxes = rng.uniform(0.1, 0.6, (3, 7, 4)).astype(np.float32)
  sizes = np.array([[480, 640], [333, 500], [100, 90]])
  scores, labels, xyxy = coco_eval.postprocess(logits, boxes, sizes)
  outputs = types.SimpleNamespace(logits=torch.tensor(logits), pred_boxes=torch.tensor(boxes))
  expected = DetrImageProcessor().post_process_object_detection(
      outputs, threshold=-1.0, target_sizes=torch.tensor(sizes))
  for i, reference in enumerate(expected):
    np.testing.assert_allclose(scores[i], reference['scores'].numpy(), rtol=1e-5)
    np.testing.assert_array_equal(labels[i], reference['labels'].numpy())
    np.testing.assert_allclose(xyxy[i], reference['boxes'].numpy(), rtol=1e-5, atol=1e-3)


def test_no_detections_and_no_ground_truth_do_not_crash(tmp_path):
  config = write_coco_folder(tmp_path)
  ground_truth, label_to_category = coco_eval.ground_truth(config, 'val')
  (batch,) = _eval_batches(config, 'val', 4)
  outputs = _perfect_outputs(batch, len(label_to_category))
  # Images seen but no detections (zero queries): the ground truth is all missed.
  evaluator = coco_eval.CocoEvaluator(ground_truth, label_to_category)
  evaluator.update(dict(outputs, logits=outputs['logits'][:, :0], boxes=outputs['boxes'][:, :0]))
  assert evaluator.result()['AP'] == 0.0
  # Only padding examples: nothing evaluated, pycocotools' -1 (undefined).
  evaluator = coco_eval.CocoEvaluator(ground_truth, label_to_category)
  evaluator.update(dict(outputs, _mask=np.zeros(4, np.int32)))
  assert evaluator.result() == {name: -1.0 for name in coco_eval.METRICS}
  # No ground-truth boxes: pycocotools' -1 (undefined), no exception.
  empty = dict(ground_truth, annotations=[])
  evaluator = coco_eval.CocoEvaluator(empty, label_to_category)
  evaluator.update(outputs)
  assert evaluator.result() == {name: -1.0 for name in coco_eval.METRICS}
  # An image the ground truth does not know is an error that says so.
  evaluator = coco_eval.CocoEvaluator(ground_truth, label_to_category)
  with pytest.raises(Exception, match=r'eval images \[5\] are not in the ground truth'):
    evaluator.update(dict(outputs, image_id=np.array([5, 7, 42, 1000])))


def test_tfds_ground_truth_keeps_crowd_and_scores_perfect_predictions():
  config = ml_collections.ConfigDict(dict(
      source='tfds', dataset='coco/2017', category_layout='contiguous', max_boxes=3,
      augment='none', eval_scale=32, max_size=48, pad_size=(48, 48)))
  examples = mock_coco_examples()
  objects = examples[0]['objects']
  examples[0]['objects'] = {k: np.delete(v, 2, 0) for k, v in objects.items()}  # No 0-area box.
  with mock_coco(examples):
    ground_truth, label_to_category = coco_eval.ground_truth(config, 'validation')
    batches = _eval_batches(config, 'validation', 2)
  assert [image['id'] for image in ground_truth['images']] == [139, 285]
  assert (ground_truth['images'][0]['height'], ground_truth['images'][0]['width']) == (20, 30)
  first, crowd = ground_truth['annotations'][:2]
  assert first['category_id'] == 1 and first['bbox'] == pytest.approx([6, 2, 12, 8])
  assert crowd['iscrowd'] == 1 and crowd['category_id'] == 13 and crowd['area'] == 600
  evaluator = coco_eval.CocoEvaluator(ground_truth, label_to_category)
  for batch in batches:
    evaluator.update(_perfect_outputs(batch, len(label_to_category)))
  result = evaluator.result()
  assert result['AP'] == pytest.approx(1.0)
