"""Training and eval batches on the devices ahead of the step that uses them (double buffering).

The jitted step is dispatched asynchronously: while the devices run step t, the host has already
read batch t+1 and started its host->device copy (`jax.make_array_from_process_local_data`
returns before the copy is done). The step then never waits for a copy, only for the host input
itself when that cannot keep up (scripts/input_benchmark.py measures how many cores it takes).

Batches are assembled in the source's order, one at a time, on the calling thread: every process
makes its global arrays in the same order, as multi-host needs. Batches fetched ahead and never
used change nothing on resume: the loop restarts the stream from the examples its steps used.
"""

import collections
from typing import Any, Callable, Iterable, Iterator

from jax.sharding import NamedSharding

from vit_jax.framework import sharding
from vit_jax.framework.errors import UserError

Batch = dict[str, Any]


def checked_size(size) -> int:
  """config.prefetch_batches as a count of batches on the devices (the one in use included)."""
  if isinstance(size, bool) or not isinstance(size, int) or size < 0:
    raise UserError(f'config.prefetch_batches must be a whole number >= 0, not {size!r}: '
                    '2 is double buffering, 0 or 1 turns prefetching off')
  return size


def to_devices(host_batches: Iterable[Batch], batch_sharding: NamedSharding,
               size: int = 2) -> Iterator[Batch]:
  """`host_batches` (this host's slices) as global arrays with `batch_sharding`, in the same
  order, with up to `size` of them on the devices at once: when batch t is handed out, batches
  t+1 .. t+size-1 are already being copied. `size` 0 or 1: each batch is copied when asked for.

  Shapes may change from batch to batch (padding buckets). An error raised while reading a batch
  ahead is raised when that batch is asked for, so every batch before it is still used.
  """
  return _ahead(iter(host_batches), lambda b: sharding.global_batch(b, batch_sharding),
                max(size, 1))


def _ahead(source: Iterator[Batch], put: Callable[[Batch], Batch],
           size: int) -> Iterator[Batch]:
  queue = collections.deque()  # Batches already on the devices, oldest first.
  failure = None  # The error reading the batch after the queue's last; raised in its turn.
  exhausted = False
  while True:
    while len(queue) < size and not (exhausted or failure):
      try:
        queue.append(put(next(source)))
      except StopIteration:
        exhausted = True
      except Exception as e:  # pylint: disable=broad-except  # Re-raised below, in its turn.
        failure = e
    if queue:
      yield queue.popleft()
    elif failure is not None:
      raise failure
    else:
      return
