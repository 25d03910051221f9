"""Image classification as a task of the shared train loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import classification_input, models, task, weights
from vit_jax.errors import UserError

LOSSES = ('softmax_xent', 'sigmoid_xent')


def per_example_loss(logits: jax.Array, labels: jax.Array, kind: str) -> jax.Array:
  """Softmax cross-entropy, or sigmoid cross-entropy summed over classes (BiT / big_vision)."""
  one_hot = jax.nn.one_hot(labels, logits.shape[-1])
  if kind == 'softmax_xent':
    return optax.softmax_cross_entropy(logits, one_hot)
  return optax.sigmoid_binary_cross_entropy(logits, one_hot).sum(-1)


class Accuracy(task.Evaluator):
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


class ClassificationTask(task.Task):
  """ViT (or any image -> logits model) trained with cross-entropy and scored by accuracy."""

  def __init__(self, config):
    super().__init__(config)
    if config.get('loss', 'softmax_xent') not in LOSSES:
      raise UserError(f'unknown config.loss {config.loss!r}: choose one of {LOSSES}')
    self.model = models.build_vit(config.model)

  def init_variables(self, rng):
    size, channels = self.config.input.image_size, self.config.input.get('channels', 3)
    return self.model.init({'params': rng}, jnp.zeros((1, size, size, channels)), train=False)

  def pretrained_params(self, params, path):
    return weights.load_vit(params, path, self.config.get('posemb_resize', 'zoom'))

  def loss(self, variables, batch, rng, normalizers):
    logits = self.model.apply(variables, batch['image'], train=True, rngs={'dropout': rng})
    loss = per_example_loss(logits, batch['label'], self.config.get('loss', 'softmax_xent'))
    correct = logits.argmax(-1) == batch['label']
    examples = normalizers['examples']
    return loss.sum() / examples, {'accuracy': correct.sum() / examples}

  def eval_outputs(self, variables, batch):
    logits = self.model.apply(variables, batch['image'], train=False)
    return {'correct': logits.argmax(-1) == batch['label'],
            'loss': per_example_loss(logits, batch['label'],
                                     self.config.get('loss', 'softmax_xent'))}

  def evaluator(self, split):
    return Accuracy()

  def make_source(self, split):
    return classification_input.make_source(self.config.input, split)

  def train_preprocess(self):
    return classification_input.train_preprocess(self.config.input)

  def eval_preprocess(self, split):
    return classification_input.eval_preprocess(self.config.input)
