"""Panoptic quality (Kirillov et al. 2019) as panopticapi's pq_compute counts it, and the
evaluator that scores DETR's panoptic eval outputs over a whole split.

Per image, from the predicted and ground-truth segment-id maps (0 = VOID: no segment):
- a prediction and a non-crowd ground-truth segment of the same class match when
  IoU > 0.5, with the prediction's VOID pixels left out of the union (a true positive, its IoU
  summed);
- an unmatched non-crowd ground-truth segment is a false negative;
- an unmatched prediction is a false positive unless more than half of it lies on VOID plus the
  crowd region of its own class (panopticapi keeps one crowd segment per class: the last listed).
Per class PQ = IoU sum / (TP + FP / 2 + FN / 2), SQ = IoU sum / TP, RQ = TP / (TP + FP / 2 +
FN / 2); PQ, SQ, RQ are their means over the classes (all, things, stuff) with TP + FP + FN > 0,
0 when no class has any (panopticapi divides by zero there).

Ground-truth areas are pixel counts of the map (panopticapi reads them from the json, where
COCO lists the same counts). A predicted segment of a class that is no category of the ground
truth stops the evaluation, as in panopticapi.

The evaluator also scores the masks of all queries before the panoptic argmax (detr_jax/mask_ap.py:
the paper's mask AP on the things classes).
"""

import dataclasses
from typing import Sequence

from absl import logging
import numpy as np

from detr_jax import mask_ap, panoptic_postprocess
from vit_jax.framework import task
from vit_jax.framework.errors import UserError

IOU_THRESHOLD = 0.5
IGNORED_SHARE = 0.5  # An unmatched prediction more than this much VOID or crowd is no FP.


@dataclasses.dataclass
class Counts:
  """Per-class sums: IoU of the matches, TP, FP, FN; each [num_classes]."""
  iou: np.ndarray
  tp: np.ndarray
  fp: np.ndarray
  fn: np.ndarray

  @classmethod
  def zeros(cls, num_classes: int) -> 'Counts':
    return cls(np.zeros(num_classes), *(np.zeros(num_classes, np.int64) for _ in range(3)))

  def __iadd__(self, other: 'Counts') -> 'Counts':
    for field in dataclasses.fields(self):
      getattr(self, field.name).__iadd__(getattr(other, field.name))
    return self


def image_counts(pred_ids: np.ndarray, pred_labels: Sequence[int], gt_ids: np.ndarray,
                 gt_labels: Sequence[int], gt_crowd: Sequence[int], num_classes: int,
                 gt_real: Sequence[int] | None = None) -> Counts:
  """One image's Counts.

  pred_ids, gt_ids: [H, W] int maps, 0 = VOID, k = the k-th segment (1-based) of
  pred_labels [P] / gt_labels [G] (class labels < num_classes); gt_crowd [G], 1 = crowd;
  gt_real [G] (default all), 0 = a padding slot, no segment. A prediction without pixels is no
  segment; a real ground-truth one still counts (a FN).
  """
  pred_labels, gt_labels = np.asarray(pred_labels, np.int64), np.asarray(gt_labels, np.int64)
  gt_real = np.ones(len(gt_labels), bool) if gt_real is None else np.asarray(gt_real, bool)
  gt_crowd = np.asarray(gt_crowd).astype(bool) & gt_real
  num_pred, num_gt = len(pred_labels), len(gt_labels)
  joint = gt_ids.astype(np.int64).ravel() * (num_pred + 1) + pred_ids.astype(np.int64).ravel()
  overlap = np.bincount(joint, minlength=(num_gt + 1) * (num_pred + 1)).reshape(
      num_gt + 1, num_pred + 1)  # [gt incl. VOID, pred incl. VOID] pixel counts.
  pred_area, gt_area = overlap.sum(0)[1:], overlap.sum(1)[1:]
  pred_on_void = overlap[0, 1:]
  inter = overlap[1:, 1:]
  union = pred_area[None] + gt_area[:, None] - inter - pred_on_void[None]
  iou = np.where(inter > 0, inter / np.maximum(union, 1), 0.)
  match = ((iou > IOU_THRESHOLD) & (gt_labels[:, None] == pred_labels[None]) &
           (gt_real & ~gt_crowd)[:, None])  # [G, P]; IoU > 0.5 pairs are disjoint.
  counts = Counts.zeros(num_classes)
  gt_matched, pred_matched = match.any(1), match.any(0)
  np.add.at(counts.tp, gt_labels[gt_matched], 1)
  np.add.at(counts.iou, gt_labels[gt_matched], iou[match])
  np.add.at(counts.fn, gt_labels[gt_real & ~gt_matched & ~gt_crowd], 1)
  crowd_of_class = {int(gt_labels[g]): g for g in np.flatnonzero(gt_crowd)}  # The last wins.
  ignored = pred_on_void.copy()
  for p in range(num_pred):
    crowd = crowd_of_class.get(int(pred_labels[p]))
    if crowd is not None:
      ignored[p] += inter[crowd, p]
  false_positive = (pred_area > 0) & ~pred_matched & ~(
      ignored > IGNORED_SHARE * np.maximum(pred_area, 1))
  np.add.at(counts.fp, pred_labels[false_positive], 1)
  return counts


def summarize(counts: Counts, is_thing: Sequence[bool | None]) -> dict[str, np.ndarray | float]:
  """panopticapi's pq_average for all categories, things (_th) and stuff (_st), and per class
  (pq, sq, rq arrays, 0 where a class has no TP, FP or FN). is_thing: per label, None for a
  label that is no category (left out, as panopticapi knows only the json's categories)."""
  known = np.array([t is not None for t in is_thing])
  is_thing = np.array([bool(t) for t in is_thing])
  denominator = counts.tp + 0.5 * counts.fp + 0.5 * counts.fn
  seen = (denominator > 0) & known
  per_class = {'pq': np.where(seen, counts.iou / np.maximum(denominator, 1e-12), 0.),
               'sq': np.where(counts.tp > 0, counts.iou / np.maximum(counts.tp, 1), 0.),
               'rq': np.where(seen, counts.tp / np.maximum(denominator, 1e-12), 0.)}
  out = dict(per_class)
  for suffix, chosen in (('', seen), ('_th', seen & is_thing), ('_st', seen & ~is_thing)):
    for name, values in per_class.items():
      out[name.upper() + suffix] = float(values[chosen].mean()) if chosen.any() else 0.
    out['n' + suffix] = int(chosen.sum())
  return out


class PanopticEvaluator(task.Evaluator):
  """PQ over every real example given to `update`: DETR's panoptic post-process of each
  prediction at its original size, against the ground truth there.

  `update` takes the task's eval outputs: logits [B, Q, C + 1], masks [B, Q, h, w] (stride 4 of
  the padded image), size [B, 2] (the processed image's (h, w)), orig_size [B, 2], image_id [B],
  and the ground truth at the original size: panoptic [B, H, W] (segment k at pixel = the k-th
  slot, 0 = VOID; padded beyond orig_size), segment_labels, segment_crowd and segment_mask
  [B, S] (1 = real slot); `_mask` [B]. Each image is post-processed as a batch of its own
  (`mask_rule`: panoptic_postprocess.MASK_RULES).
  """

  def __init__(self, is_thing: Sequence[bool | None], class_names: Sequence[str] | None = None,
               threshold: float = panoptic_postprocess.THRESHOLD, mask_rule: str = 'original'):
    self.is_thing = tuple(is_thing)  # None: a label that is no category.
    # The post-process merges stuff only; a label that is no category counts as a thing.
    self.merges = tuple(t is not False for t in is_thing)
    self.class_names = tuple(class_names or (str(i) for i in range(len(self.is_thing))))
    self.threshold, self.mask_rule = threshold, mask_rule
    self.counts = Counts.zeros(len(self.is_thing))
    self.images = 0
    self.mask_ap = mask_ap.MaskAP(self.is_thing)

  def update(self, outputs):
    for i in np.flatnonzero(np.asarray(outputs['_mask'])):
      height, width = (int(s) for s in outputs['orig_size'][i])
      image_id = int(np.asarray(outputs['image_id'])[i])
      pred_ids, segments = panoptic_postprocess.panoptic_segments(
          outputs['logits'][i], outputs['masks'][i], self.merges, outputs['size'][i],
          (height, width), self.threshold, mask_rule=self.mask_rule)
      unknown = [s for s in segments if self.is_thing[s['category_id']] is None]
      if unknown:
        raise UserError(f'image {image_id}: predicted segment {unknown[0]["id"]} has class '
                        f'{unknown[0]["category_id"]}, no category of the ground truth (as '
                        f'panopticapi, PQ stops here): evaluate a model trained on these classes')
      gt_ids = np.asarray(outputs['panoptic'][i])[:height, :width]
      truth = (outputs['segment_labels'][i], outputs['segment_crowd'][i],
               outputs['segment_mask'][i])
      self.counts += image_counts(pred_ids, [s['category_id'] for s in segments], gt_ids,
                                  truth[0], truth[1], len(self.is_thing), truth[2])
      self.mask_ap.add(image_id, outputs['logits'][i], outputs['masks'][i], outputs['size'][i],
                       (height, width), gt_ids, *truth)
      self.images += 1

  def result(self):
    summary = summarize(self.counts, self.is_thing)
    lines = [f'{name:>24} {"thing" if thing else "stuff":>5} {100 * pq:6.2f} {100 * sq:6.2f} '
             f'{100 * rq:6.2f} {tp:6d} {fp:6d} {fn:6d}' for name, thing, pq, sq, rq, tp, fp, fn in
             zip(self.class_names, self.is_thing, summary['pq'], summary['sq'], summary['rq'],
                 self.counts.tp, self.counts.fp, self.counts.fn) if thing is not None]
    logging.info('Per-class panoptic quality (%%) over %d images:\n%24s %5s %6s %6s %6s %6s %6s '
                 '%6s\n%s', self.images, 'class', 'kind', 'PQ', 'SQ', 'RQ', 'TP', 'FP', 'FN',
                 '\n'.join(lines))
    return ({key: float(value) for key, value in summary.items() if key not in ('pq', 'sq', 'rq')}
            | self.mask_ap.result() | {'num_examples': float(self.images)})
