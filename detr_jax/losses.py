"""DETR's set loss (detr models/detr.py: SetCriterion) on matched queries, for all decoder layers.

Per decoder layer: cross-entropy over every query (target: the matched label, otherwise
no-object, which weighs `eos_coef`), plus L1 and 1 - GIoU over matched pairs, both divided by the
number of real targets. Everything is over the GLOBAL batch, which the loop jits as one program:

- Box terms: the original divides each GPU's sum by the all-reduced count / world size, then DDP
  averages gradients over GPUs, so it optimises sum over the global batch / global count: ours.
- Cross-entropy: the original takes the weighted mean sum(w * nll) / sum(w) over each GPU's own
  queries and DDP averages those means; we take one weighted mean over the global batch. Per
  image sum(w) = (queries - matched) * eos_coef + matched, so the two are equal when every GPU
  holds as many targets; otherwise each GPU's queries weigh here in proportion to its sum(w)
  rather than equally (a GPU with more targets counts a little more).

With gradient accumulation each micro-batch divides by the global batch's counts
(`loss_normalizers`), so that the micro-batches' losses, gradients and metrics sum to the
global batch's.
"""

import jax
import jax.numpy as jnp

from detr_jax import box_ops


def _final(x):
  return x[-1]


def loss_normalizers(target_mask, num_queries: int, eos_coef: float) -> dict[str, jax.Array]:
  """The counts `set_loss` divides by, over a (global) batch of targets `target_mask` [B, T]:
  images, real targets, and the cross-entropy's total weight. Every real target is matched
  (`hungarian_match` matches all when T <= Q), so as many queries weigh 1, the rest eos_coef."""
  images = target_mask.shape[0]
  boxes = target_mask.astype(bool).sum().astype(jnp.float32)
  return {'examples': jnp.float32(images), 'boxes': boxes,
          'class_weights': eos_coef * (images * num_queries - boxes) + boxes}


def sigmoid_focal_loss(logits, targets, alpha: float = 0.25, gamma: float = 2.):
  """RetinaNet's focal loss per element (Deformable DETR's sigmoid_focal_loss before its
  reduction): BCE(logits, targets) (1 - p_t)^gamma, times alpha_t = alpha on positives and
  1 - alpha on negatives."""
  prob = jax.nn.sigmoid(logits)
  bce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  p_t = prob * targets + (1 - prob) * (1 - targets)
  return (alpha * targets + (1 - alpha) * (1 - targets)) * bce * (1 - p_t)**gamma


def set_loss(logits, pred_boxes, labels, target_boxes, target_mask, target_query, *,
             eos_coef=0.1, class_weight=1., bbox_weight=5., giou_weight=2., normalizers=None,
             focal_alpha=None, focal_gamma=2.):
  """The original SetCriterion's weighted total over decoder layers, and its logged metrics.

  Args:
    logits: [L, B, Q, C] class logits per decoder layer; the last class is no-object (or, with
      `focal_alpha`, C sigmoid classes).
    pred_boxes: [L, B, Q, 4] normalised (cx, cy, w, h).
    labels: [B, T] int class of each target slot.
    target_boxes: [B, T, 4] normalised (cx, cy, w, h).
    target_mask: [B, T], nonzero on real targets (padding may sit in any slot).
    target_query: [L, B, T] the query matched to each slot (`hungarian_match`), -1 if none.
    eos_coef: the no-object class's weight in the cross-entropy.
    class_weight, bbox_weight, giou_weight: weights of the three terms (1, 5, 2).
    normalizers: `loss_normalizers` of the global batch when this is a micro-batch of it;
      default: this batch's own.
    focal_alpha, focal_gamma: sigmoid classes (Deformable DETR: 0.25, 2): the class term is
      the focal loss summed over every (query, class), targets one-hot on the matched label
      (unmatched queries all zero), divided by the number of real targets; eos_coef unused.

  Returns:
    (total, metrics), both this batch's shares of the global batch's values: total = sum over
    layers of class_weight * CE + bbox_weight * L1 + giou_weight * (1 - GIoU); metrics
    (scalars): loss_ce, loss_bbox, loss_giou of the final layer, unweighted; class_error (100 -
    top-1 accuracy in % over its matched queries, 100 when there are none, as the original);
    cardinality_error (mean over images of |#queries not predicting no-object - #targets|;
    with sigmoid classes, of queries whose best score exceeds 0.5, as HF's).
  """
  logits = logits.astype(jnp.float32)
  pred_boxes = pred_boxes.astype(jnp.float32)
  num_queries, num_logits = logits.shape[-2:]
  no_object = num_logits if focal_alpha is not None else num_logits - 1
  if normalizers is None:
    normalizers = loss_normalizers(target_mask, num_queries, eos_coef)
  target_mask = target_mask.astype(bool)
  matched_slot = target_mask & (target_query >= 0)  # [L, B, T]

  # The class each query is trained towards: its target's label, or no-object.
  pairs = (target_query[..., None, :] == jnp.arange(num_queries)[:, None]) & \
      matched_slot[..., None, :]  # [L, B, Q, T]
  is_matched = pairs.any(-1)
  target_classes = jnp.where(is_matched, jnp.sum(jnp.where(pairs, labels[:, None, :], 0), -1),
                             no_object)
  num_boxes = jnp.maximum(normalizers['boxes'], 1)
  if focal_alpha is not None:  # No-object is one past the classes: its one-hot row is zeros.
    focal = sigmoid_focal_loss(logits, jax.nn.one_hot(target_classes, num_logits), focal_alpha,
                               focal_gamma)
    loss_ce = focal.sum((1, 2, 3)) / num_boxes
  else:
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), target_classes[..., None], axis=-1,
                               mode='clip')[..., 0]
    class_weights = jnp.where(target_classes == no_object, eos_coef, 1.)
    loss_ce = (class_weights * nll).sum((1, 2)) / normalizers['class_weights']

  # Box terms on matched pairs. Padded slots get a harmless box so that nothing in them (zeros,
  # NaN) reaches the gradient through the masked-out branch.
  placeholder = jnp.array([0.5, 0.5, 1., 1.], jnp.float32)
  target_boxes = jnp.where(target_mask[..., None], target_boxes.astype(jnp.float32), placeholder)
  matched_boxes = jnp.take_along_axis(pred_boxes, jnp.maximum(target_query, 0)[..., None], axis=-2)
  l1 = jnp.abs(matched_boxes - target_boxes).sum(-1)
  giou = box_ops.generalized_box_iou(box_ops.cxcywh_to_xyxy(matched_boxes),
                                     box_ops.cxcywh_to_xyxy(target_boxes))
  loss_bbox = jnp.where(matched_slot, l1, 0.).sum((1, 2)) / num_boxes
  loss_giou = jnp.where(matched_slot, 1 - giou, 0.).sum((1, 2)) / num_boxes

  total = jnp.sum(class_weight * loss_ce + bbox_weight * loss_bbox + giou_weight * loss_giou)

  # Logged only (the original computes them without gradient, on the final layer).
  predicted = jax.lax.stop_gradient(_final(logits)).argmax(-1)  # [B, Q]
  final_matched = _final(is_matched)
  correct = jnp.sum((predicted == _final(target_classes)) & final_matched)
  accuracy = 100. * correct / num_boxes  # 0 when nothing is matched.
  share = target_mask.shape[0] / normalizers['examples']  # Of the global batch's images.
  if focal_alpha is not None:
    predicting = jax.lax.stop_gradient(_final(logits)).max(-1) > 0  # Best score > 0.5.
  else:
    predicting = predicted != no_object
  cardinality = jnp.sum(predicting, -1) - target_mask.sum(-1)
  metrics = {
      'loss_ce': _final(loss_ce),
      'loss_bbox': _final(loss_bbox),
      'loss_giou': _final(loss_giou),
      'class_error': 100. * share - accuracy,  # Sums to 100 - accuracy over micro-batches.
      'cardinality_error': jnp.abs(cardinality).sum() / normalizers['examples'],
  }
  return total, metrics
