"""COCO box AP with pycocotools: DETR's PostProcess and the ground truth of every source.

The evaluator collects all detections of the eval split on the host (DETR keeps all queries: no
score threshold, no NMS) and scores them once with COCOeval(iouType='bbox'), so the numbers are
the official ones for a COCO-format folder (its annotation file, crowd regions and areas as
given) and the same definition for TFDS COCO and the generated shapes.
"""

import contextlib
import io
from typing import Callable, Sequence

from absl import logging
import numpy as np
from pycocotools import coco, cocoeval
import tensorflow as tf
import tensorflow_datasets as tfds

from detr_jax import detection_input, shapes
from vit_jax.framework import logs, task
from vit_jax.framework.errors import UserError

METRICS = ('AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large')


def postprocess(logits, boxes, orig_size):
  """The original PostProcess for a batch.

  logits [B, Q, C+1] (the last class is no-object), boxes [B, Q, 4] normalised (cx, cy, w, h),
  orig_size [B, 2] (h, w). Returns scores [B, Q] and labels [B, Q] (the best real class and its
  softmax probability) and boxes [B, Q, 4] as absolute (x0, y0, x1, y1) in the original image.
  """
  logits = np.asarray(logits, np.float64)
  prob = np.exp(logits - logits.max(-1, keepdims=True))
  prob /= prob.sum(-1, keepdims=True)
  labels = prob[..., :-1].argmax(-1)
  scores = np.take_along_axis(prob[..., :-1], labels[..., None], -1)[..., 0]
  return scores, labels, _absolute_xyxy(boxes, orig_size)


def _absolute_xyxy(boxes, orig_size):
  """[B, N, 4] normalised (cx, cy, w, h) -> absolute (x0, y0, x1, y1) in images [B, 2] (h, w)."""
  cx, cy, w, h = np.moveaxis(np.asarray(boxes, np.float64), -1, 0)
  xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
  height, width = np.moveaxis(np.asarray(orig_size, np.float64), -1, 0)
  return xyxy * np.stack([width, height, width, height], -1)[..., None, :]


def sigmoid_postprocess(logits, boxes, orig_size, top_k: int = 100):
  """Deformable DETR's PostProcess: the top_k (query, class) pairs by sigmoid score over all
  Q x C of an image, a query counting once per class it scores for.

  logits [B, Q, C] (sigmoid classes), boxes [B, Q, 4] normalised (cx, cy, w, h), orig_size
  [B, 2] (h, w) -> scores, labels [B, K] and absolute (x0, y0, x1, y1) boxes [B, K, 4], best
  first, K = min(top_k, Q * C).
  """
  logits = np.asarray(logits, np.float64)
  b, _, c = logits.shape
  flat = logits.reshape(b, -1)
  k = min(top_k, flat.shape[1])
  top = np.argsort(-flat, axis=1, kind='stable')[:, :k]  # Ties: the lower index first.
  scores = 1 / (1 + np.exp(-np.take_along_axis(flat, top, 1)))
  queries, labels = top // c, top % c
  picked = np.take_along_axis(np.asarray(boxes), queries[..., None], 1)
  return scores, labels, _absolute_xyxy(picked, orig_size)


class CocoEvaluator(task.Evaluator):
  """COCO box AP over every real example given to `update` (`_mask` 0 = padding, skipped).
  `postprocess`: `postprocess` (softmax classes, every query) or `sigmoid_postprocess`."""

  def __init__(self, ground_truth: dict, label_to_category: Sequence[int],
               postprocess: Callable = postprocess):
    self.ground_truth = ground_truth
    self.postprocess = postprocess
    self.label_to_category = np.asarray(label_to_category, np.int64)
    self.known_images = {image['id'] for image in ground_truth['images']}
    self.detections = []  # [N, 7] blocks: image_id, x, y, w, h, score, category_id.
    self.image_ids = set()

  def update(self, outputs):
    real = np.asarray(outputs['_mask']).astype(bool)
    if not real.any():
      return
    scores, labels, xyxy = self.postprocess(outputs['logits'][real], outputs['boxes'][real],
                                            outputs['orig_size'][real])
    image_ids = np.asarray(outputs['image_id'])[real].astype(np.int64)
    unknown = set(image_ids.tolist()) - self.known_images
    if unknown:
      raise UserError(f'eval images {sorted(unknown)[:5]} are not in the ground truth: the eval '
                      f'data and its annotation file disagree')
    self.image_ids.update(image_ids.tolist())
    queries = scores.shape[1]
    xywh = np.concatenate([xyxy[..., :2], xyxy[..., 2:] - xyxy[..., :2]], -1)
    self.detections.append(np.concatenate([
        np.repeat(image_ids, queries)[:, None], xywh.reshape(-1, 4), scores.reshape(-1, 1),
        self.label_to_category[labels.reshape(-1)][:, None]], 1))

  def result(self):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      stats = self._evaluate()
    logging.info('pycocotools:\n%s', printed.getvalue(), **logs.FILE_ONLY)  # Not the console.
    return dict(zip(METRICS, (float(s) for s in stats[:6])))

  def _evaluate(self):
    gt = coco.COCO()
    # COCOeval marks the annotations it reads ('ignore'): keep the caller's dicts unchanged.
    gt.dataset = dict(self.ground_truth,
                      annotations=[dict(a) for a in self.ground_truth['annotations']])
    gt.createIndex()
    detections = np.concatenate(self.detections) if self.detections else np.zeros((0, 7))
    if len(detections):
      results = gt.loadRes(detections)
    else:  # pycocotools' loadRes fails on an empty list; no detections scores 0 where GT is.
      results = coco.COCO()
      results.dataset = {'images': list(self.ground_truth['images']), 'annotations': [],
                         'categories': list(self.ground_truth.get('categories', []))}
      results.createIndex()
    evaluator = cocoeval.COCOeval(gt, results, iouType='bbox')
    evaluator.params.imgIds = sorted(self.image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats


def ground_truth(input_config, split: str) -> tuple[dict, list[int]]:
  """The split's annotations in COCO json form and label -> category id.

  coco_folder: the annotation file itself. tfds: built from the TFDS objects (crowd flags and
  areas as stored). shapes: built from the generator (area = pixel count).
  """
  kind = input_config.get('source')
  cats, mapping = detection_input.categories(input_config, split)
  if kind == 'coco_folder':
    data = detection_input.read_json(detection_input.annotation_file(input_config, split))
    # pycocotools needs these; files from other tools sometimes leave them out.
    for ann in data.setdefault('annotations', []):
      ann.setdefault('iscrowd', 0)
      ann.setdefault('area', float(ann['bbox'][2] * ann['bbox'][3]))
    return data, mapping
  if kind == 'shapes':
    return _shapes_ground_truth(input_config, split, cats), mapping
  if kind == 'tfds':
    return _tfds_ground_truth(input_config, split, cats), mapping
  raise UserError(f'unknown config.input.source {kind!r}: use one of {detection_input.SOURCES}')


def _shapes_ground_truth(input_config, split, cats):
  settings = shapes.ShapesSettings.from_config(input_config.get('shapes'))
  data = shapes.generate(settings, split)
  size = settings.image_size
  images, annotations = [], []
  for i in range(len(data['image'])):
    images.append({'id': i + 1, 'width': size, 'height': size, 'file_name': f'{i + 1}.png'})
    for k in np.flatnonzero(data['box_mask'][i]):
      x0, y0, x1, y1 = (float(v) for v in data['boxes'][i, k])
      annotations.append({'id': len(annotations) + 1, 'image_id': i + 1,
                          'category_id': int(data['category'][i, k]),
                          'bbox': [x0, y0, x1 - x0, y1 - y0],
                          'area': float(data['area'][i, k]), 'iscrowd': 0})
  return {'images': images, 'annotations': annotations, 'categories': cats}


def _image_size(encoded):
  """(h, w) from the encoded image, reading only the header of a JPEG."""
  return tf.cond(tf.io.is_jpeg(encoded), lambda: tf.image.extract_jpeg_shape(encoded)[:2],
                 lambda: tf.shape(tf.io.decode_image(encoded, expand_animations=False))[:2])


def _tfds_ground_truth(input_config, split, cats):
  name = input_config.get('dataset')
  # For its clear errors when the data is missing; the evaluator needs every host's images.
  detection_input.make_source(input_config, split)
  builder = tfds.builder(name, data_dir=input_config.get('data_dir'))
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  ds = ds.map(lambda ex: {'id': ex['image/id'], 'size': _image_size(ex['image']),
                          'objects': ex['objects']}, num_parallel_calls=tf.data.AUTOTUNE)
  category_of = [c['id'] for c in cats]
  images, annotations = [], []
  for ex in ds.as_numpy_iterator():
    image_id, (height, width) = int(ex['id']), (int(s) for s in ex['size'])
    images.append({'id': image_id, 'width': width, 'height': height})
    objects = ex['objects']
    crowd = objects.get('is_crowd', np.zeros(len(objects['label']), bool))
    area = objects.get('area')
    for k, (ymin, xmin, ymax, xmax) in enumerate(objects['bbox']):
      w, h = (xmax - xmin) * width, (ymax - ymin) * height
      annotations.append({
          'id': len(annotations) + 1, 'image_id': image_id,
          'category_id': category_of[int(objects['label'][k])],
          'bbox': [float(xmin * width), float(ymin * height), float(w), float(h)],
          'area': float(area[k]) if area is not None else float(w * h),
          'iscrowd': int(crowd[k])})
  return {'images': images, 'annotations': annotations, 'categories': cats}
