"""The optax chain a config asks for: clipping, weight decay, optimizer, schedule, per-group lrs.

config.optim fields (see configs/ for complete examples):
  name            sgd | momentum | nesterov | adam | adamw
  lr              peak learning rate
  schedule        dict(name=constant|warmup_cosine|warmup_linear|warmup_poly|warmup_step,
                       warmup_steps | warmup_epochs, end_value, power, decay_factor,
                       boundaries | boundary_epochs | boundary_fractions); durations.py
                       turns epochs into steps
  momentum        for momentum / nesterov (default 0.9); accumulator_dtype, e.g. 'bfloat16'
  b1, b2, eps     for adam / adamw; mu_dtype, e.g. 'bfloat16'
  weight_decay    adamw: decoupled (multiplied by lr, as optax and torch do);
                  others: L2 added to the gradient (torch SGD / Adam semantics)
  wd_times_lr     adamw: True (default) decays by lr_t * weight_decay; False: big_vision's
                  absolute decay, update = -(lr_t / lr) * (lr * adam + weight_decay * param),
                  the decay following the schedule's shape but not the lr (AugReg's wd 1e-4 =
                  "wd 0.1" x lr 1e-3); lr_mults scale the decay too (big_vision's do not)
  wd_mask         regex over parameter paths ('a/b/kernel') that are decayed
  grad_clip_norm  global-norm clipping before anything else (None: off)
  lr_mults        ((regex, multiplier), ...): first match wins; e.g. DETR's backbone. 0 freezes:
                  the group's gradients are zeroed first, so they stay out of the clipping norm
                  (torch's frozen parameters have no gradient) and XLA drops their computation
  accum_steps     read by the train loop: micro-batches per step, their gradients summed in one
                  buffer before the single update (no accumulator in the optimizer state)
"""

import re
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from vit_jax.framework import durations
from vit_jax.framework.errors import UserError

OPTIMIZERS = ('sgd', 'momentum', 'nesterov', 'adam', 'adamw')
SCHEDULES = ('constant', 'warmup_cosine', 'warmup_linear', 'warmup_poly', 'warmup_step')


def param_path(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator='/')


def regex_mask(regex: str) -> Callable:
  """A mask function for optax: True where the parameter's path fully matches `regex`."""
  pattern = re.compile(regex)
  return lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: bool(pattern.fullmatch(param_path(path))), params)


def make_schedule(lr: float, schedule, total_steps: int,
                  epochs: Optional[durations.Epochs] = None) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then the named decay over the remaining steps. `epochs`
  converts durations given in epochs (the train loop passes it; without it, steps only)."""
  name = schedule.get('name', 'constant')
  where = 'config.optim.schedule.'
  warmup = durations.in_steps(schedule, 'warmup_steps', 'warmup_epochs', epochs, where) or 0
  end = float(schedule.get('end_value', 0.0))
  decay_steps = max(total_steps - warmup, 1)
  if name == 'constant':
    decay = optax.constant_schedule(lr)
  elif name == 'warmup_cosine':
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
  elif name == 'warmup_linear':
    decay = optax.linear_schedule(lr, end, decay_steps)
  elif name == 'warmup_poly':
    decay = optax.polynomial_schedule(lr, end, float(schedule.get('power', 1.0)), decay_steps)
  elif name == 'warmup_step':
    factor = float(schedule.get('decay_factor', 0.1))
    boundaries = _decay_boundaries(schedule, total_steps, epochs, where)
    decay = optax.piecewise_constant_schedule(lr, {b - warmup: factor for b in boundaries})
  else:
    raise UserError(f'unknown {where}name {name!r}: choose one of {SCHEDULES}')
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def _decay_boundaries(schedule, total_steps, epochs, where) -> list[int]:
  """The steps of the x decay_factor drops: `boundaries` in steps, `boundary_epochs`, or
  `boundary_fractions` of the run; one of them."""
  given = [key for key in ('boundaries', 'boundary_epochs', 'boundary_fractions')
           if schedule.get(key) is not None]
  if len(given) > 1:
    raise UserError(f'{where}{" and ".join(given)} are all set: keep one')
  if not given:
    return []
  values = schedule.get(given[0])
  if given[0] == 'boundaries':
    return [int(b) for b in values]
  if given[0] == 'boundary_fractions':
    return [round(f * total_steps) for f in values]
  if epochs is None:
    raise UserError(f'{where}boundary_epochs needs the training set size: give boundaries')
  return [epochs.to_steps(e) for e in values]


def _dtype(name):
  return None if name is None else jnp.dtype(name)


def make_optimizer(optim, total_steps: int, epochs: Optional[durations.Epochs] = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (transformation, learning-rate schedule) for `config.optim`; `epochs` converts
  schedule durations given in epochs (durations.resolve(...).epochs)."""
  name = optim.name
  if name not in OPTIMIZERS:
    raise UserError(f'unknown config.optim.name {name!r}: choose one of {OPTIMIZERS}')
  schedule = make_schedule(float(optim.lr), optim.get('schedule', {}), total_steps,
                           epochs)
  wd = float(optim.get('weight_decay', 0.0) or 0.0)
  wd_mask = regex_mask(optim.get('wd_mask', r'.*/kernel'))
  if wd and not optim.get('wd_times_lr', True):
    if name != 'adamw' or float(optim.lr) <= 0:
      raise UserError('config.optim.wd_times_lr=False (big_vision\'s absolute weight decay) needs '
                      '--config.optim.name=adamw and a positive --config.optim.lr')
    wd /= float(optim.lr)  # adamw multiplies it by lr_t: what is left is the schedule's shape.

  chain = []
  if optim.get('grad_clip_norm'):
    chain.append(optax.clip_by_global_norm(float(optim.grad_clip_norm)))
  if name == 'adamw':
    chain.append(optax.adamw(schedule, b1=optim.get('b1', 0.9), b2=optim.get('b2', 0.999),
                             eps=optim.get('eps', 1e-8), weight_decay=wd, mask=wd_mask,
                             mu_dtype=_dtype(optim.get('mu_dtype'))))
  else:
    if wd:
      chain.append(optax.add_decayed_weights(wd, mask=wd_mask))
    if name == 'adam':
      chain.append(optax.adam(schedule, b1=optim.get('b1', 0.9), b2=optim.get('b2', 0.999),
                              eps=optim.get('eps', 1e-8), mu_dtype=_dtype(optim.get('mu_dtype'))))
    else:
      momentum = None if name == 'sgd' else float(optim.get('momentum', 0.9))
      chain.append(optax.sgd(schedule, momentum=momentum, nesterov=name == 'nesterov',
                             accumulator_dtype=_dtype(optim.get('accumulator_dtype'))))

  lr_mults = tuple(optim.get('lr_mults', ()) or ())
  if lr_mults:
    chain.append(_scale_by_group(lr_mults))
  transformation = optax.chain(*chain)
  if any(float(mult) == 0 for _, mult in lr_mults):
    transformation = _frozen_first(transformation, _frozen_mask(lr_mults))
  return transformation, schedule


def _frozen_first(inner: optax.GradientTransformation, frozen: Callable
                  ) -> optax.GradientTransformation:
  """`inner` on gradients whose frozen parameters' entries are zeros. Its state is `inner`'s
  alone, so checkpoints are the same with or without frozen groups."""
  def update(updates, state, params=None):
    updates = jax.tree.map(lambda u, f: jnp.zeros_like(u) if f else u, updates, frozen(updates))
    return inner.update(updates, state, params)
  return optax.GradientTransformation(inner.init, update)


def _group_of(lr_mults, path) -> Optional[int]:
  """The index of the first lr_mults regex the parameter's path matches (None: no match)."""
  name = param_path(path)
  return next((i for i, (regex, _) in enumerate(lr_mults) if re.fullmatch(regex, name)), None)


def _frozen_mask(lr_mults) -> Callable:
  def frozen(path, _):
    group = _group_of(lr_mults, path)
    return group is not None and float(lr_mults[group][1]) == 0
  return lambda params: jax.tree_util.tree_map_with_path(frozen, params)


def _scale_by_group(lr_mults) -> optax.GradientTransformation:
  """Multiplies each parameter's update by the multiplier of the first regex its path matches."""
  def label(path, _):
    group = _group_of(lr_mults, path)
    return 'default' if group is None else f'group_{group}'

  transforms = {f'group_{i}': optax.scale(float(mult)) for i, (_, mult) in enumerate(lr_mults)}
  transforms['default'] = optax.identity()
  return optax.multi_transform(
      transforms, lambda params: jax.tree_util.tree_map_with_path(label, params))
