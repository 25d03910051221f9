"""Durations a config gives in steps or in epochs, turned into step counts.

A recipe stated in epochs (DETR: 500 epochs, the learning-rate drop at 400) stays right when
`--config.input.batch_size` changes, because epochs become steps only here, from the global
number of training examples and the global batch size: epoch e ends at step
ceil(e * examples / batch_size). Each duration is a pair of fields; a config sets one of them:

  total_steps                       total_epochs
  eval_every                        eval_every_epochs
  checkpoint_every                  checkpoint_every_epochs
  optim.schedule.warmup_steps       optim.schedule.warmup_epochs   (default: no warmup)
  optim.schedule.boundaries         optim.schedule.boundary_epochs, or boundary_fractions of
                                    the run (warmup_step decay only)
"""

import dataclasses
import math
from typing import Optional

from vit_jax.framework.errors import UserError


@dataclasses.dataclass(frozen=True)
class Epochs:
  """Epochs -> steps, for a training set of `num_train_examples` (global) and a global batch."""
  num_train_examples: int
  batch_size: int

  def to_steps(self, epochs: float) -> int:
    return math.ceil(epochs * self.num_train_examples / self.batch_size)


@dataclasses.dataclass(frozen=True)
class Steps:
  """The loop's durations in steps; `epochs` converts the schedule's (optim.make_optimizer)."""
  total: int
  eval_every: int
  checkpoint_every: int
  epochs: Epochs


def in_steps(section, steps_key: str, epochs_key: str, epochs: Optional[Epochs],
             where: str = 'config.') -> Optional[int]:
  """section[steps_key], or section[epochs_key] converted; None when neither is set."""
  steps, in_epochs = section.get(steps_key), section.get(epochs_key)
  if steps is not None and in_epochs is not None:
    raise UserError(f'{where}{steps_key} and {where}{epochs_key} are both set: keep one (a '
                    'recipe in epochs stays right when the batch size changes)')
  if in_epochs is None:
    return None if steps is None else int(steps)
  if epochs is None:
    raise UserError(f'{where}{epochs_key} needs the training set size: give {where}{steps_key}')
  return epochs.to_steps(in_epochs)


def resolve(config, num_train_examples: int) -> Steps:
  """The loop's step counts for `config`, whose global training set has `num_train_examples`."""
  epochs = Epochs(int(num_train_examples), int(config.input.batch_size))

  def required(steps_key, epochs_key):
    steps = in_steps(config, steps_key, epochs_key, epochs)
    if steps is None:
      raise UserError(f'set config.{steps_key} or config.{epochs_key}')
    if steps < 1:
      raise UserError(f'config.{steps_key} / config.{epochs_key} must give at least 1 step, '
                      f'got {steps}')
    return steps

  return Steps(total=required('total_steps', 'total_epochs'),
               eval_every=required('eval_every', 'eval_every_epochs'),
               checkpoint_every=required('checkpoint_every', 'checkpoint_every_epochs'),
               epochs=epochs)
