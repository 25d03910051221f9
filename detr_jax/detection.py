"""Object detection with DETR and Deformable DETR as a task of the shared train loop.

A train step: the model predicts boxes and classes for every decoder layer; the matching cost of
every (layer, image) is computed on device, the Hungarian assignment is solved on the host by
scipy (one callback per batch shard) and the set loss is taken over the matched pairs. Eval
gathers the final layer's predictions and scores them with pycocotools over the whole split.

A model with sigmoid classes (`sigmoid_classes`: Deformable DETR) is matched and trained with the
focal loss (config.loss.focal_alpha, focal_gamma), scored by its top 100 (query, class) pairs,
and under two-stage its encoder's proposals add a set loss of their own (all labels 0).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from detr_jax import (coco_eval, deformable_models, deformable_pretrained, detection_input,
                      losses, matcher, models, padding_buckets, pretrained, swin_backbone,
                      transforms)
from vit_jax.framework import drawing, task
from vit_jax.framework.errors import UserError

# Pixel-space shape used to create the parameters (they do not depend on the image size).
_INIT_SHAPE = (1, 64, 64)


class DetectionTask(task.Task):
  """DETR trained with the Hungarian set loss and scored by COCO AP."""
  MODELS = {'detr': models.build_detr,
            'deformable_detr': deformable_models.build_deformable_detr}
  INPUT = detection_input  # The input module: make_source, categories, num_classes, *_preprocess.

  def __init__(self, config):
    super().__init__(config)
    self.model = self.build_model()
    max_boxes, queries = config.input.max_boxes, self.model.num_queries
    if max_boxes > queries:
      raise UserError(f'config.input.max_boxes ({max_boxes}) exceeds config.model.num_queries '
                      f'({queries}): DETR predicts at most one box per query')
    self.loss_config = dict(config.loss)
    # The matching cost's weights (the original's --set_cost_*, apart from the loss weights so
    # that a loss ablation can keep the matching); a config without them matches with the loss's.
    self.cost_weights = {k: config.get('matcher', config.loss)[k]
                         for k in ('class_weight', 'bbox_weight', 'giou_weight')}
    # Sigmoid classes: the focal loss's alpha and gamma, in the loss and the matching cost.
    self.focal = {}
    if getattr(self.model, 'sigmoid_classes', False):
      self.focal = {'focal_alpha': self.loss_config.get('focal_alpha', 0.25),
                    'focal_gamma': self.loss_config.get('focal_gamma', 2.)}
    self._ground_truth = {}  # split -> (COCO ground truth, label -> category id)

  def init_variables(self, rng):
    side = getattr(self.model, 'init_image_size', lambda: _INIT_SHAPE[1])()
    shape = (1, side, side)
    return self.model.init({'params': rng}, jnp.zeros(shape + (3,)), jnp.ones(shape),
                           train=False)

  def pretrained_variables(self, variables, path):
    if getattr(self.model, 'backbone', 'resnet') == 'swin' and not path.endswith('.npz'):
      # No detector with a Swin backbone is released: a .pth is a Swin ImageNet checkpoint.
      return swin_backbone.load_swin_backbone(variables, path)
    weights = (deformable_pretrained if isinstance(self.model, deformable_models.DeformableDETR)
               else pretrained)
    return weights.fit_variables(
        variables, weights.load_variables(path, num_heads=self.model.num_heads),
        source=f'checkpoint {path}')

  def loss(self, variables, batch, rng, normalizers):
    outputs = self.model.apply(variables, batch['image'], batch['pixel_mask'], train=True,
                               rngs={'dropout': rng})
    return self.set_loss(outputs, batch, normalizers)[:2]

  def set_loss(self, outputs, batch, normalizers):
    """The set loss of the model's outputs: (total, metrics, target_query [L, B, T])."""
    logits, boxes = outputs['logits'], outputs['boxes']
    if not self.loss_config.get('aux_loss', True):
      logits, boxes = logits[-1:], boxes[-1:]
    weights = {k: self.loss_config[k] for k in ('class_weight', 'bbox_weight', 'giou_weight')}
    eos_coef = 0. if self.focal else self.loss_config['eos_coef']  # Softmax classes only.

    def layers_loss(logits, boxes, labels):
      per_layer = lambda x: jnp.broadcast_to(x, logits.shape[:1] + x.shape)
      cost = matcher.matching_cost(logits, boxes, per_layer(labels), per_layer(batch['boxes']),
                                   per_layer(batch['box_mask']), **self.cost_weights,
                                   **self.focal)
      target_query = matcher.hungarian_match(cost, batch['box_mask'])
      return losses.set_loss(logits, boxes, labels, batch['boxes'], batch['box_mask'],
                             target_query, eos_coef=eos_coef, normalizers=normalizers,
                             **weights, **self.focal) + (target_query,)
    total, metrics, target_query = layers_loss(logits, boxes, batch['labels'])
    if 'enc_logits' in outputs:  # Two-stage: the encoder's proposals, any object as class 0.
      enc_total, enc_metrics, _ = layers_loss(outputs['enc_logits'][None],
                                              outputs['enc_boxes'][None],
                                              jnp.zeros_like(batch['labels']))
      total += enc_total
      metrics.update({f'{k}_enc': enc_metrics[k] for k in ('loss_ce', 'loss_bbox', 'loss_giou')})
    return total, metrics, target_query

  def loss_normalizers(self, batch):
    return losses.loss_normalizers(batch['box_mask'], self.model.num_queries,
                                   0. if self.focal else self.loss_config['eos_coef'])

  def eval_outputs(self, variables, batch):
    outputs = self.model.apply(variables, batch['image'], batch['pixel_mask'], train=False)
    return {'logits': outputs['logits'][-1], 'boxes': outputs['boxes'][-1],
            'image_id': batch['image_id'], 'orig_size': batch['orig_size']}

  def evaluator(self, split):
    if split not in self._ground_truth:  # Read once per split, on the first eval.
      self._ground_truth[split] = coco_eval.ground_truth(self.config.input, split)
    ground_truth, label_to_category = self._ground_truth[split]
    return coco_eval.CocoEvaluator(ground_truth, label_to_category, self.postprocess)

  @property
  def postprocess(self):
    """Scores, labels and absolute boxes of a batch's predictions (coco_eval)."""
    return coco_eval.sigmoid_postprocess if self.focal else coco_eval.postprocess

  def make_source(self, split):
    source = self.INPUT.make_source(self.config.input, split)
    if split == self.config.input.train_split:
      # After the source: a folder's annotation file is read once, its categories then cached.
      needed, have = self.INPUT.num_classes(self.config.input, split), self.model.num_classes
      if needed > have:  # detr issues #23, #108: the most common fine-tuning mistake.
        raise UserError(f'the {split!r} data has labels 0..{needed - 1} but config.model.'
                        f'num_classes is {have}: set --config.model.num_classes={needed} (the '
                        'largest label + 1; DETR adds the no-object class itself)')
    else:  # Labels are positions in the label -> category list: it must be training's.
      train_split = self.config.input.train_split
      wanted = self.INPUT.categories(self.config.input, train_split)[1]
      found = self.INPUT.categories(self.config.input, split)[1]
      if found != wanted:
        raise UserError(f'the {split!r} categories (label -> id {found}) differ from the '
                        f'{train_split!r} categories ({wanted}): give both annotation files the '
                        'same categories list')
    return source

  def train_input(self, start_example):
    """The plain stream, regrouped by padding bucket when config.input.pad_buckets is set: the
    window holding `start_example` is rebuilt and its batches before it dropped, so a resume
    yields exactly the batches an uninterrupted run would have."""
    buckets = detection_input.pad_buckets(self.config.input)
    if not buckets:
      return super().train_input(start_example)
    window = self._bucket_window()
    batch_size = self.config.input.batch_size
    first = start_example - start_example % (window * batch_size)
    return padding_buckets.train_stream(super().train_input(first), buckets, window,
                                        skip=(start_example - first) // batch_size,
                                        **self._bucket_hosts(window))

  def eval_input(self, split=None):
    """The plain eval batches, regrouped so that each holds images of one padding bucket."""
    batches = super().eval_input(split)
    buckets = detection_input.pad_buckets(self.config.input)
    if not buckets:
      return batches
    # One host regroups as it reads; several exchange sizes once per window.
    window = self._bucket_window() if jax.process_count() > 1 else 1
    return padding_buckets.eval_stream(batches, buckets, window, **self._bucket_hosts(window))

  def _bucket_window(self) -> int:
    window = detection_input.setting(self.config.input, 'bucket_window')
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
      raise UserError(f'config.input.bucket_window {window!r} must be a positive number of '
                      'batches')
    return window

  @staticmethod
  def _bucket_hosts(window: int) -> dict:
    """How the bucket streams see the other hosts: none on one, an all-gather on several."""
    if jax.process_count() == 1:
      return {}
    padding_buckets.say_multi_host(jax.process_count(), window)
    return dict(process_index=jax.process_index(), gather=padding_buckets.all_processes)

  def train_preprocess(self):
    return self.INPUT.train_preprocess(self.config.input)

  def train_example_spec(self):
    return self.INPUT.train_example_spec(self.config.input)

  def eval_preprocess(self, split):
    return self.INPUT.eval_preprocess(self.config.input)

  @functools.cached_property
  def class_names(self) -> list[str]:
    """Label -> category name (the training split's categories)."""
    categories, label_to_category = self.INPUT.categories(
        self.config.input, self.config.input.train_split)
    names = {c['id']: c['name'] for c in categories}
    return [names.get(i, str(i)) for i in label_to_category]

  def draw_outputs(self, variables, batch):
    outputs = self.model.apply(variables, batch['image'], batch['pixel_mask'], train=False)
    return {'logits': outputs['logits'][-1], 'boxes': outputs['boxes'][-1]}

  def detections(self, batch, outputs) -> list[dict]:
    """Per image: its eval-size pixels (0..1, padding cut), the true boxes and labels, and the
    predicted scores, labels and boxes, boxes as (x0, y0, x1, y1) in those pixels."""
    found = []
    for i, image in enumerate(batch['image']):
      inside = batch['pixel_mask'][i] > 0  # The image without its padding.
      size = np.array([inside.any(1).sum(), inside.any(0).sum()])
      pixels = image[:size[0], :size[1]] * transforms.IMAGENET_STD + transforms.IMAGENET_MEAN
      scores, labels, boxes = self.postprocess(
          outputs['logits'][i:i + 1], outputs['boxes'][i:i + 1], size[None])
      real = batch['box_mask'][i] > 0
      _, _, true_boxes = coco_eval.postprocess(  # Normalised (cx, cy, w, h) -> pixels.
          np.zeros((1, real.sum(), 2)), batch['boxes'][i][real][None], size[None])
      found.append(dict(pixels=np.clip(pixels, 0, 1), true_boxes=true_boxes[0],
                        true_labels=batch['labels'][i][real], scores=scores[0],
                        labels=labels[0], boxes=boxes[0]))
    return found

  def draw(self, batch, outputs):
    """Ground truth beside the best config.draw_top_k predictions scoring at least
    config.draw_threshold, on the eval-size image."""
    pictures = {}
    for i, found in enumerate(self.detections(batch, outputs)):
      pictures[str(i)] = drawing.draw_detections(
          found['pixels'], found['true_boxes'], found['true_labels'], found['boxes'],
          found['labels'], found['scores'], self.class_names, self.config.draw_threshold,
          self.config.draw_top_k)
    return pictures
