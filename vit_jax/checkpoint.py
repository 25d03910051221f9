"""Train-state checkpoints with orbax: save every N steps, keep K, resume from the workdir.

A checkpoint holds two items: `state` (params, optimizer state, step, RNG; restored straight into
the shardings of the running job) and `meta` (JSON: the data position and anything else the loop
needs to continue the same run).
"""

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from vit_jax.errors import UserError


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with the two items the train loop saves."""

  def __init__(self, directory: str, every_steps: int, keep: int):
    self.every_steps = max(int(every_steps), 1)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=True)
    self._directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(self._directory, options=options,
                                          item_names=('state', 'meta'))

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def is_due(self, step: int) -> bool:
    """Whether `step` is on the interval (ours, not orbax's: orbax also saves a run's first)."""
    return step % self.every_steps == 0

  def save(self, step: int, state: Any, meta: dict) -> bool:
    """Saves now (asynchronously); the caller decides when."""
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

    An unreadable one (truncated by a kill, corrupted on disk) is renamed `<step>.unreadable`,
    with a warning, and the one before it is tried: a bad file costs steps, never the run.
    """
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, meta = self.restore(step, target)
        return step, state, meta
      except Exception as e:  # Orbax, tensorstore and JSON each raise their own types.
        logging.warning('Checkpoint %d in %s is unreadable (%s: %s); trying the previous one.',
                        step, self._directory, type(e).__name__, str(e).splitlines()[0][:200])
        if jax.process_index() == 0:
          os.rename(os.path.join(self._directory, str(step)),
                    os.path.join(self._directory, f'{step}.unreadable'))
        multihost_utils.sync_global_devices(f'checkpoint {step} set aside')
        self._manager.reload()
    return None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def load_state(workdir: str, step: Optional[int] = None) -> dict:
  """A run's saved train state (newest step by default) as numpy on this host, whatever devices
  or processes wrote it: for inference, analysis and notebooks."""
  directory = os.path.join(workdir, 'checkpoints')
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(
      directory) else []
  if not steps or (step is not None and step not in steps):
    raise UserError(f'no checkpoint {"" if step is None else step} in {directory} (found '
                    f'{steps}): train first, or pass the --workdir of a run')
  path = os.path.join(directory, str(steps[-1] if step is None else step), 'state')
  checkpointer = ocp.StandardCheckpointer()
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
                        checkpointer.metadata(path).item_metadata)
  return jax.device_get(checkpointer.restore(path, target))
