"""Deformable DETR's matching and loss: the focal-cost Hungarian matcher against the original's
(written in torch + scipy, batch-flattened), the set loss against HF's
DeformableDetrForObjectDetectionLoss on the same outputs and targets (all decoder layers, each
re-matched), and the top-100 post-processing against HF's."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from scipy import optimize
from transformers import DeformableDetrConfig
from transformers.loss.loss_deformable_detr import DeformableDetrForObjectDetectionLoss
from transformers.models.deformable_detr import DeformableDetrImageProcessor

from detr_jax import coco_eval, losses, matcher

LAYERS, BATCH, QUERIES, SLOTS, CLASSES = 3, 4, 12, 5, 7  # Sigmoid classes: no no-object.
COSTS = dict(class_weight=2., bbox_weight=5., giou_weight=2.)  # The original's set_cost_*.
FOCAL = dict(focal_alpha=0.25, focal_gamma=2.)


def _case(seed):
  rng = np.random.default_rng(seed)
  mask = rng.random((BATCH, SLOTS)) < 0.6
  mask[0], mask[1] = True, False  # A full image and an empty one; padding in any slot.
  boxes = lambda *shape: np.concatenate([rng.uniform(0.2, 0.8, shape + (2,)),
                                         rng.uniform(0.05, 0.5, shape + (2,))], -1)
  return {
      'logits': (rng.normal(size=(LAYERS, BATCH, QUERIES, CLASSES)) * 2 - 2).astype(np.float32),
      'boxes': boxes(LAYERS, BATCH, QUERIES).astype(np.float32),
      'labels': rng.integers(0, CLASSES, (BATCH, SLOTS)).astype(np.int32),
      'target_boxes': boxes(BATCH, SLOTS).astype(np.float32),
      'target_mask': mask,
  }


def _targets(case):
  mask = case['target_mask']
  return [{'class_labels': torch.tensor(case['labels'][b][mask[b]], dtype=torch.int64),
           'boxes': torch.tensor(case['target_boxes'][b][mask[b]])} for b in range(BATCH)]


def _original_matcher(logits, boxes, targets):
  """Deformable-DETR models/matcher.py HungarianMatcher (focal class cost), on one layer."""
  out_prob = torch.tensor(logits).flatten(0, 1).sigmoid()
  out_bbox = torch.tensor(boxes).flatten(0, 1)
  tgt_ids = torch.cat([t['class_labels'] for t in targets])
  tgt_bbox = torch.cat([t['boxes'] for t in targets])
  alpha, gamma = 0.25, 2.0
  neg_cost_class = (1 - alpha) * (out_prob ** gamma) * (-(1 - out_prob + 1e-8).log())
  pos_cost_class = alpha * ((1 - out_prob) ** gamma) * (-(out_prob + 1e-8).log())
  cost_class = pos_cost_class[:, tgt_ids] - neg_cost_class[:, tgt_ids]
  cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
  xyxy = lambda b: torchvision.ops.box_convert(b, 'cxcywh', 'xyxy')
  cost_giou = -torchvision.ops.generalized_box_iou(xyxy(out_bbox), xyxy(tgt_bbox))
  cost = 5 * cost_bbox + 2 * cost_class + 2 * cost_giou
  cost = cost.view(BATCH, QUERIES, -1)
  sizes = [len(t['boxes']) for t in targets]
  return [optimize.linear_sum_assignment(c[i]) for i, c in enumerate(cost.split(sizes, -1))]


def _our_matching(case):
  per_layer = lambda x: jnp.broadcast_to(x, (LAYERS,) + x.shape)
  cost = matcher.matching_cost(case['logits'], case['boxes'], per_layer(case['labels']),
                               per_layer(case['target_boxes']), per_layer(case['target_mask']),
                               **COSTS, **FOCAL)
  return np.asarray(jax.jit(matcher.hungarian_match)(cost, case['target_mask']))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_matching_is_the_originals(seed):
  case = _case(seed)
  target_query = _our_matching(case)
  targets = _targets(case)
  for layer in range(LAYERS):
    expected = _original_matcher(case['logits'][layer], case['boxes'][layer], targets)
    for b, (queries, slots) in enumerate(expected):
      real_slots = np.flatnonzero(case['target_mask'][b])
      np.testing.assert_array_equal(target_query[layer, b, real_slots[slots]], queries)
      assert (target_query[layer, b, ~case['target_mask'][b]] == -1).all()


def test_focal_cost_bound_covers_every_finite_cost():
  bound = matcher.cost_bound(**COSTS, focal_alpha=FOCAL['focal_alpha'])
  logits = jnp.array([[[-40., 40.]]])  # Certain of the wrong class: the largest class cost.
  worst = matcher.matching_cost(logits, jnp.array([[[0.1, 0.1, 0.2, 0.2]]]), jnp.array([[0]]),
                                jnp.array([[[0.9, 0.9, 0.2, 0.2]]]), jnp.array([[True]]),
                                **COSTS, **FOCAL)
  assert float(worst.max()) < bound


def _hf_loss(case):
  config = DeformableDetrConfig(num_labels=CLASSES, decoder_layers=LAYERS, auxiliary_loss=True,
                                class_cost=2, bbox_cost=5, giou_cost=2)
  logits = torch.tensor(case['logits'], requires_grad=True)
  boxes = torch.tensor(case['boxes'], requires_grad=True)
  _, loss_dict, _ = DeformableDetrForObjectDetectionLoss(
      logits[-1], _targets(case), 'cpu', boxes[-1], config, logits, boxes)
  # The original's weights (HF weighs loss_ce 1): ce 2, L1 5, GIoU 2 on every layer.
  weights = {'loss_ce': 2., 'loss_bbox': 5., 'loss_giou': 2.}
  total = sum(weights[k.rsplit('_', 1)[0] if k[-1].isdigit() else k] * v
              for k, v in loss_dict.items() if k.rstrip('_0123456789') in weights)
  total.backward()
  return (total.item(), {k: v.item() for k, v in loss_dict.items()},
          (logits.grad.numpy(), boxes.grad.numpy()))


def test_set_loss_equals_hf_on_every_layer():
  case = _case(3)
  target_query = _our_matching(case)

  def total(logits, boxes):
    return losses.set_loss(logits, boxes, case['labels'], case['target_boxes'],
                           case['target_mask'], target_query, **COSTS, **FOCAL)
  (value, metrics), grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(
      case['logits'], case['boxes'])
  expected_total, expected, expected_grads = _hf_loss(case)
  # float32 sums of B * Q * C focal terms.
  np.testing.assert_allclose(float(value), expected_total, rtol=1e-5)
  for name in ('loss_ce', 'loss_bbox', 'loss_giou', 'cardinality_error'):
    np.testing.assert_allclose(float(metrics[name]), expected[name], rtol=1e-5, err_msg=name)
  for got, want in zip(grads, expected_grads):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-7)
  assert expected['loss_ce_0'] != expected['loss_ce']  # Aux layers count, each re-matched.


def test_top_100_postprocessing_equals_hf():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(2, 30, 7)).astype(np.float32)
  boxes = rng.uniform(0.1, 0.5, (2, 30, 4)).astype(np.float32)
  sizes = np.array([[480, 640], [300, 200]])
  scores, labels, xyxy = coco_eval.sigmoid_postprocess(logits, boxes, sizes)
  expected = DeformableDetrImageProcessor().post_process_object_detection(
      types.SimpleNamespace(logits=torch.tensor(logits), pred_boxes=torch.tensor(boxes)),
      threshold=0.0, target_sizes=torch.tensor(sizes), top_k=100)
  for i, result in enumerate(expected):
    np.testing.assert_allclose(scores[i], result['scores'].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(labels[i], result['labels'].numpy())
    np.testing.assert_allclose(xyxy[i], result['boxes'].numpy(), rtol=1e-5)
  assert scores.shape == (2, 100)
