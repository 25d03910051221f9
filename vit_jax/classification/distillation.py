"""Knowledge distillation as DeiT trains with it (Touvron et al. 2021; reference/deit.md §2).

A frozen teacher sees the student's very batch (augmented, mixed) inside the same jitted step;
its logits supervise the student's distillation head (the class head when the student has none):

  loss = (1 - alpha) * CE(class logits, labels) + alpha * D
  soft: D = tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)) / num_classes
        (DeiT's `kl_div(reduction='sum') / numel`, i.e. per example divided by the class count)
  hard: D = CE(student, argmax teacher), no label smoothing

Config (classification task): `distillation` none | soft | hard, `distillation_alpha` (DeiT's
default 0.5), `distillation_tau` (1.0), and `teacher.model` (a model config of the task's zoo)
with `teacher.init_from` (a ViT `.npz`, a timm/DeiT `.pth`, or the workdir of a run of ours).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.classification import vit_weights
from vit_jax.framework import checkpoint, paths, weights
from vit_jax.framework.errors import UserError

KINDS = ('none', 'soft', 'hard')


def soft_distillation(student_logits: jax.Array, teacher_logits: jax.Array,
                      tau: float) -> jax.Array:
  """Per example: tau^2 * KL(teacher || student) at temperature tau, divided by the class count
  (so that the batch mean is DeiT's sum / (batch * classes))."""
  log_student = jax.nn.log_softmax(student_logits / tau, axis=-1)
  log_teacher = jax.nn.log_softmax(teacher_logits / tau, axis=-1)
  kl = (jnp.exp(log_teacher) * (log_teacher - log_student)).sum(-1)
  return kl * tau**2 / student_logits.shape[-1]


def hard_distillation(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
  """Per example: cross-entropy of the student against the teacher's top class."""
  teacher_class = teacher_logits.argmax(-1)
  log_student = jax.nn.log_softmax(student_logits, axis=-1)
  return -jnp.take_along_axis(log_student, teacher_class[:, None], axis=-1)[:, 0]


def distillation_term(kind: str, student_logits: jax.Array, teacher_logits: jax.Array,
                      tau: float) -> jax.Array:
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  if kind == 'soft':
    return soft_distillation(student_logits, teacher_logits, tau)
  return hard_distillation(student_logits, teacher_logits)


def check_kind(kind: str) -> str:
  if kind not in KINDS:
    raise UserError(f'unknown config.distillation {kind!r}: use one of {KINDS}')
  return kind


def teacher_variables(teacher: nn.Module, image_shape: tuple[int, ...], path: str) -> dict:
  """The teacher's variables loaded from `path`, boxed with logical axis names as `init` boxes
  them. Every parameter must come from the file (a teacher with a fresh head would teach noise).
  `path`: a ViT `.npz`, a timm/DeiT `.pth`, or a workdir of ours (its newest checkpoint)."""
  if not path:
    raise UserError('config.distillation needs a trained teacher: set config.teacher.init_from '
                    '(a .npz, a .pth or the workdir of a finished run)')
  if not paths.exists(path):
    raise UserError(f'config.teacher.init_from {path!r} does not exist')
  abstract = jax.eval_shape(functools.partial(teacher.init, train=False), jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32))
  fresh = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), _values(abstract))
  if paths.exists(paths.join(path, 'checkpoints')):
    state = checkpoint.load_state(path)
    loaded = {'params': state['params'], **state['model_state']}
  elif path.endswith('.pth'):
    loaded = {'params': vit_weights.read_timm_pth(path, teacher.num_heads)}
  else:
    loaded = {'params': vit_weights.read_vit_npz(path)}
  filled = weights.fill(
      fresh, loaded, layers=vit_weights.VIT_LAYERS, source=f'teacher {path}',
      resize=weights.PosembResize(f'params/{vit_weights.VIT_POSEMB}',
                                  vit_weights.prefix_tokens(fresh['params'])),
      fix='check config.teacher.model against the teacher it names')
  return jax.tree.map(lambda box, value: box.replace_boxed(value) if _is_box(box) else value,
                      abstract, filled, is_leaf=_is_box)


def _is_box(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def _values(boxed):
  """The values in their boxes (nn.meta.unbox would constrain them to the current mesh)."""
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if _is_box(x) else x, boxed,
                      is_leaf=_is_box)
