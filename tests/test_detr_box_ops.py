"""Box ops against torchvision's, and finite values and gradients for degenerate boxes (where
the original asserts and crashes, detr issue #101)."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchvision

from detr_jax import box_ops


def _random_xyxy(rng, n):
  x0y0 = rng.uniform(0, 0.7, (n, 2))
  return np.concatenate([x0y0, x0y0 + rng.uniform(0.01, 0.5, (n, 2))], -1).astype(np.float32)


def test_conversion_matches_torchvision():
  cxcywh = torchvision.ops.box_convert(
      torch.from_numpy(_random_xyxy(np.random.default_rng(0), 50)), 'xyxy', 'cxcywh')
  expected = torchvision.ops.box_convert(cxcywh, 'cxcywh', 'xyxy').numpy()
  np.testing.assert_allclose(np.asarray(box_ops.cxcywh_to_xyxy(cxcywh.numpy())), expected,
                             atol=1e-6)


def test_area_and_giou_match_torchvision():
  rng = np.random.default_rng(1)
  a, b = _random_xyxy(rng, 30), _random_xyxy(rng, 20)
  ta, tb = torch.from_numpy(a), torch.from_numpy(b)
  np.testing.assert_allclose(np.asarray(box_ops.box_area(a)), torchvision.ops.box_area(ta).numpy(),
                             rtol=1e-6)
  giou = np.asarray(box_ops.pairwise_generalized_box_iou(a, b))
  expected = torchvision.ops.generalized_box_iou(ta, tb).numpy()
  np.testing.assert_allclose(giou, expected, atol=1e-6)
  assert (expected < 0).any() and (expected > 0.2).any()  # Disjoint and overlapping pairs.
  # Matched pairs: the diagonal, and leading axes broadcast.
  np.testing.assert_allclose(np.asarray(box_ops.generalized_box_iou(a[:20], b)),
                             np.diag(expected[:20]), atol=1e-6)
  batched = np.asarray(box_ops.pairwise_generalized_box_iou(a.reshape(3, 10, 4), b[None]))
  np.testing.assert_allclose(batched.reshape(30, 20), expected, atol=1e-6)


# Zero-area, zero-width, inverted and coincident boxes, against a normal box and each other.
DEGENERATE = np.array([[0.3, 0.3, 0.3, 0.3], [0.2, 0.1, 0.2, 0.6], [0.6, 0.6, 0.4, 0.4],
                       [0.5, 0.5, 0.5, 0.5], [0.1, 0.2, 0.6, 0.7]], np.float32)


def test_degenerate_boxes_give_finite_values_and_gradients():
  giou = np.asarray(box_ops.pairwise_generalized_box_iou(DEGENERATE, DEGENERATE))
  assert np.isfinite(giou).all()
  assert ((giou >= -1) & (giou <= 1)).all()
  # A point inside the normal box: IoU 0, and the enclosing box is the normal box itself.
  assert giou[0, 4] == 0 and giou[4, 4] == 1
  # Two distinct points: no overlap, enclosing box 0.2 x 0.2 with empty union -> GIoU -1.
  np.testing.assert_allclose(giou[0, 3], -1, atol=1e-6)
  assert box_ops.box_area(DEGENERATE[2]) == 0  # Inverted counts as empty, not negative.

  def total(boxes):
    return (box_ops.pairwise_generalized_box_iou(boxes, boxes).sum() +
            box_ops.generalized_box_iou(boxes, boxes[::-1]).sum())
  grads = np.asarray(jax.grad(total)(jnp.asarray(DEGENERATE)))
  assert np.isfinite(grads).all()
  assert np.abs(grads).sum() > 0
