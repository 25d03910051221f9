"""Semantic segmentation with Segmenter as a task of the shared train loop.

Training: crops from Segmenter's augmentation, pixel cross-entropy with ignore 255 averaged over
the valid pixels of the global batch. Eval: each original image in a fixed canvas; the jitted
eval step runs the original's sliding-window inference (inference.py: optional multi-scale and
flip) and returns per-class pixel counts, summed by metrics.MeanIoU into mIoU and pixel accuracy.

config fields beyond the loop's: input (segmentation_input.py), model (segmenter_jax/models.py;
model.image_size defaults to input.crop_size), init_from (an official ViT .npz for the encoder,
or a Segmenter checkpoint: pretrained.load_pretrained).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from segmenter_jax import inference, metrics, models, pretrained, segmentation_input
from vit_jax.framework import drawing, task
from vit_jax.framework.errors import UserError

IGNORE_INDEX = segmentation_input.IGNORE_INDEX


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array,
                        num_valid: jax.Array | None = None) -> jax.Array:
  """Softmax cross-entropy per pixel, summed over the pixels not labelled 255 and divided by
  `num_valid`: by default their count here (torch's CrossEntropyLoss(ignore_index=255)), the
  global batch's count when `labels` are a micro-batch of it. 0 when every pixel is ignored."""
  valid = labels != IGNORE_INDEX
  if num_valid is None:
    num_valid = jnp.sum(valid)
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(valid, labels, 0))
  return jnp.sum(losses * valid) / jnp.maximum(num_valid, 1)


class SegmentationTask(task.Task):
  """Segmenter trained with pixel cross-entropy and scored by mIoU."""
  MODELS = {'segmenter': models.build_segmenter}

  def __init__(self, config):
    super().__init__(config)
    inputs = config.input
    self.crop_size = int(inputs.crop_size)
    self.stride = int(inputs.get('eval_stride', self.crop_size))
    self.scales = tuple(float(s) for s in inputs.get('eval_scales', (1.0,)))
    self.flip = bool(inputs.get('eval_flip', False))
    if self.stride <= 0 or not self.scales or min(self.scales) <= 0:
      raise UserError(f'config.input needs eval_stride > 0 and positive eval_scales, got '
                      f'{self.stride} and {self.scales}')
    model_config = dict(config.model)
    model_config['image_size'] = model_config.get('image_size') or self.crop_size
    self.model = self.build_model(model_config)
    self.num_classes = int(model_config['num_classes'])
    self.class_names = segmentation_input.class_names(inputs, self.num_classes)
    self.mean, self.std = segmentation_input.normalization(inputs)

  @functools.cached_property
  def eval_geometry(self) -> segmentation_input.EvalGeometry:
    """The eval canvases, from the image sizes of every eval split (read once, from headers):
    one jitted eval step serves them all."""
    sizes = np.concatenate([segmentation_input.image_sizes(self.config.input, split)
                            for split in self.eval_splits.values()])
    return segmentation_input.eval_geometry(
        sizes, self.scales, tuple(self.config.input.img_scale), self.crop_size)

  def init_variables(self, rng):
    images = jnp.zeros((1, self.crop_size, self.crop_size, 3))
    return self.model.init({'params': rng}, images, train=False)

  def pretrained_params(self, params, path):
    return pretrained.load_pretrained(params, path, self.model)

  def loss(self, variables, batch, rng, normalizers):
    logits = self.model.apply(variables, batch['image'], train=True, rngs={'dropout': rng})
    labels = batch['label']
    num_valid = normalizers['valid_pixels']
    correct = jnp.sum((logits.argmax(-1) == labels) & (labels != IGNORE_INDEX))
    return (pixel_cross_entropy(logits, labels, num_valid),
            {'pixel_accuracy': correct / jnp.maximum(num_valid, 1)})

  def loss_normalizers(self, batch):
    return dict(super().loss_normalizers(batch),
                valid_pixels=jnp.sum(batch['label'] != IGNORE_INDEX).astype(jnp.float32))

  def predict(self, variables, batch) -> jax.Array:
    """The predicted label map of each eval canvas (the original's sliding-window inference)."""
    geometry = self.eval_geometry
    images = (batch['image'].astype(jnp.float32) - jnp.array(self.mean)) / jnp.array(self.std)
    probabilities = inference.segment(
        lambda x: self.model.apply(variables, x, train=False), images, batch['size'],
        batch['scaled_size'], batch['view_size'], scaled_canvases=geometry.scaled_canvases,
        view_canvases=geometry.view_canvases, window=self.crop_size, stride=self.stride,
        flip=self.flip, transposed=batch['transposed'])
    return probabilities.argmax(-1)

  def eval_outputs(self, variables, batch):
    return metrics.areas(self.predict(variables, batch), batch['label'], self.num_classes)

  def evaluator(self, split):
    return metrics.MeanIoU(self.num_classes, self.class_names)

  def make_source(self, split):
    return segmentation_input.make_source(self.config.input, split)

  def train_preprocess(self):
    return segmentation_input.train_preprocess(self.config.input)

  def train_example_spec(self):
    return segmentation_input.train_example_spec(self.config.input)

  def eval_preprocess(self, split):
    return segmentation_input.eval_preprocess(self.config.input, self.eval_geometry)

  def check_batch(self, batch, split):
    segmentation_input.check_labels(batch, self.num_classes)

  def draw_outputs(self, variables, batch):
    return {'prediction': self.predict(variables, batch)}

  def draw(self, batch, outputs):
    pictures = {}
    for i, (height, width) in enumerate(batch['size']):
      image, label, prediction = (x[i][:height, :width] for x in (
          batch['image'], batch['label'], outputs['prediction']))
      if batch['transposed'][i]:  # The canvas holds a portrait image transposed.
        image, label, prediction = image.transpose(1, 0, 2), label.T, prediction.T
      pictures[str(i)] = drawing.draw_segmentation(image, label, prediction, self.class_names,
                                                   IGNORE_INDEX)
    return pictures
