"""Image classification as a task of the shared train loop."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf

from vit_jax.classification import input as classification_input
from vit_jax.classification import (deit, distillation, swin, swin_weights, vit, vit_weights,
                                    vtab)
from vit_jax.framework import drawing, task
from vit_jax.framework.errors import choose


def sigmoid_xent(logits: jax.Array, one_hot: jax.Array) -> jax.Array:
  """Sigmoid cross-entropy summed over classes (BiT / big_vision: multi-label i21k)."""
  return optax.sigmoid_binary_cross_entropy(logits, one_hot).sum(-1)


# config.loss.name -> per-example loss of (logits, one-hot labels).
LOSSES = {'softmax_xent': optax.softmax_cross_entropy, 'sigmoid_xent': sigmoid_xent}
# ImageNet ReaL (Beyer et al. 2020): the 50,000 ImageNet validation images with re-assessed
# label sets (TFDS `real_label`) beside the original label (`original_label`).
REAL_DATASET = 'imagenet2012_real'


def real_label_set(real_label: tf.Tensor, num_classes: int) -> tf.Tensor:
  """An image's ReaL labels (a list of class ids, possibly empty) as a [num_classes] 0/1 mask."""
  counts = tf.math.bincount(tf.cast(real_label, tf.int32), minlength=num_classes,
                            maxlength=num_classes)
  return tf.ensure_shape(tf.cast(counts > 0, tf.uint8), [num_classes])  # Static, for batching.


def real_correct(logits: jax.Array, real_labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(the top-1 prediction is one of the image's ReaL labels, the image has ReaL labels)."""
  top1 = logits.argmax(-1)
  hit = jnp.take_along_axis(real_labels, top1[:, None], axis=-1)[:, 0] > 0
  return hit, real_labels.max(-1) > 0


class Accuracy(task.Evaluator):
  """Top-1 accuracy and mean loss over the masked (real) examples; with ReaL label sets also
  ReaL accuracy: the share of the images that have ReaL labels whose top-1 prediction is one of
  them (images with an empty set are left out, as the ReaL paper does)."""

  def __init__(self):
    self.correct = self.loss = self.count = 0.0
    self.real_correct = self.real_count = 0.0

  def update(self, outputs):
    mask = outputs['_mask'].astype(np.float64)
    self.correct += float((outputs['correct'] * mask).sum())
    self.loss += float((outputs['loss'] * mask).sum())
    self.count += float(mask.sum())
    if 'real_correct' in outputs:
      self.real_correct += float((outputs['real_correct'] * mask).sum())
      self.real_count += float((outputs['has_real'] * mask).sum())

  def result(self):
    result = {'accuracy': self.correct / max(self.count, 1),
              'loss': self.loss / max(self.count, 1), 'num_examples': self.count}
    if self.real_count:
      result.update(real_accuracy=self.real_correct / self.real_count,
                    real_num_examples=self.real_count)
    return result


class ClassificationTask(task.Task):
  """ViT (or any image -> logits model) trained with cross-entropy and scored by accuracy."""
  MODELS = {'vit': vit.build_vit, 'deit': deit.build_deit, 'swin': swin.build_swin}

  def __init__(self, config):
    super().__init__(config)
    self.xent = choose('config.loss.name', config.loss.name, LOSSES)
    self.model = self.build_model()
    # DeiT's distillation (vit_jax/classification/distillation.py): a frozen teacher's logits.
    self.distillation = distillation.check_kind(config.get('distillation', 'none'))
    self.teacher = None
    if self.distillation != 'none':
      teacher = config.get('teacher') or {}
      self.teacher = choose('config.teacher.model.name', (teacher.get('model') or {}).get('name'),
                            self.MODELS)(teacher.model)

  def per_example_loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """labels: class ids (their one-hot targets smoothed by config.loss.label_smoothing, as
    timm's LabelSmoothingCrossEntropy), or target distributions over the classes (Mixup's)."""
    if labels.ndim == 2:
      return self.xent(logits, labels)
    smoothing, num_classes = self.config.loss.get('label_smoothing', 0.0), logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes) * (1 - smoothing) + smoothing / num_classes
    return self.xent(logits, targets)

  def _image_shape(self) -> tuple[int, int, int]:
    size = self.config.input.image_size
    return (size, size, self.config.input.get('channels', 3))

  def init_variables(self, rng):
    return self.model.init({'params': rng}, jnp.zeros((1,) + self._image_shape()), train=False)

  def pretrained_params(self, params, path):
    if self.config.model.name == 'swin':  # Its own layout (official / timm .pth files).
      return swin_weights.load_swin(params, path)
    return vit_weights.load_vit(params, path, self.config.get('posemb_resize', 'zoom'),
                                num_heads=getattr(self.model, 'num_heads', None))

  def frozen_variables(self):
    if self.teacher is None:
      return {}
    return {'teacher': distillation.teacher_variables(
        self.teacher, self._image_shape(), self.config.teacher.get('init_from'))}

  def loss(self, variables, batch, rng, normalizers):
    variables = dict(variables)
    teacher_variables = variables.pop('teacher', None)
    outputs = self.model.apply(variables, batch['image'], train=True, rngs={'dropout': rng})
    # The class head learns from the labels, the distillation head (the class head when there
    # is none) from the teacher; without a teacher a distillation head does not learn (DeiT's).
    logits, student_logits = outputs if isinstance(outputs, tuple) else (outputs, outputs)
    loss = self.per_example_loss(logits, batch['label'])
    if self.teacher is not None:
      teacher_logits = self.teacher.apply(teacher_variables, batch['image'], train=False)
      alpha = self.config.get('distillation_alpha', 0.5)
      loss = (1 - alpha) * loss + alpha * distillation.distillation_term(
          self.distillation, student_logits, teacher_logits,
          self.config.get('distillation_tau', 1.0))
    labels = batch['label'] if batch['label'].ndim == 1 else batch['label'].argmax(-1)
    correct = logits.argmax(-1) == labels
    examples = normalizers['examples']
    return loss.sum() / examples, {'accuracy': correct.sum() / examples}

  def eval_outputs(self, variables, batch):
    logits = self.model.apply(variables, batch['image'], train=False)
    outputs = {'correct': logits.argmax(-1) == batch['label'],
               'loss': self.per_example_loss(logits, batch['label'])}
    if 'real_labels' in batch:
      outputs['real_correct'], outputs['has_real'] = real_correct(logits, batch['real_labels'])
    return outputs

  def evaluator(self, split):
    return Accuracy()

  def _input_config(self, split: str):
    """(input config, split): an eval split may name another TFDS dataset as DATASET:SPLIT,
    e.g. imagenet2012_real:validation beside an ImageNet training run."""
    dataset, colon, name = split.partition(':')
    if not colon or '[' in dataset:  # 'train[:98%]' is a slice, not a dataset.
      return self.config.input, split
    inputs = ml_collections.ConfigDict(self.config.input.to_dict())
    inputs.dataset = dataset
    return inputs, name

  def make_source(self, split):
    inputs, split = self._input_config(split)
    return classification_input.make_source(inputs, split, self.config.model.num_classes)

  def _with_label(self, preprocess):
    """`preprocess` after `config.input.label`'s rule (a VTAB task's label, vit_jax/classification/vtab.py)
    has made the example's `label`; `preprocess` itself without one."""
    rule = self.config.input.get('label')
    if not rule:
      return preprocess
    derive = choose('config.input.label', rule, vtab.LABELS)
    return lambda example, *seed: preprocess(
        {'image': example['image'], 'label': tf.cast(derive(example), tf.int64)}, *seed)

  def train_preprocess(self):
    return self._with_label(classification_input.train_preprocess(self.config.input))

  def train_batch_preprocess(self):
    """Mixup / CutMix when config.input asks, the label smoothing folded into the targets."""
    return classification_input.train_batch_preprocess(
        self.config.input, self.config.model.num_classes,
        self.config.loss.get('label_smoothing', 0.0),
        host_batch=self.config.input.batch_size // jax.process_count())

  def train_example_spec(self):
    return classification_input.train_example_spec(self.config.input,
                                                   self.config.model.num_classes)

  def eval_preprocess(self, split):
    inputs, _ = self._input_config(split)
    preprocess = self._with_label(classification_input.eval_preprocess(inputs))
    if inputs.get('dataset') != REAL_DATASET:
      return preprocess
    num_classes = self.config.model.num_classes

    def with_real_labels(example):
      out = preprocess({'image': example['image'], 'label': example['original_label']})
      return dict(out, real_labels=real_label_set(example['real_label'], num_classes))
    return with_real_labels

  @functools.cached_property
  def class_names(self) -> list[str] | None:
    """The dataset's class names (an image folder's class folders, a TFDS label feature's
    names); None when it has none (digits: the label is the name)."""
    inputs = self.config.input
    if inputs.source == 'folder':
      return classification_input.folder_classes(inputs.data_dir, inputs.train_split)
    if inputs.source == 'tfds':
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      features = tfds.builder(inputs.dataset, data_dir=inputs.get('data_dir')).info.features
      names = getattr(features['label'], 'names', None) if 'label' in features else None
      return list(names) if names else None
    return None

  def draw_outputs(self, variables, batch):
    logits, state = self.model.apply(variables, batch['image'], train=False,
                                     mutable='intermediates')
    outputs = {'probabilities': jax.nn.softmax(logits)}
    if self.model.classifier == 'token':  # Where the class token looks, per layer.
      blocks = state['intermediates']['Transformer']
      if 'encoderblock' in blocks:  # model.scan: [layers, batch, heads, tokens, tokens].
        stacked = blocks['encoderblock']['MultiHeadDotProductAttention_0']['attention_weights']
        outputs['attention'] = stacked[0].mean(2).swapaxes(0, 1)
      else:
        outputs['attention'] = jnp.stack([  # [batch, layers, tokens, tokens], heads averaged.
            blocks[f'encoderblock_{i}']['MultiHeadDotProductAttention_0']['attention_weights'][0]
            .mean(1) for i in range(self.model.num_layers)], axis=1)
    return outputs

  def draw(self, batch, outputs):
    pictures = {}
    for i, image in enumerate(batch['image']):
      probabilities = outputs['probabilities'][i]
      attention = None
      if 'attention' in outputs:
        rollout = drawing.attention_rollout(outputs['attention'][i])
        rollout = rollout[int(getattr(self.model, 'distilled', False)):]  # DeiT's dist token.
        rows = round((len(rollout) * image.shape[0] / image.shape[1]) ** 0.5)
        attention = rollout.reshape(rows, len(rollout) // rows)
      pictures[str(i)] = drawing.draw_classification(
          image, batch['label'][i], probabilities.argmax(), self.class_names,
          probabilities.max(), attention)
    return pictures
