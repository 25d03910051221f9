"""The Task base: what classification, detection and segmentation hand the train loop.

A task supplies its model, loss, eval outputs, host-side metric, its sources (where a split's
examples come from) and its preprocess functions. The base owns what every task needs around
them: the train stream and the eval batches, the global number of training examples (the same
on every host, whatever the per-host split sizes), the named eval splits, and the translation of
errors raised inside tf.data into one line that names the split.
"""

import abc
import functools
import re
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from vit_jax.framework import input_pipeline
from vit_jax.framework.errors import UserError, choose

Batch = dict[str, Any]


class Evaluator(abc.ABC):
  """Host-side metric over a whole eval split, fed one gathered batch at a time."""

  @abc.abstractmethod
  def update(self, outputs: dict[str, np.ndarray]) -> None:
    """`outputs`: the task's eval outputs for the global batch plus `_mask` (1 = real example)."""

  @abc.abstractmethod
  def result(self) -> dict[str, float]:
    """The metrics over every example seen since construction."""


class Task(abc.ABC):
  """What a task hands the loop. Batches are dicts of arrays with the example axis first.

  `config.input` gives `train_split`, `eval_split`, `batch_size` and `eval_batch_size`;
  `config.evals` names more eval splits, e.g. (('minival', 'train[98%:]'),), scored at the same
  steps, their metrics prefixed with their names; `config.draw_examples` how many examples of
  the first eval split `draw` pictures at each eval (defaults: vit_jax.framework.loop_config).

  Gradient accumulation: the loop may split a global batch into micro-batches, sum their
  gradients and make one update. So that the sum equals one step on the whole batch, `loss`
  divides by counts over the WHOLE global batch, which the loop computes once per step with
  `loss_normalizers` and hands to every micro-batch: `loss` and its metrics are the micro-batch's
  share of the global values (e.g. sum of per-example losses / global example count), and the
  loop sums the shares.
  """

  # config.model.name -> builder(model config) -> Flax module: the models this task trains.
  MODELS: dict[str, Callable] = {}

  def __init__(self, config):
    self.config = config
    self._eval_sources: dict[str, input_pipeline.Source] = {}

  def build_model(self, model_config=None):
    """The model `config.model.name` names, built from `model_config` (default config.model)."""
    return choose('config.model.name', self.config.model.name, self.MODELS)(
        self.config.model if model_config is None else model_config)

  # What a task supplies.

  @abc.abstractmethod
  def init_variables(self, rng: jax.Array) -> dict:
    """`model.init(...)` on a dummy batch; params may carry logical partitioning boxes."""

  def pretrained_params(self, params: dict, path: str) -> dict:
    """Fresh params (host numpy) -> params loaded from the checkpoint at `path`
    (`config.init_from`). Called only when a run starts, never on resume."""
    raise UserError(f'{type(self).__name__} cannot start from a checkpoint (config.init_from)')

  def pretrained_variables(self, variables: dict, path: str) -> dict:
    """As `pretrained_params`, for tasks whose checkpoints also hold non-trainable collections
    (DETR's frozen batch norm): all fresh variables in, all loaded variables out."""
    return dict(variables, params=self.pretrained_params(variables['params'], path))

  def frozen_variables(self) -> dict:
    """Collections `loss` reads but the loop neither trains nor saves, e.g. a distillation
    teacher's {'teacher': variables}: host arrays, boxed with logical axis names like params
    (so they are sharded as the model is), handed to `loss` inside `variables`. Default: none."""
    return {}

  @abc.abstractmethod
  def loss(self, variables: dict, batch: Batch, rng: jax.Array,
           normalizers: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
    """Training loss and scalar metrics to log, as `batch`'s shares of the global batch's values:
    sums over `batch` divided by `normalizers` (`loss_normalizers` of the global batch)."""

  def loss_normalizers(self, batch: Batch) -> dict[str, jax.Array]:
    """The counts over the global `batch` that `loss` divides by (jitted, once per step); here
    the number of examples. Tasks that average over other things (boxes, pixels) add theirs."""
    return {'examples': jnp.float32(jax.tree.leaves(batch)[0].shape[0])}

  @abc.abstractmethod
  def eval_outputs(self, variables: dict, batch: Batch) -> dict[str, jax.Array]:
    """Per-example arrays (example axis first) the evaluator needs."""

  @abc.abstractmethod
  def evaluator(self, split: str) -> Evaluator:
    """A fresh host-side metric accumulator for the eval split `split`."""

  @abc.abstractmethod
  def make_source(self, split: str) -> input_pipeline.Source:
    """Where the examples of `split` come from (raw, undecoded where possible)."""

  @abc.abstractmethod
  def train_preprocess(self) -> Callable:
    """(raw example, stateless seed) -> training example (augmented, fixed shapes)."""

  def train_batch_preprocess(self) -> Callable | None:
    """(host batch, its examples' seeds [batch, 2]) -> batch, after batching (e.g. Mixup on
    groups of rows), or None (default)."""
    return None

  @abc.abstractmethod
  def eval_preprocess(self, split: str) -> Callable:
    """raw example -> eval example (fixed shapes)."""

  @abc.abstractmethod
  def train_example_spec(self) -> dict[str, tf.TensorSpec]:
    """One training example's shapes and dtypes, from the config alone (no data is read): the
    fit report compiles the train step for them."""

  def check_batch(self, batch: Batch, split: str) -> None:
    """Checks a host batch before it goes to the devices (e.g. label ranges); raise UserError."""

  # Pictures of the predictions on a few fixed eval examples, at every eval (TensorBoard).

  def draw_outputs(self, variables: dict, batch: Batch) -> dict[str, jax.Array]:
    """Jittable: what `draw` needs from the model for `batch` (`drawn_examples`), e.g. the
    predicted labels or attention weights, example axis first. Default: nothing."""
    return {}

  def draw(self, batch: Batch, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Host: pictures of the predictions for the real examples of `batch` (host numpy), given
    `draw_outputs` on them: name -> uint8 (H, W, 3) image (see vit_jax.framework.drawing). Default: none."""
    return {}

  # What the base owns.

  @functools.cached_property
  def train_source(self) -> input_pipeline.Source:
    return self.make_source(self.config.input.train_split)

  def eval_source(self, split: str) -> input_pipeline.Source:
    if split not in self._eval_sources:
      self._eval_sources[split] = self.make_source(split)
    return self._eval_sources[split]

  def num_train_examples(self) -> int:
    """Size of the training split over all hosts: the same number on every host, so every host
    derives the same step count and schedule from `total_epochs`."""
    return self.train_source.global_num_examples

  @property
  def eval_splits(self) -> dict[str, str]:
    """Eval name -> split: 'eval' for `input.eval_split`, then `config.evals`."""
    extra = dict(self.config.evals)
    if 'eval' in extra:
      raise UserError("config.evals cannot name an eval 'eval': that is config.input.eval_split")
    return {'eval': self.config.input.eval_split, **extra}

  def train_input(self, start_example: int) -> Iterator[Batch]:
    """This host's endless stream of training batches, starting `start_example` examples into
    the global stream (deterministic: resuming at the same position gives the same batches)."""
    split = self.config.input.train_split
    return self._checked(input_pipeline.train_batches(
        self.train_source, self.train_preprocess(), self.config.input.batch_size,
        start_example=start_example, seed=self.config.seed,
        repeats=self.config.input.get('repeats', 1),
        batch_preprocess=self.train_batch_preprocess()), split)

  def eval_input(self, split: str | None = None) -> Iterable[Batch]:
    """This host's eval batches of `split` (default: the first eval split), padded, with
    `_mask`; every host yields the same count."""
    split = split or next(iter(self.eval_splits.values()))
    return self._checked(input_pipeline.eval_batches(
        self.eval_source(split), self.eval_preprocess(split),
        self.config.input.eval_batch_size), split)

  def drawn_examples(self) -> Batch | None:
    """The first `config.draw_examples` (0: none) examples of this host's first eval batch, host
    numpy with `_mask`: the same examples at every eval. None when nothing is drawn."""
    num = min(int(self.config.draw_examples or 0), self.config.input.eval_batch_size)
    if num <= 0:
      return None
    batch = next(iter(self.eval_input()), None)
    return None if batch is None else jax.tree.map(lambda x: np.asarray(x)[:num], batch)

  def check_inputs(self) -> None:
    """Builds the first batch of every eval split, so that a problem with eval data or its
    config (a label map, categories, a file) stops the run at start-up, not at the first eval."""
    for split in self.eval_splits.values():
      next(iter(self.eval_input(split)), None)

  def _checked(self, batches: input_pipeline.NumpyBatches, split: str) -> Iterator[Batch]:
    """Errors raised inside tf.data as one line that names the split; `check_batch` applied.
    However the stream ends (used up, failed, closed), its tf.data iterator is freed then."""
    try:
      while True:
        try:
          batch = next(batches)
        except StopIteration:
          return
        except tf.errors.OpError as e:
          raise UserError(f'reading split {split!r} failed: {data_error(e.message)}') from None
        self.check_batch(batch, split)
        yield batch
    finally:
      batches.close()


def data_error(message: str) -> str:
  """The user-facing part of an error raised inside tf.data: a UserError's own text, a failed
  assertion's message with the values it compared, or the last line of TF's message."""
  if 'UserError: ' in message:
    return message.rsplit('UserError: ', 1)[1].splitlines()[0]
  if 'assertion failed: ' in message:
    parts = re.findall(r'\[([^\]]*)\]', message.split('assertion failed: ', 1)[1])
    values = f' ({parts[3]} vs {parts[5]})' if len(parts) >= 6 else ''
    return (parts[0] if parts else 'assertion failed') + values
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  return lines[-1] if lines else 'unknown error'
