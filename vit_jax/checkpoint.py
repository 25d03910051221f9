"""Train-state checkpoints with orbax: save every N steps, keep K, resume from the workdir.

A checkpoint holds two items: `state` (params, optimizer state, step, RNG; restored straight into
the shardings of the running job) and `meta` (JSON: the data position and anything else the loop
needs to continue the same run).
"""

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with the two items the train loop saves."""

  def __init__(self, directory: str, every_steps: int, keep: int):
    self.every_steps = max(int(every_steps), 1)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory), options=options, item_names=('state', 'meta'))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

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

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
