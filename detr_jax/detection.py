"""Object detection with DETR as a task of the shared train loop.

A train step: the model predicts boxes and classes for every decoder layer; the matching cost of
every (layer, image) is computed on device, the Hungarian assignment is solved on the host by
scipy (one callback per batch shard) and the set loss is taken over the matched pairs. Eval
gathers the final layer's predictions and scores them with pycocotools over the whole split.
"""

import functools

import jax
import jax.numpy as jnp

from detr_jax import checkpoints, coco_eval, detection_input, losses, matcher, models
from vit_jax import input_pipeline, train
from vit_jax.errors import UserError

# Pixel-space shape used to create the parameters (they do not depend on the image size).
_INIT_SHAPE = (1, 64, 64)


class DetectionTask(train.Task):
  """DETR trained with the Hungarian set loss and scored by COCO AP."""

  def __init__(self, config):
    self.config = config
    self.model = models.build_detr(config.model)
    max_boxes, queries = config.input.max_boxes, self.model.num_queries
    if max_boxes > queries:
      raise UserError(f'config.input.max_boxes ({max_boxes}) exceeds config.model.num_queries '
                      f'({queries}): DETR predicts at most one box per query')
    self.loss_config = dict(config.loss)

  @functools.cached_property
  def train_source(self) -> input_pipeline.Source:
    split = self.config.input.train_split
    source = detection_input.make_source(self.config.input, split)
    # After the source: a folder's annotation file is read once, its categories then cached.
    needed, have = detection_input.num_classes(self.config.input, split), self.model.num_classes
    if needed > have:  # detr issues #23, #108: the most common fine-tuning mistake.
      raise UserError(f'the {split!r} data has labels 0..{needed - 1} but config.model.'
                      f'num_classes is {have}: set --config.model.num_classes={needed} (the '
                      'largest label + 1; DETR adds the no-object class itself)')
    return source

  @functools.cached_property
  def eval_source(self) -> input_pipeline.Source:
    return detection_input.make_source(self.config.input, self.config.input.eval_split)

  def init_variables(self, rng):
    return self.model.init({'params': rng}, jnp.zeros(_INIT_SHAPE + (3,)), jnp.ones(_INIT_SHAPE),
                           train=False)

  def pretrained_variables(self, variables, path):
    return checkpoints.fit_variables(
        variables, checkpoints.load_variables(path, num_heads=self.model.num_heads))

  def loss(self, variables, batch, rng):
    outputs = self.model.apply(variables, batch['image'], batch['pixel_mask'], train=True,
                               rngs={'dropout': rng})
    logits, boxes = outputs['logits'], outputs['boxes']
    if not self.loss_config.get('aux_loss', True):
      logits, boxes = logits[-1:], boxes[-1:]
    weights = {k: self.loss_config[k] for k in ('class_weight', 'bbox_weight', 'giou_weight')}
    layers = logits.shape[0]
    per_layer = lambda x: jnp.broadcast_to(x, (layers,) + x.shape)
    cost = matcher.matching_cost(logits, boxes, per_layer(batch['labels']),
                                 per_layer(batch['boxes']), per_layer(batch['box_mask']),
                                 **weights)
    target_query = matcher.hungarian_match(cost, batch['box_mask'])
    return losses.set_loss(logits, boxes, batch['labels'], batch['boxes'], batch['box_mask'],
                           target_query, eos_coef=self.loss_config['eos_coef'], **weights)

  def eval_outputs(self, variables, batch):
    outputs = self.model.apply(variables, batch['image'], batch['pixel_mask'], train=False)
    return {'logits': outputs['logits'][-1], 'boxes': outputs['boxes'][-1],
            'image_id': batch['image_id'], 'orig_size': batch['orig_size']}

  @functools.cached_property
  def _ground_truth(self):
    return coco_eval.ground_truth(self.config.input, self.config.input.eval_split)

  def evaluator(self):
    ground_truth, label_to_category = self._ground_truth
    return coco_eval.CocoEvaluator(ground_truth, label_to_category)

  def num_train_examples(self):
    return self.train_source.num_examples * jax.process_count()

  def train_input(self, start_example):
    return input_pipeline.train_batches(
        self.train_source, detection_input.train_preprocess(self.config.input),
        self.config.input.batch_size, start_example=start_example, seed=self.config.seed)

  def eval_input(self):
    return input_pipeline.eval_batches(
        self.eval_source, detection_input.eval_preprocess(self.config.input),
        self.config.input.eval_batch_size)
