"""PQ / SQ / RQ against torchmetrics' PanopticQuality on the same segmentations, and
panopticapi's rules where torchmetrics' differ, on hand-made cases; the evaluator's PQ, SQ, RQ
(all, things, stuff) and mask AP against torchmetrics' PanopticQuality and MeanAveragePrecision
on the same predictions.

torchmetrics agrees with panopticapi when the prediction has no VOID pixels and the ground
truth no crowd region: it has no crowd handling (a crowd segment is an ordinary one), and it
also leaves the prediction's VOID pixels out of a ground-truth segment's area and ignores a
missed segment that is mostly predicted VOID (panopticapi counts both in full).
"""

import numpy as np
import pytest
import torch
from torchmetrics.detection import PanopticQuality
from torchmetrics.functional.detection._panoptic_quality_common import (
    _panoptic_quality_compute)

from detr_jax import panoptic_postprocess, panoptic_quality
from vit_jax.framework.errors import UserError

THINGS, STUFF = (0, 1, 2), (3, 4)
IS_THING = (True, True, True, False, False)


def _scene(rng, height=24, width=32, void=True):
  """A segmentation: stuff bands (3 on top, 4 below), 2-4 thing rectangles, a VOID strip.
  Returns ids [H, W] (0 = VOID) and the labels of segments 1..K."""
  ids = np.where(np.arange(height)[:, None] < rng.integers(6, 18), 1, 2) * np.ones(
      (1, width), np.int64)
  labels = [3, 4]
  for _ in range(rng.integers(2, 5)):
    y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
    h, w = rng.integers(3, 10), rng.integers(3, 12)
    labels.append(int(rng.integers(3)))
    ids[y:y + h, x:x + w] = len(labels)
  if void:
    ids[:, rng.integers(width):][:, :2] = 0
  present = [k for k in range(1, len(labels) + 1) if (ids == k).any()]  # Keep ids 1..K dense.
  remap = np.zeros(len(labels) + 1, np.int64)
  remap[present] = np.arange(1, len(present) + 1)
  return remap[ids], [labels[k - 1] for k in present]


def _prediction(rng, gt_ids, gt_labels):
  """The ground truth shifted by up to 2 pixels, a class sometimes wrong, VOID filled from
  stuff, a spurious rectangle: a mix of TP, FP and FN."""
  ids = np.roll(gt_ids, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
  labels = [l if rng.random() > 0.2 or l in STUFF else int(rng.integers(3)) for l in gt_labels]
  ids[ids == 0] = 1
  y, x = rng.integers(0, 20), rng.integers(0, 28)
  labels.append(int(rng.integers(3)))
  ids[y:y + 4, x:x + 4] = len(labels)
  return ids, labels


def _torchmetrics_input(ids, labels):
  """[H, W, 2] (category, instance); VOID as category 99 (unknown: torchmetrics' void)."""
  category = np.concatenate([[99], labels])[ids]
  return torch.from_numpy(np.stack([category, ids], -1))


def test_counts_and_averages_equal_torchmetrics():
  rng = np.random.default_rng(0)
  reference = PanopticQuality(things=set(THINGS), stuffs=set(STUFF),
                              allow_unknown_preds_category=True)
  ours = panoptic_quality.Counts.zeros(5)
  for _ in range(12):
    gt_ids, gt_labels = _scene(rng)
    pred_ids, pred_labels = _prediction(rng, gt_ids, gt_labels)
    ours += panoptic_quality.image_counts(pred_ids, pred_labels, gt_ids, gt_labels,
                                          np.zeros(len(gt_labels)), 5)
    reference.update(_torchmetrics_input(pred_ids, pred_labels)[None],
                     _torchmetrics_input(gt_ids, gt_labels)[None])
  # torchmetrics orders classes as things then stuff, each sorted: here our label order.
  np.testing.assert_array_equal(ours.tp, reference.true_positives.numpy())
  np.testing.assert_array_equal(ours.fp, reference.false_positives.numpy())
  np.testing.assert_array_equal(ours.fn, reference.false_negatives.numpy())
  np.testing.assert_allclose(ours.iou, reference.iou_sum.numpy(), rtol=1e-6)
  assert ours.tp.sum() > 10 and ours.fp.sum() > 5 and ours.fn.sum() > 5  # All rules at work.
  summary = panoptic_quality.summarize(ours, IS_THING)
  states = (reference.iou_sum, reference.true_positives, reference.false_positives,
            reference.false_negatives)
  for suffix, classes in (('', slice(None)), ('_th', slice(0, 3)), ('_st', slice(3, 5))):
    pq, sq, rq = _panoptic_quality_compute(*(s[classes] for s in states))[3:]
    np.testing.assert_allclose([summary['PQ' + suffix], summary['SQ' + suffix],
                                summary['RQ' + suffix]], [pq, sq, rq], rtol=1e-6)


def _one_image(pred_ids, pred_labels, gt_ids, gt_labels, gt_crowd=None):
  counts = panoptic_quality.image_counts(
      np.array(pred_ids), pred_labels, np.array(gt_ids), gt_labels,
      gt_crowd if gt_crowd is not None else np.zeros(len(gt_labels)), 5)
  return counts


def test_prediction_void_counts_in_the_union_and_a_missed_segment_is_a_false_negative():
  # Ground truth: A (class 0) on 10 pixels, B (class 1) on 10. The prediction covers 6 of A's
  # pixels and leaves the other 4 and all of B VOID: IoU 6 / 10 (torchmetrics: 6 / 6), B a FN
  # (torchmetrics ignores it, being mostly predicted VOID).
  gt = [[1] * 10 + [2] * 10]
  pred = [[1] * 6 + [0] * 14]
  counts = _one_image(pred, [0], gt, [0, 1])
  assert (counts.tp[:2].tolist(), counts.fn[:2].tolist(), counts.fp.sum()) == ([1, 0], [0, 1], 0)
  assert counts.iou[0] == pytest.approx(0.6)


def test_iou_of_exactly_one_half_is_no_match():
  # A: 4 pixels, then VOID. P1 covers 2 of A's and 2 VOID pixels: IoU 2 / (4 + 4 - 2 - 2) =
  # 0.5 is no match, and half VOID is not more than half: a FP. P2 lies on VOID only.
  gt = [[1] * 4 + [0] * 4]
  pred = [[0, 0, 1, 1, 1, 1, 2, 2]]
  counts = _one_image(pred, [2, 2], gt, [2])
  assert (counts.tp[2], counts.fp[2], counts.fn[2]) == (0, 1, 1)
  gt = [[1, 1, 1, 1, 2, 2, 2, 2]]  # P1 on A: IoU 2 / 4, no match; P2 on B: 4 / 6, a match.
  pred = [[1, 1, 2, 2, 2, 2, 2, 2]]
  counts = _one_image(pred, [1, 0], gt, [1, 0])
  assert counts.tp[0] == 1 and counts.iou[0] == pytest.approx(4 / 6)
  assert (counts.tp[1], counts.fp[1], counts.fn[1]) == (0, 1, 1)


def test_crowd_regions_panopticapis_way():
  """GT: a class-0 crowd region (id 1, 12 pixels), a class-1 crowd (id 2, 4), VOID (4), a
  class-2 segment (id 3, 4). Predictions: P1 class 0, 14 pixels, 7 on its class's crowd and 3
  on VOID: ignored; P2 class 1, 6 pixels, 1 on the class-0 crowd, 4 on its own class's crowd, 1
  on VOID: ignored; P3 class 2, 4 pixels on the class-0 crowd: a FP (another class's crowd).
  Segment 3 lies under P1 (another class): a FN. Crowds are never FN or TP."""
  gt = [[1] * 12 + [2] * 4 + [0] * 4 + [3] * 4]
  pred = [[1] * 7 + [3] * 4 + [2] + [2] * 4 + [2] + [1] * 3 + [1] * 4]
  counts = _one_image(pred, [0, 1, 2], gt, [0, 1, 2], gt_crowd=np.array([1, 1, 0]))
  assert (counts.tp.tolist(), counts.fp.tolist(), counts.fn.tolist()) == (
      [0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0])
  # A crowd listed twice for one class: only the last one excuses predictions (panopticapi's
  # dict). P1 lies on the first of two class-0 crowds.
  gt = [[1] * 6 + [2] * 6]
  pred = [[1] * 6 + [0] * 6]
  counts = _one_image(pred, [0], gt, [0, 0], gt_crowd=np.array([1, 1]))
  assert (counts.fp[0], counts.fn[0]) == (1, 0)


def test_averages_are_over_classes_that_occur():
  counts = panoptic_quality.Counts(iou=np.array([1.6, 0., 0.9, 0., 0.]),
                                   tp=np.array([2, 0, 1, 0, 0]), fp=np.array([0, 1, 1, 0, 0]),
                                   fn=np.array([2, 0, 0, 0, 0]))
  summary = panoptic_quality.summarize(counts, IS_THING)
  # Class 0: PQ 1.6 / (2 + 0 + 1) , SQ 0.8; class 1: 0; class 2: 0.9 / 1.5 = 0.6; stuff none.
  assert summary['PQ'] == pytest.approx((1.6 / 3 + 0 + 0.6) / 3)
  assert summary['SQ'] == pytest.approx((0.8 + 0 + 0.9) / 3)
  assert summary['PQ_th'] == summary['PQ'] and summary['n_th'] == 3
  assert (summary['PQ_st'], summary['n_st']) == (0., 0)


def _eval_outputs(rng, sizes=((27, 37), (30, 22), (33, 41)), queries=10, canvas=(36, 44)):
  """PanopticEvaluator inputs for a batch on a padded canvas: ground-truth scenes; per query a
  class made confident (things and stuff of the scene, some no-object) and mask logits at
  stride 4 that follow a ground-truth segment, with noise."""
  batch = len(sizes)
  outputs = {'logits': np.zeros((batch, queries, 6), np.float32),
             'masks': np.zeros((batch, queries, canvas[0] // 4, canvas[1] // 4), np.float32),
             'size': np.array(sizes), 'orig_size': np.array([(h + 2, w + 1) for h, w in sizes]),
             'image_id': np.arange(batch) + 7, 'panoptic': np.zeros((batch,) + canvas, np.int64),
             'segment_labels': np.zeros((batch, 8), np.int64),
             'segment_crowd': np.zeros((batch, 8), np.int64),
             'segment_mask': np.zeros((batch, 8), np.int64), '_mask': np.ones(batch)}
  for i, (h, w) in enumerate(outputs['orig_size']):
    ids, labels = _scene(rng, h, w)
    outputs['panoptic'][i, :h, :w] = ids
    outputs['segment_labels'][i, :len(labels)] = labels
    outputs['segment_mask'][i, :len(labels)] = 1
    cells = np.ceil(np.array(sizes[i]) / 4).astype(int)
    rows = np.linspace(0, h - 1, cells[0]).astype(int)
    cols = np.linspace(0, w - 1, cells[1]).astype(int)
    for q in range(queries):
      k = q % (len(labels) + 1)  # Segment k + 1's query, or (k == len) a no-object one.
      outputs['logits'][i, q, labels[k] if k < len(labels) else 5] = 6. + 3 * rng.random()
      follows = ids[rows][:, cols] == k + 1
      outputs['masks'][i, q, :cells[0], :cells[1]] = 6 * follows - 3 + rng.normal(
          size=follows.shape)
  return outputs


def test_evaluator_sq_rq_things_stuff_equal_torchmetrics_on_its_post_processed_segments():
  outputs = _eval_outputs(np.random.default_rng(3))
  evaluator = panoptic_quality.PanopticEvaluator(IS_THING)
  evaluator.update(outputs)
  result = evaluator.result()
  reference = PanopticQuality(things=set(THINGS), stuffs=set(STUFF),
                              allow_unknown_preds_category=True)
  for i in range(3):
    h, w = outputs['orig_size'][i]
    pred_ids, segments = panoptic_postprocess.panoptic_segments(
        outputs['logits'][i], outputs['masks'][i], IS_THING, outputs['size'][i], (h, w))
    assert pred_ids.all()  # No VOID prediction: torchmetrics' rules are panopticapi's then.
    gt_labels = outputs['segment_labels'][i][outputs['segment_mask'][i] > 0]
    reference.update(_torchmetrics_input(pred_ids, [s['category_id'] for s in segments])[None],
                     _torchmetrics_input(outputs['panoptic'][i, :h, :w], gt_labels)[None])
  states = (reference.iou_sum, reference.true_positives, reference.false_positives,
            reference.false_negatives)
  assert reference.true_positives.sum() > 5 and reference.false_positives.sum() > 0
  for suffix, classes in (('', slice(None)), ('_th', slice(0, 3)), ('_st', slice(3, 5))):
    pq, sq, rq = _panoptic_quality_compute(*(s[classes] for s in states))[3:]
    np.testing.assert_allclose([result['PQ' + suffix], result['SQ' + suffix],
                                result['RQ' + suffix]], [pq, sq, rq], rtol=1e-6)


def test_mask_ap_equals_torchmetrics_on_the_originals_segm_masks():
  """mask AP against torchmetrics' MeanAveragePrecision(iou_type='segm') on the masks of the
  original's PostProcessSegm written in torch (bilinear to the processed size, sigmoid > 0.5,
  nearest to the original size), every query with its best real class and score."""
  from torchmetrics.detection import MeanAveragePrecision
  outputs = _eval_outputs(np.random.default_rng(4))
  evaluator = panoptic_quality.PanopticEvaluator(IS_THING)
  evaluator.update(outputs)
  ours = evaluator.result()
  reference = MeanAveragePrecision(iou_type='segm')
  for i in range(3):
    (h, w), (h0, w0) = outputs['size'][i], outputs['orig_size'][i]
    cells = -(-h // 4), -(-w // 4)
    masks = torch.from_numpy(outputs['masks'][i][None, :, :cells[0], :cells[1]])
    masks = torch.nn.functional.interpolate(masks, (h, w), mode='bilinear', align_corners=False)
    masks = torch.nn.functional.interpolate((masks.sigmoid() > 0.5).float(), (h0, w0),
                                            mode='nearest')[0].bool()
    scores, labels = torch.from_numpy(outputs['logits'][i]).softmax(-1)[:, :-1].max(-1)
    thing = labels < 3
    real = outputs['segment_mask'][i] > 0
    gt_labels = outputs['segment_labels'][i][real]
    gt_things = np.flatnonzero(gt_labels < 3)
    gt_masks = np.stack([outputs['panoptic'][i, :h0, :w0] == k + 1 for k in gt_things])
    reference.update([{'masks': masks[thing], 'scores': scores[thing], 'labels': labels[thing]}],
                     [{'masks': torch.from_numpy(gt_masks),
                       'labels': torch.from_numpy(gt_labels[gt_things])}])
  expected = reference.compute()
  assert 0.02 < ours['mask_AP'] < 0.95, ours  # Neither nothing nor everything found.
  for name, key in (('mask_AP', 'map'), ('mask_AP50', 'map_50'), ('mask_AP75', 'map_75'),
                    ('mask_AP_small', 'map_small'), ('mask_AP_medium', 'map_medium'),
                    ('mask_AP_large', 'map_large')):
    assert ours[name] == pytest.approx(float(expected[key]), abs=1e-6), name


def test_a_predicted_class_that_is_no_category_stops_the_evaluation():
  outputs = _eval_outputs(np.random.default_rng(5))
  evaluator = panoptic_quality.PanopticEvaluator(IS_THING[:4] + (None,))  # Label 4: none.
  with pytest.raises(UserError, match=r'^image 7: predicted segment \d+ has class 4, no '
                                      r'category of the ground truth'):
    evaluator.update(outputs)
