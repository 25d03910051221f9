"""Train-state checkpoints with orbax: save every N steps, keep K, resume from the workdir.

A checkpoint holds two items: `state` (params, optimizer state, step, RNG; restored straight into
the shardings of the running job) and `meta` (JSON: the data position and anything else the loop
needs to continue the same run).
"""

import contextlib
import errno
import gc
import sys
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from vit_jax.framework import paths
from vit_jax.framework.errors import UserError


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with the two items the train loop saves."""

  def __init__(self, directory: str, every_steps: int, keep: int):
    self.every_steps = max(int(every_steps), 1)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=True)
    self._directory = paths.absolute(directory)
    self._manager = ocp.CheckpointManager(self._directory, options=options,
                                          item_names=('state', 'meta'))

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def is_due(self, step: int) -> bool:
    """Whether `step` is on the interval (ours, not orbax's: orbax also saves a run's first)."""
    return step % self.every_steps == 0

  def save(self, step: int, state: Any, meta: dict) -> bool:
    """Saves now (asynchronously); the caller decides when. A full disk (here or in the save
    before, which finishes first) is a UserError, its partial files removed."""
    with self._disk_full_said():
      return self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, step: int, target: Any) -> tuple[Any, dict]:
    """Restores into `target`: a tree of arrays or `jax.ShapeDtypeStruct`s with shardings."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                      meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def restore_latest(self, target: Any) -> Optional[tuple[int, Any, dict]]:
    """(step, state, meta) of the newest checkpoint that reads back; None if there is none.

    A checkpoint that reads but does not fit `target` (the config changed) stops the run with a
    UserError naming the first differences, and nothing is touched. An unreadable one
    (truncated by a kill, corrupted on disk) is set aside under a new name, with a warning,
    once an older one has read back: a bad file costs steps, never the run. When none reads
    back, the run stops with a UserError and nothing is touched: a run that had checkpoints is
    not a fresh run, and starting over is the user's decision.
    """
    unreadable = []  # (step, error), newest first.
    for step in sorted(self.all_steps(), reverse=True):
      with _abandoned_reads_silenced():  # Reading the metadata opens every array too.
        try:
          saved = self._saved_shapes(step)
        except Exception as e:  # Orbax, tensorstore and JSON each raise their own types.
          unreadable.append((step, e))
          continue
      self._check_fits(step, saved, target)
      with _abandoned_reads_silenced():
        try:
          state, meta = self.restore(step, target)
        except Exception as e:  # pylint: disable=broad-except
          unreadable.append((step, e))
          continue
      for bad_step, error in unreadable:
        self._set_aside(bad_step, error)
      return step, state, meta
    if unreadable:
      reasons = '; '.join(f'{step}: {_first_line(error)}' for step, error in unreadable[:2])
      raise UserError(
          f'no checkpoint in {self._directory} reads back ({reasons}), so the run cannot '
          f'continue: to start over at step 1, move {self._directory} away (or pass a new '
          '--workdir)')
    return None

  def _saved_shapes(self, step: int) -> dict[str, tuple]:
    """'params/Transformer/...' -> shape of every array in checkpoint `step` (its metadata)."""
    path = paths.join(self._directory, str(step), 'state')
    shapes = _shapes_by_name(ocp.StandardCheckpointHandler().metadata(epath.Path(path)))
    if not shapes:
      raise ValueError(f'no arrays in the metadata of {path}')
    return shapes

  def _check_fits(self, step: int, saved: dict[str, tuple], target: Any) -> None:
    wanted = _shapes_by_name(target)
    differences = [f'{name}: checkpoint {saved.get(name, "missing")}, config '
                   f'{wanted.get(name, "missing")}'
                   # Params first: the optimizer state's differences repeat theirs.
                   for name in sorted(saved.keys() | wanted.keys(),
                                      key=lambda n: (not n.startswith('params/'), n))
                   if saved.get(name) != wanted.get(name)]
    if differences:
      raise UserError(
          f'checkpoint {step} in {self._directory} does not fit the config ({len(differences)} '
          f'arrays differ, e.g. {"; ".join(differences[:3])}): run with the config it was written '
          'with, or pass a new --workdir')

  def _set_aside(self, step: int, error: Exception) -> None:
    """Renames checkpoint `step` to a name no other set-aside checkpoint has, so orbax skips it."""
    aside = base = paths.join(self._directory, f'{step}.unreadable')
    copy = 0
    while paths.exists(aside):
      copy += 1
      aside = f'{base}.{copy}'
    logging.warning('Checkpoint %d in %s is unreadable (%s); set aside as %s, resuming from '
                    'an earlier one.', step, self._directory, _first_line(error), aside)
    if jax.process_index() == 0:
      paths.rename(paths.join(self._directory, str(step)), aside)
    multihost_utils.sync_global_devices(f'checkpoint {step} set aside')
    self._manager.reload()

  def wait(self) -> None:
    with self._disk_full_said():
      self._manager.wait_until_finished()

  def close(self) -> None:
    with self._disk_full_said():
      self._manager.close()

  @contextlib.contextmanager
  def _disk_full_said(self):
    """A save that failed for want of space: the partial checkpoint (orbax's tmp folder) is
    removed and the run stops with one line; the checkpoints written before are kept."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  # Orbax and tensorstore wrap it.
      if not _is_disk_full(e):
        raise
      if jax.process_index() == 0:
        for partial in paths.glob(paths.join(self._directory, '*.orbax-checkpoint-tmp*')):
          paths.remove(partial)
      kept = self.all_steps()
      resume = (f'it continues from checkpoint {max(kept)}' if kept else
                'no checkpoint was written, so it starts over')
      raise UserError(f'the disk is full: a checkpoint could not be written to '
                      f'{self._directory} (No space left on device); its partial files were '
                      f'removed. Free some space, or pass a --workdir on a larger disk, and run '
                      f'the same command again: {resume}') from None


@contextlib.contextmanager
def _abandoned_reads_silenced():
  """Orbax reads arrays in concurrent coroutines; when one read fails, each abandoned one prints
  a traceback as it is collected ('Exception ignored in ...'), thousands for a big model. They
  are collected here, without a word: the one warning of `_set_aside` says what happened.
  Reads still in flight in tensorstore's threads finish later, into the event loop orbax has
  closed by then ('Event loop is closed'): those stay silent for good."""
  previous = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: None
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = _without_late_completions(previous)


def _without_late_completions(hook):
  """`hook`, except for a result handed to an asyncio loop that no longer runs: nothing awaits
  it, so there is nothing to say."""
  if getattr(hook, 'drops_late_completions', False):
    return hook

  def filtered(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      hook(unraisable)
  filtered.drops_late_completions = True
  return filtered


def _is_disk_full(error: BaseException) -> bool:
  """Whether ENOSPC is behind `error` (tensorstore words it in a ValueError's text)."""
  while error is not None:
    if getattr(error, 'errno', None) == errno.ENOSPC or 'No space left on device' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _first_line(error: Exception) -> str:
  text = (str(error).splitlines() or [''])[0].split(' See full TensorStore details')[0]
  return f'{type(error).__name__}: {text[:200]}'


def _shapes_by_name(tree: Any) -> dict[str, tuple]:
  """Array shapes keyed by their path ('opt_state/1/0/mu/...'), for a train state as saved
  (dicts and lists) or as built (dataclasses and named tuples) alike."""
  def name(path):
    return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)
  return {name(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def saved_steps(workdir: str) -> list[int]:
  """The steps a run's workdir holds checkpoints of, ascending."""
  directory = paths.join(paths.absolute(workdir), 'checkpoints')
  return sorted(int(d) for d in paths.listdir(directory) if d.isdigit())


def load_state(workdir: str, step: Optional[int] = None) -> dict:
  """A run's saved train state (newest step by default) as numpy on this host, whatever devices
  or processes wrote it: for inference, analysis and notebooks."""
  directory = paths.join(paths.absolute(workdir), 'checkpoints')  # Orbax wants absolute paths.
  steps = saved_steps(workdir)
  if not steps or (step is not None and step not in steps):
    raise UserError(f'no checkpoint {"" if step is None else step} in {directory} (found '
                    f'{steps}): train first, or pass the --workdir of a run')
  path = paths.join(directory, str(steps[-1] if step is None else step), 'state')
  checkpointer = ocp.StandardCheckpointer()
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
                        checkpointer.metadata(path).item_metadata)
  return jax.device_get(checkpointer.restore(path, target))
