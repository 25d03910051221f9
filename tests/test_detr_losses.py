"""DETR set loss against the original SetCriterion's formulas written in torch (per image, on
compact target lists, as facebookresearch/detr computes them), values and gradients."""

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from detr_jax import losses

LAYERS, BATCH, QUERIES, SLOTS, CLASSES = 3, 5, 9, 4, 6  # CLASSES includes no-object.


def _case(seed, empty_images=(1,)):
  rng = np.random.default_rng(seed)
  mask = rng.random((BATCH, SLOTS)) < 0.6
  mask[0] = True
  mask[list(empty_images)] = False
  target_query = np.stack([np.stack([np.where(mask[b], rng.permutation(QUERIES)[:SLOTS], -1)
                                     for b in range(BATCH)]) for _ in range(LAYERS)])
  return {
      'logits': rng.normal(size=(LAYERS, BATCH, QUERIES, CLASSES)).astype(np.float32) * 2,
      'pred_boxes': np.concatenate([rng.uniform(0.2, 0.8, (LAYERS, BATCH, QUERIES, 2)),
                                    rng.uniform(0.05, 0.5, (LAYERS, BATCH, QUERIES, 2))],
                                   -1).astype(np.float32),
      'labels': rng.integers(0, CLASSES - 1, (BATCH, SLOTS)).astype(np.int32),
      'target_boxes': np.concatenate([rng.uniform(0.2, 0.8, (BATCH, SLOTS, 2)),
                                      rng.uniform(0.05, 0.5, (BATCH, SLOTS, 2))],
                                     -1).astype(np.float32),
      'target_mask': mask.astype(np.int32),
      'target_query': target_query.astype(np.int32),
  }


def _original_set_criterion(case, eos_coef=0.1, weights=(1., 5., 2.)):
  """SetCriterion.forward of detr models/detr.py on one process, in torch: targets as compact
  per-image lists, indices as (query, target) pairs, the final layer plus aux layers."""
  logits_all = torch.tensor(case['logits'], dtype=torch.float64, requires_grad=True)
  boxes_all = torch.tensor(case['pred_boxes'], dtype=torch.float64, requires_grad=True)
  mask = case['target_mask'].astype(bool)
  targets = [{'labels': torch.tensor(case['labels'][b][mask[b]], dtype=torch.int64),
              'boxes': torch.tensor(case['target_boxes'][b][mask[b]], dtype=torch.float64)}
             for b in range(BATCH)]
  num_classes = CLASSES - 1
  empty_weight = torch.ones(CLASSES, dtype=torch.float64)
  empty_weight[-1] = eos_coef
  num_boxes = max(float(sum(len(t['labels']) for t in targets)), 1.)
  xyxy = lambda b: torchvision.ops.box_convert(b, 'cxcywh', 'xyxy')

  total, layer_losses = 0., []
  for layer in range(LAYERS):
    src_logits, src_boxes = logits_all[layer], boxes_all[layer]
    indices = [(torch.tensor(case['target_query'][layer, b][mask[b]], dtype=torch.int64),
                torch.arange(int(mask[b].sum()))) for b in range(BATCH)]
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    target_classes_o = torch.cat([t['labels'][j] for t, (_, j) in zip(targets, indices)])
    target_classes = torch.full(src_logits.shape[:2], num_classes, dtype=torch.int64)
    target_classes[batch_idx, src_idx] = target_classes_o
    loss_ce = F.cross_entropy(src_logits.transpose(1, 2), target_classes, empty_weight)
    matched = src_boxes[batch_idx, src_idx]
    target_boxes = torch.cat([t['boxes'][i] for t, (_, i) in zip(targets, indices)])
    loss_bbox = F.l1_loss(matched, target_boxes, reduction='none').sum() / num_boxes
    loss_giou = (1 - torch.diag(torchvision.ops.generalized_box_iou(
        xyxy(matched), xyxy(target_boxes)))).sum() / num_boxes
    total = total + weights[0] * loss_ce + weights[1] * loss_bbox + weights[2] * loss_giou
    layer_losses.append((loss_ce, loss_bbox, loss_giou))
  total.backward()
  total = total.item()

  # Logged metrics of the final layer (util/misc.py accuracy: 0 % when nothing is matched).
  src = logits_all[-1][batch_idx, src_idx]
  accuracy = (100. * (src.argmax(-1) == target_classes_o).double().mean()
              if len(target_classes_o) else torch.zeros(()))
  card_pred = (logits_all[-1].argmax(-1) != CLASSES - 1).sum(1)
  tgt_lengths = torch.tensor([float(len(t['labels'])) for t in targets], dtype=torch.float64)
  metrics = {'loss_ce': layer_losses[-1][0], 'loss_bbox': layer_losses[-1][1],
             'loss_giou': layer_losses[-1][2], 'class_error': 100 - accuracy,
             'cardinality_error': F.l1_loss(card_pred.double(), tgt_lengths)}
  return (total, {k: float(v.detach()) for k, v in metrics.items()},
          (logits_all.grad.numpy(), boxes_all.grad.numpy()))


def _ours(case, **kwargs):
  def total(logits, pred_boxes):
    return losses.set_loss(logits, pred_boxes, case['labels'], case['target_boxes'],
                           case['target_mask'], case['target_query'], **kwargs)
  (value, metrics), grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(
      case['logits'], case['pred_boxes'])
  return float(value), {k: float(v) for k, v in metrics.items()}, grads


@pytest.mark.parametrize('seed, eos_coef, weights', [(0, 0.1, (1., 5., 2.)),
                                                     (1, 0.1, (1., 5., 2.)),
                                                     (2, 0.3, (2., 1., 4.))])
def test_loss_metrics_and_gradients_equal_the_original(seed, eos_coef, weights):
  case = _case(seed)
  # Make some final-layer predictions right, so that class_error is neither 0 nor 100.
  for b, t in zip(*np.nonzero(case['target_mask'][:3])):
    case['logits'][-1, b, case['target_query'][-1, b, t], case['labels'][b, t]] += 6.
  expected_total, expected_metrics, expected_grads = _original_set_criterion(
      case, eos_coef, weights)
  total, metrics, grads = _ours(case, eos_coef=eos_coef, class_weight=weights[0],
                                bbox_weight=weights[1], giou_weight=weights[2])
  np.testing.assert_allclose(total, expected_total, rtol=1e-5)
  assert metrics.keys() == expected_metrics.keys()
  for name, value in expected_metrics.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
  assert 0 < metrics['class_error'] < 100 and metrics['cardinality_error'] > 0
  for got, expected in zip(grads, expected_grads):
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-6)


def test_a_batch_without_targets():
  case = _case(3, empty_images=range(BATCH))
  expected_total, expected_metrics, expected_grads = _original_set_criterion(case)
  total, metrics, grads = _ours(case)
  np.testing.assert_allclose(total, expected_total, rtol=1e-5)
  assert metrics['loss_bbox'] == metrics['loss_giou'] == 0 and metrics['class_error'] == 100
  np.testing.assert_allclose(metrics['cardinality_error'], expected_metrics['cardinality_error'])
  for got, expected in zip(grads, expected_grads):
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-6)
  assert not np.asarray(grads[1]).any()  # No box is matched, so no box has a gradient.


def test_box_losses_vanish_when_predictions_equal_their_targets():
  case = _case(4)
  for layer, b, t in zip(*np.nonzero(case['target_query'] >= 0)):
    case['pred_boxes'][layer, b, case['target_query'][layer, b, t]] = case['target_boxes'][b, t]
  total, metrics, _ = _ours(case)
  assert metrics['loss_bbox'] == 0
  np.testing.assert_allclose(metrics['loss_giou'], 0, atol=1e-6)
  class_only, _, _ = _ours(case, bbox_weight=0., giou_weight=0.)
  np.testing.assert_allclose(total, class_only, atol=1e-5)
  assert class_only > 0


def test_gradients_are_finite_for_degenerate_boxes():
  case = _case(5)
  boxes = case['pred_boxes']
  boxes[..., 0, 2:] = 0.  # Points.
  boxes[..., 1, 2] = 0.  # Zero width.
  boxes[..., 2, 2:] = -0.1  # Inverted (negative width and height).
  boxes[..., 3, :] = case['target_boxes'][0, 3]  # Identical to its target.
  case['target_query'][:, 0, :4] = [0, 1, 2, 3]  # Image 0's real targets on those queries.
  case['target_boxes'][0, 0, 2:] = 0.  # A point target, matched to a point.
  case['target_boxes'][~case['target_mask'].astype(bool)] = np.nan  # Padding may hold anything.
  total, metrics, grads = _ours(case)
  assert np.isfinite(total) and all(np.isfinite(v) for v in metrics.values())
  for grad in grads:
    assert np.isfinite(np.asarray(grad)).all()
  assert np.abs(np.asarray(grads[1])[:, 0, :4]).sum() > 0
