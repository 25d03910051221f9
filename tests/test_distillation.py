"""DeiT's distillation: the loss against a torch transcription of DeiT's DistillationLoss on the
same logits, and a frozen teacher inside the loop's step that stays out of the optimizer state
and the checkpoints."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from helpers import load_config
from vit_jax.classification import distillation, vit_weights
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import checkpoint, model_stats, train, weights
from vit_jax.framework.errors import UserError


def deit_distillation_loss(outputs, labels, teacher_logits, kind, alpha, tau, base):
  """DeiT's losses.DistillationLoss (reference/deit.md §2.2), in torch, from its formulas."""
  cls_logits, dist_logits = outputs if isinstance(outputs, tuple) else (outputs, outputs)
  base_loss = base(cls_logits, labels)
  if kind == 'none':
    return base_loss
  if kind == 'soft':
    distill = F.kl_div(F.log_softmax(dist_logits / tau, dim=1),
                       F.log_softmax(teacher_logits / tau, dim=1),
                       reduction='sum', log_target=True) * (tau * tau) / dist_logits.numel()
  else:
    distill = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))
  return base_loss * (1 - alpha) + distill * alpha


def _config(kind, alpha=0.5, tau=1.0, teacher_from=None):
  config = load_config('deit_digits', kind)
  # Deterministic student (its logits are compared) with the distillation token in every kind.
  config.model.update(drop_path_rate=0.0, distilled=True, patch_size=4)
  config.update(distillation=kind, distillation_alpha=alpha, distillation_tau=tau)
  config.teacher = ml_collections.ConfigDict(dict(  # A tiny ViT, written as an .npz.
      model=dict(name='vit', num_classes=10, patch_size=4, hidden_size=32, num_layers=1,
                 num_heads=2, mlp_dim=32, dropout_rate=0.0), init_from=teacher_from))
  config.input.update(image_size=16, pad=1, mixup_alpha=0.0, cutmix_alpha=0.0, batch_size=16,
                      eval_batch_size=64)
  config.loss.label_smoothing = 0.0  # DeiT's base criterion as the reference computes it.
  config.update(total_steps=3, log_every=1, eval_every=3, checkpoint_every=3, draw_examples=0)
  return config


@pytest.fixture(scope='module')
def teacher_npz(tmp_path_factory):
  """A random (but fixed) teacher ViT written as an official-layout .npz."""
  teacher = ClassificationTask.MODELS['vit'](_config('none').teacher.model)
  params = nn.meta.unbox(teacher.init(jax.random.PRNGKey(7), jnp.zeros((1, 16, 16, 1)),
                                      train=False)['params'])
  rng = np.random.RandomState(0)  # The head starts at zeros: make the teacher say something.
  params = jax.tree.map(lambda x: np.asarray(x) + 0.3 * rng.randn(*x.shape).astype(x.dtype),
                        params)
  path = str(tmp_path_factory.mktemp('teacher') / 'teacher.npz')
  vit_weights.write_vit_npz(path, params)
  return path


@pytest.mark.parametrize('kind, alpha, tau, soft_labels', [
    ('soft', 0.5, 1.0, False), ('soft', 0.1, 3.0, True), ('hard', 0.5, 1.0, True),
    pytest.param('none', 0.5, 1.0, False, marks=pytest.mark.slow)])
def test_loss_equals_deits_on_the_same_logits(teacher_npz, kind, alpha, tau, soft_labels):
  config = _config(kind, alpha, tau, teacher_npz)
  task = ClassificationTask(config)
  student = nn.meta.unbox(task.init_variables(jax.random.PRNGKey(0)))
  frozen = nn.meta.unbox(task.frozen_variables())
  rng = np.random.RandomState(1)
  images = jnp.asarray(rng.randn(8, 16, 16, 1).astype(np.float32))
  if soft_labels:  # Mixup's targets: a distribution per example.
    labels = rng.dirichlet(np.ones(10), 8).astype(np.float32)
  else:
    labels = rng.randint(0, 10, 8)
  loss, _ = jax.jit(task.loss)({**student, **frozen},
                               {'image': images, 'label': jnp.asarray(labels)},
                               jax.random.PRNGKey(0), {'examples': jnp.float32(8)})

  outputs = jax.jit(functools.partial(task.model.apply, train=True))(student, images)
  assert isinstance(outputs, tuple)
  torch_outputs = tuple(torch.from_numpy(np.array(o)) for o in outputs)
  teacher_logits = (torch.from_numpy(np.array(jax.jit(task.teacher.apply)(
      frozen['teacher'], images))) if kind != 'none' else None)
  base = SoftTargetCrossEntropy() if soft_labels else torch.nn.CrossEntropyLoss()
  expected = deit_distillation_loss(torch_outputs, torch.from_numpy(labels), teacher_logits,
                                    kind, alpha, tau, base)
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)


def test_hard_distillation_takes_the_first_of_tied_teacher_classes():
  student = np.random.RandomState(0).randn(4, 5).astype(np.float32)
  teacher = np.zeros((4, 5), np.float32)
  teacher[:, 2] = teacher[:, 4] = 1.0  # Tie: both torch and jnp take class 2.
  expected = F.cross_entropy(torch.from_numpy(student),
                             torch.from_numpy(teacher).argmax(1), reduction='none')
  np.testing.assert_allclose(distillation.hard_distillation(student, teacher), expected.numpy(),
                             rtol=1e-6)


@pytest.mark.slow
def test_teacher_is_frozen_and_left_out_of_the_checkpoint(teacher_npz, workdir):
  config = _config('hard', teacher_from=teacher_npz)
  task = ClassificationTask(config)
  train.train_and_evaluate(config, workdir, task)
  state = checkpoint.load_state(workdir)
  assert not any('teacher' in name for name in weights.flatten(state))
  image = jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32)
  student = model_stats.parameter_count(task.model, image, train=False)
  assert student != model_stats.parameter_count(task.teacher, image, train=False)
  assert sum(np.size(x) for x in jax.tree.leaves(state['params'])) == student
  moments = [x for x in jax.tree.leaves(state['opt_state']) if np.ndim(x) > 0]
  assert sum(np.size(x) for x in moments) == 2 * student  # AdamW's, of the student alone.
  # The teacher on disk is unchanged and is what the step read: a hard-distilled student
  # differs from one trained without it.
  none = _config('none')
  train.train_and_evaluate(none, workdir + '_none', ClassificationTask(none))
  without = checkpoint.load_state(workdir + '_none')['params']
  assert not np.allclose(without['head_dist']['kernel'], state['params']['head_dist']['kernel'])


def test_distillation_needs_a_teacher():
  with pytest.raises(UserError, match='config.teacher.init_from'):
    ClassificationTask(_config('soft')).frozen_variables()
  config = _config('soft')
  config.teacher.model.name = 'resnet'
  with pytest.raises(UserError, match='config.teacher.model.name'):
    ClassificationTask(config)


def test_label_smoothing_equals_timms():
  config = _config('none')
  config.loss.label_smoothing = 0.1
  task = ClassificationTask(config)
  logits = np.random.RandomState(0).randn(6, 10).astype(np.float32)
  labels = np.array([0, 3, 9, 2, 2, 7])
  expected = LabelSmoothingCrossEntropy(0.1)(torch.from_numpy(logits), torch.from_numpy(labels))
  np.testing.assert_allclose(task.per_example_loss(logits, labels).mean(), float(expected),
                             rtol=1e-6)
