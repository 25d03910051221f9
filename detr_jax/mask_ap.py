"""DETR's mask AP: the AP column of the paper's Table 5 ("mask AP computed on the things classes,
before any panoptic post-treatment"), the README's "segm AP" of the panoptic models.

Every query's mask as the original's PostProcessSegm makes it, with the box PostProcess's score
and class (softmax, the best real class; all queries kept): the mask logits stretched to the
processed image by the original's rule (panoptic_postprocess.upsample_masks), sigmoid > 0.5,
resized to the original image with torch's nearest rule. pycocotools' COCOeval(iouType='segm')
scores them against the ground truth's thing segments (crowd flags kept).

One difference from the paper: its ground truth is COCO's instance annotations (polygons that
may overlap, areas of the polygons); here it is the panoptic map's thing segments (no overlaps,
areas in pixels), the only ground truth a panoptic source carries.
"""

import contextlib
import io
from typing import Sequence

from absl import logging
import numpy as np
from pycocotools import coco, cocoeval
from pycocotools import mask as mask_utils

from detr_jax import panoptic_postprocess
from vit_jax.framework import logs

METRICS = ('mask_AP', 'mask_AP50', 'mask_AP75', 'mask_AP_small', 'mask_AP_medium',
           'mask_AP_large')


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
  """torch's interpolate(mode='nearest') along one axis: source index floor(i * in / out), the
  scale in float32 as torch computes it."""
  scale = np.float32(size_in) / np.float32(size_out)
  return np.minimum(np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64),
                    size_in - 1)


def query_masks(masks: np.ndarray, size: Sequence[int], orig_size: Sequence[int],
                padded_size: Sequence[int] | None = None) -> np.ndarray:
  """PostProcessSegm for one image: mask logits [Q, h, w] -> bool masks [Q, H0, W0] at
  `orig_size`; `size` the processed image's, `padded_size` its padded batch's (default size)."""
  binary = panoptic_postprocess.upsample_masks(masks, size, padded_size) > 0  # sigmoid > 0.5
  rows = nearest_indices(int(size[0]), int(orig_size[0]))
  cols = nearest_indices(int(size[1]), int(orig_size[1]))
  return binary[:, rows][:, :, cols]


def _rle(mask: np.ndarray) -> dict:
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  rle['counts'] = rle['counts'].decode('ascii')
  return rle


class MaskAP:
  """Collects one image at a time; `result` scores them all once."""

  def __init__(self, is_thing: Sequence[bool | None]):
    self.things = [label for label, thing in enumerate(is_thing) if thing]
    self.images, self.truth, self.detections = [], [], []

  def add(self, image_id: int, logits: np.ndarray, masks: np.ndarray, size, orig_size,
          gt_ids: np.ndarray, gt_labels, gt_crowd, gt_real, padded_size=None):
    """One image: logits [Q, C + 1], masks [Q, h, w]; the ground truth as PanopticEvaluator's
    (gt_ids [H0, W0], segment k at id k + 1)."""
    height, width = (int(s) for s in orig_size)
    self.images.append({'id': int(image_id), 'height': height, 'width': width})
    for k in np.flatnonzero(np.asarray(gt_real)):
      label = int(gt_labels[k])
      segment = gt_ids == k + 1
      if label in self.things and segment.any():
        self.truth.append({'id': len(self.truth) + 1, 'image_id': int(image_id),
                           'category_id': label, 'segmentation': _rle(segment),
                           'area': float(segment.sum()), 'iscrowd': int(gt_crowd[k]),
                           'bbox': list(mask_utils.toBbox(_rle(segment)))})
    logits = np.asarray(logits, np.float64)
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob = prob[:, :-1] / prob.sum(-1, keepdims=True)
    labels, scores = prob.argmax(-1), prob.max(-1)
    thing = np.isin(labels, self.things)
    for q, mask in zip(np.flatnonzero(thing),
                       query_masks(np.asarray(masks)[thing], size, orig_size, padded_size)):
      self.detections.append({'image_id': int(image_id), 'category_id': int(labels[q]),
                              'segmentation': _rle(mask), 'score': float(scores[q])})

  def result(self) -> dict[str, float]:
    gt = coco.COCO()
    gt.dataset = {'images': self.images, 'annotations': self.truth,
                  'categories': [{'id': label} for label in self.things]}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      gt.createIndex()
      results = gt.loadRes(self.detections) if self.detections else coco.COCO()
      if not self.detections:  # loadRes fails on an empty list.
        results.dataset = dict(gt.dataset, annotations=[])
        results.createIndex()
      evaluator = cocoeval.COCOeval(gt, results, iouType='segm')
      evaluator.evaluate()
      evaluator.accumulate()
      evaluator.summarize()
    logging.info('pycocotools (masks of the things classes):\n%s', printed.getvalue(),
                 **logs.FILE_ONLY)  # Not the console.
    return dict(zip(METRICS, (float(s) for s in evaluator.stats[:6])))
