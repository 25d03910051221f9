"""Image classification as a task of the shared train loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import classification_input, input_pipeline, models, pretrained, train
from vit_jax.errors import UserError

LOSSES = ('softmax_xent', 'sigmoid_xent')


def per_example_loss(logits: jax.Array, labels: jax.Array, kind: str) -> jax.Array:
  """Softmax cross-entropy, or sigmoid cross-entropy summed over classes (BiT / big_vision)."""
  one_hot = jax.nn.one_hot(labels, logits.shape[-1])
  if kind == 'softmax_xent':
    return optax.softmax_cross_entropy(logits, one_hot)
  return optax.sigmoid_binary_cross_entropy(logits, one_hot).sum(-1)


class Accuracy(train.Evaluator):
  """Top-1 accuracy and mean loss over the masked (real) examples."""

  def __init__(self):
    self.correct = self.loss = self.count = 0.0

  def update(self, outputs):
    mask = outputs['_mask'].astype(np.float64)
    self.correct += float((outputs['correct'] * mask).sum())
    self.loss += float((outputs['loss'] * mask).sum())
    self.count += float(mask.sum())

  def result(self):
    return {'accuracy': self.correct / max(self.count, 1), 'loss': self.loss / max(self.count, 1),
            'num_examples': self.count}


class ClassificationTask(train.Task):
  """ViT (or any image -> logits model) trained with cross-entropy and scored by accuracy."""

  def __init__(self, config):
    self.config = config
    if config.get('loss', 'softmax_xent') not in LOSSES:
      raise UserError(f'unknown config.loss {config.loss!r}: choose one of {LOSSES}')
    self.model = models.build_vit(config.model)

  @functools.cached_property
  def train_source(self) -> input_pipeline.Source:
    return classification_input.make_source(self.config.input, self.config.input.train_split)

  def init_variables(self, rng):
    size, channels = self.config.input.image_size, self.config.input.get('channels', 3)
    return self.model.init({'params': rng}, jnp.zeros((1, size, size, channels)), train=False)

  def pretrained_params(self, params, path):
    return pretrained.load_pretrained(params, path, self.config.get('posemb_resize', 'zoom'))

  def loss(self, variables, batch, rng):
    logits = self.model.apply(variables, batch['image'], train=True, rngs={'dropout': rng})
    loss = per_example_loss(logits, batch['label'], self.config.get('loss', 'softmax_xent'))
    accuracy = (logits.argmax(-1) == batch['label']).mean()
    return loss.mean(), {'accuracy': accuracy}

  def eval_outputs(self, variables, batch):
    logits = self.model.apply(variables, batch['image'], train=False)
    return {'correct': logits.argmax(-1) == batch['label'],
            'loss': per_example_loss(logits, batch['label'],
                                     self.config.get('loss', 'softmax_xent'))}

  def evaluator(self):
    return Accuracy()

  def num_train_examples(self):
    return self.train_source.num_examples * jax.process_count()

  def train_input(self, start_example):
    return input_pipeline.train_batches(
        self.train_source, classification_input.train_preprocess(self.config.input),
        self.config.input.batch_size, start_example=start_example, seed=self.config.seed)

  @functools.cached_property
  def eval_source(self) -> input_pipeline.Source:
    return classification_input.make_source(self.config.input, self.config.input.eval_split)

  def eval_input(self):
    return input_pipeline.eval_batches(
        self.eval_source, classification_input.eval_preprocess(self.config.input),
        self.config.input.eval_batch_size)
