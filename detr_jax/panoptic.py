"""DETR panoptic segmentation as a task of the shared train loop.

The model is DETR with the mask head (detr_jax/panoptic_model.py). A train step is the
detection task's (matching and set loss on every decoder layer, on every segment: things, stuff
and crowd alike, as the original) plus the focal and DICE mask losses of the last layer's
matched queries (detr_jax/mask_losses.py). Eval post-processes each image as the original
(detr_jax/panoptic_postprocess.py) and scores PQ / SQ / RQ over the split as panopticapi does
(detr_jax/panoptic_quality.py).

Selected by `config.task = 'panoptic'` (vit_jax/framework/registry.py).
"""

import functools

import jax.numpy as jnp
import numpy as np

from detr_jax import (detection, mask_losses, panoptic_input, panoptic_model,
                      panoptic_postprocess, panoptic_quality, transforms)
from vit_jax.framework import drawing

# What eval hands the evaluator besides the predictions: sizes and the ground truth.
_EVAL_FIELDS = ('size', 'orig_size', 'panoptic', 'segment_labels', 'segment_crowd',
                'segment_mask')


class PanopticTask(detection.DetectionTask):
  """DETR with masks, trained with the set and mask losses and scored by PQ."""
  MODELS = {'detr': panoptic_model.build_detr_panoptic}
  INPUT = panoptic_input

  def loss(self, variables, batch, rng, normalizers):
    outputs = self.model.apply(variables, batch['image'], batch['pixel_mask'], train=True,
                               rngs={'dropout': rng})
    total, metrics, target_query = self.set_loss(outputs, batch, normalizers)
    slots = jnp.arange(1, batch['box_mask'].shape[1] + 1)
    target_masks = batch['segments'][:, None] == slots[None, :, None, None]  # [B, T, H, W]
    masks_total, mask_metrics = mask_losses.mask_loss(
        outputs['masks'], target_masks, batch['box_mask'], target_query[-1],
        num_boxes=normalizers['boxes'], mask_weight=self.loss_config.get('mask_weight', 1.),
        dice_weight=self.loss_config.get('dice_weight', 1.))
    return total + masks_total, {**metrics, **mask_metrics}

  def eval_outputs(self, variables, batch):
    outputs = self.model.apply(variables, batch['image'], batch['pixel_mask'], train=False)
    return {'logits': outputs['logits'][-1], 'masks': outputs['masks'],
            'image_id': batch['image_id'], **{k: batch[k] for k in _EVAL_FIELDS}}

  def draw_outputs(self, variables, batch):
    outputs = self.model.apply(variables, batch['image'], batch['pixel_mask'], train=False)
    return {'logits': outputs['logits'][-1], 'masks': outputs['masks']}

  def draw(self, batch, outputs):
    """The ground truth's segments beside the post-processed prediction's, on the eval-size
    image, each segment in its own colour and named by class (and score) in the legend."""
    is_thing, names = self._label_kinds
    pictures = {}
    for i, image in enumerate(batch['image']):
      size = tuple(int(s) for s in batch['size'][i])
      pixels = image[:size[0], :size[1]] * transforms.IMAGENET_STD + transforms.IMAGENET_MEAN
      pixels = np.clip(pixels, 0, 1)
      predicted, segments = panoptic_postprocess.panoptic_segments(
          outputs['logits'][i], outputs['masks'][i], is_thing, size)
      real = np.flatnonzero(batch['segment_mask'][i] > 0)  # Slot k holds segment id k + 1.
      true_names = {k + 1: f'{names[batch["segment_labels"][i][k]]} {k + 1}' for k in real}
      predicted_names = {s['id']: f'{names[s["category_id"]]} {s["id"]} ({s["score"]:.2f})'
                         for s in segments}
      truth = drawing.draw_segments(pixels, batch['segments'][i][:size[0], :size[1]], true_names)
      prediction = drawing.draw_segments(pixels, predicted, predicted_names)
      pictures[str(i)] = drawing.side_by_side([truth, prediction], ['truth', 'prediction'])
    return pictures

  def evaluator(self, split):
    is_thing, names = self._label_kinds
    return panoptic_quality.PanopticEvaluator(is_thing, names)

  @functools.cached_property
  def _label_kinds(self):
    """Per label of the model's classes: thing / stuff / None (no category), and its name."""
    train_split = self.config.input.train_split
    is_thing = panoptic_input.label_is_thing(self.config.input, train_split)
    missing = self.model.num_classes - len(is_thing)
    return is_thing + [None] * missing, self.class_names + [''] * missing
