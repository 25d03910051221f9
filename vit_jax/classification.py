"""Image classification as a task of the shared train loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import classification_input, models, task, weights
from vit_jax.errors import choose


def sigmoid_xent(logits: jax.Array, one_hot: jax.Array) -> jax.Array:
  """Sigmoid cross-entropy summed over classes (BiT / big_vision: multi-label i21k)."""
  return optax.sigmoid_binary_cross_entropy(logits, one_hot).sum(-1)


# config.loss.name -> per-example loss of (logits, one-hot labels).
LOSSES = {'softmax_xent': optax.softmax_cross_entropy, 'sigmoid_xent': sigmoid_xent}
MODELS = {'vit': models.build_vit}  # config.model.name -> builder.


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
    self.xent = choose('config.loss.name', config.loss.name, LOSSES)
    self.model = choose('config.model.name', config.model.name, MODELS)(config.model)

  def per_example_loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    return self.xent(logits, jax.nn.one_hot(labels, logits.shape[-1]))

  def init_variables(self, rng):
    size, channels = self.config.input.image_size, self.config.input.get('channels', 3)
    return self.model.init({'params': rng}, jnp.zeros((1, size, size, channels)), train=False)

  def pretrained_params(self, params, path):
    return weights.load_vit(params, path, self.config.get('posemb_resize', 'zoom'))

  def loss(self, variables, batch, rng, normalizers):
    logits = self.model.apply(variables, batch['image'], train=True, rngs={'dropout': rng})
    loss = self.per_example_loss(logits, batch['label'])
    correct = logits.argmax(-1) == batch['label']
    examples = normalizers['examples']
    return loss.sum() / examples, {'accuracy': correct.sum() / examples}

  def eval_outputs(self, variables, batch):
    logits = self.model.apply(variables, batch['image'], train=False)
    return {'correct': logits.argmax(-1) == batch['label'],
            'loss': self.per_example_loss(logits, batch['label'])}

  def evaluator(self, split):
    return Accuracy()

  def make_source(self, split):
    return classification_input.make_source(self.config.input, split,
                                            self.config.model.num_classes)

  def train_preprocess(self):
    return classification_input.train_preprocess(self.config.input)

  def eval_preprocess(self, split):
    return classification_input.eval_preprocess(self.config.input)
