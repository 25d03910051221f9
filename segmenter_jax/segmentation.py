"""Semantic segmentation with Segmenter as a task of the shared train loop.

Training: crops from Segmenter's augmentation, pixel cross-entropy with ignore 255 averaged over
the valid pixels of the global batch. Eval: each original image in a fixed canvas; the jitted
eval step runs the original's sliding-window inference (inference.py: optional multi-scale and
flip) and returns per-class pixel counts, summed by metrics.MeanIoU into mIoU and pixel accuracy.

config fields beyond the loop's: input (segmentation_input.py), model (segmenter_jax/models.py;
model.image_size defaults to input.crop_size), init_from (an official ViT .npz for the encoder,
or a Segmenter checkpoint: checkpoints.load_pretrained).
"""

import functools
import re
from typing import Iterator

import jax
import jax.numpy as jnp
import optax
import tensorflow as tf

from segmenter_jax import checkpoints, inference, metrics, models, segmentation_input
from vit_jax import input_pipeline, train
from vit_jax.errors import UserError

IGNORE_INDEX = segmentation_input.IGNORE_INDEX


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy per pixel, averaged over the pixels not labelled 255 (torch's
  CrossEntropyLoss(ignore_index=255)); 0 when every pixel is ignored."""
  valid = labels != IGNORE_INDEX
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(valid, labels, 0))
  return jnp.sum(losses * valid) / jnp.maximum(jnp.sum(valid), 1)


def _data_error(message: str) -> str:
  """The user-facing part of an error raised inside tf.data: a UserError's own text, or a
  failed assertion's message with the values it compared."""
  if 'UserError: ' in message:
    return message.rsplit('UserError: ', 1)[1].splitlines()[0]
  if 'assertion failed: ' in message:
    parts = re.findall(r'\[([^\]]*)\]', message.split('assertion failed: ', 1)[1])
    values = f' ({parts[3]} vs {parts[5]})' if len(parts) >= 6 else ''
    return (parts[0] if parts else 'assertion failed') + values
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  return lines[-1] if lines else 'unknown error'


class SegmentationTask(train.Task):
  """Segmenter trained with pixel cross-entropy and scored by mIoU."""

  def __init__(self, config):
    self.config = config
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
    self.model = models.build_segmenter(model_config)
    self.num_classes = int(model_config['num_classes'])
    self.class_names = segmentation_input.class_names(inputs, self.num_classes)
    self.mean, self.std = segmentation_input.normalization(inputs)

  @functools.cached_property
  def train_source(self) -> input_pipeline.Source:
    return segmentation_input.make_source(self.config.input, self.config.input.train_split)

  @functools.cached_property
  def eval_source(self) -> input_pipeline.Source:
    return segmentation_input.make_source(self.config.input, self.config.input.eval_split)

  @functools.cached_property
  def eval_geometry(self) -> segmentation_input.EvalGeometry:
    """The eval canvases, from the eval split's image sizes (read once, from headers)."""
    sizes = segmentation_input.image_sizes(self.config.input, self.config.input.eval_split)
    return segmentation_input.eval_geometry(
        sizes, self.scales, tuple(self.config.input.img_scale), self.crop_size)

  def init_variables(self, rng):
    images = jnp.zeros((1, self.crop_size, self.crop_size, 3))
    return self.model.init({'params': rng}, images, train=False)

  def pretrained_params(self, params, path):
    return checkpoints.load_pretrained(params, path, self.model)

  def loss(self, variables, batch, rng):
    logits = self.model.apply(variables, batch['image'], train=True, rngs={'dropout': rng})
    labels = batch['label']
    valid = labels != IGNORE_INDEX
    accuracy = jnp.sum((logits.argmax(-1) == labels) & valid) / jnp.maximum(jnp.sum(valid), 1)
    return pixel_cross_entropy(logits, labels), {'pixel_accuracy': accuracy}

  def eval_outputs(self, variables, batch):
    geometry = self.eval_geometry
    images = (batch['image'].astype(jnp.float32) - jnp.array(self.mean)) / jnp.array(self.std)
    probabilities = inference.segment(
        lambda x: self.model.apply(variables, x, train=False), images, batch['size'],
        batch['scaled_size'], batch['view_size'], scaled_canvases=geometry.scaled_canvases,
        view_canvases=geometry.view_canvases, window=self.crop_size, stride=self.stride,
        flip=self.flip, transposed=batch['transposed'])
    return metrics.areas(probabilities.argmax(-1), batch['label'], self.num_classes)

  def evaluator(self):
    return metrics.MeanIoU(self.num_classes, self.class_names)

  def num_train_examples(self):
    return self.train_source.num_examples * jax.process_count()

  def train_input(self, start_example):
    return self._checked(input_pipeline.train_batches(
        self.train_source, segmentation_input.train_preprocess(self.config.input),
        self.config.input.batch_size, start_example=start_example, seed=self.config.seed),
        self.config.input.train_split)

  def eval_input(self):
    return self._checked(input_pipeline.eval_batches(
        self.eval_source, segmentation_input.eval_preprocess(self.config.input,
                                                             self.eval_geometry),
        self.config.input.eval_batch_size), self.config.input.eval_split)

  def _checked(self, batches: Iterator[dict], split: str) -> Iterator[dict]:
    """Label values checked on the host; data errors raised inside tf.data as one line."""
    while True:
      try:
        batch = next(batches)
      except StopIteration:
        return
      except tf.errors.OpError as e:
        raise UserError(f'reading split {split!r} failed: {_data_error(e.message)}') from None
      segmentation_input.check_labels(batch, self.num_classes)
      yield batch
