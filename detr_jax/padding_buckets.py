"""Padding buckets: a DETR batch pays for the pixels its images have, not for a 1333x1333 canvas.

config.input.pad_buckets is a small fixed set of padded shapes (h, w), e.g. 800x1344 for
landscape and 1344x800 for portrait images. An image's bucket is the smallest-area bucket that
holds its resized size: a function of that size alone. Preprocessing pads every image to the
canvas (the buckets' largest height and width); the stream then regroups a window of batches so
that each batch holds images of one bucket and is cut down to it. Each image is then padded to
its own bucket whichever images share its batch, so results do not depend on batch composition.

What padding does to the outputs (tests/test_detr_buckets.py): images are zero-padded at the
bottom and right with a pixel mask; bucket sides are multiples of the backbone's stride 32, so
PyTorch's nearest rule src = floor(dst * in / out) = 32 * dst reads the same mask pixel for a
feature cell in every bucket; the sine position embedding is normalised by the unpadded extent;
attention never reads a padded key. But the backbone's convolutions read the padding next to
the image: an image's features agree across two buckets only when both leave enough padding
below and right of it (ResNet-50 at quarter width, random weights: 128 px with zero-mean frozen
batch norm, 256 px with non-zero offsets, where 32 px still moved them by 4-7% of their
largest value and a bucket the image fills exactly by ~30%). A bucket that fits an image
snugly is what saves the pixels, so an image must always get the same bucket: its own,
whichever images share its batch (eval: always; training: all but the few left over in a
window, below). Pad-to-the-largest-in-the-batch would make outputs depend on batch-mates.

The regrouping keeps the stream deterministic and resumable: window w of `window` batches is
always the same examples (those of the plain stream), turned into exactly `window` batches:
first every full batch of one bucket (in the order they fill), then the few left over, by
orientation and bucket, padded to the smallest bucket that holds them all (else the canvas).
So the shapes a run compiles are the buckets plus at most the canvas.

Several hosts: each holds only its rows of every global batch, and a global batch has one shape.
So once per window the hosts exchange their examples' image sizes (a few ints each, in stream
order: every host makes the same exchanges in the same order), and each computes the same plan
of the whole window (`global_plan`): a batch of one bucket once every host has its local batch
size of examples of that bucket, each host filling its rows with its own; then the leftovers,
each host's sorted as above, the j-th chunk of every host making the j-th leftover batch. Every
host emits the same number of batches (the plain stream's) with the same shapes in the same
order, and one host is the case P = 1 of the same plan. The exchange is a device all-gather, so
once per window the host waits for the step in flight. Eval (`eval_stream`) exchanges sizes the
same way but never pads an image beyond its bucket: a host short of a bucket fills its rows of
that bucket's batch with blank examples.
"""

import itertools
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from vit_jax.framework.errors import UserError

STRIDE = 32  # DETR-R50's output stride: bucket sides are multiples of it (the mask rule).
# Arrays padded to the canvas in a preprocessed batch (panoptic data adds segments).
PADDED_KEYS = ('image', 'pixel_mask', 'segments')

Shape = tuple[int, int]


def check(buckets, max_size: Optional[int], largest_scale: int) -> tuple[Shape, ...]:
  """config.input.pad_buckets checked and sorted by area (ties keep the config's order): sides
  multiples of STRIDE, and together they must hold every size the resize can give, i.e. a short
  side up to `largest_scale` with a long side up to `max_size`, in both orientations."""
  shapes = []
  for bucket in buckets:
    if (len(bucket) != 2 or any(int(s) != s or s <= 0 or s % STRIDE for s in bucket)):
      raise UserError(f'config.input.pad_buckets entry {tuple(bucket)} must be (height, width), '
                      f'both positive multiples of {STRIDE}, e.g. (800, 1344)')
    shapes.append((int(bucket[0]), int(bucket[1])))
  if not max_size:
    raise UserError('config.input.pad_buckets needs config.input.max_size: without it the '
                    'resized long side has no bound')
  short = min(largest_scale, max_size)
  for needed in ((short, max_size), (max_size, short)):
    if not any(h >= needed[0] and w >= needed[1] for h, w in shapes):
      raise UserError(f'config.input.pad_buckets {tuple(shapes)} hold no {needed[0]}x{needed[1]} '
                      f'image (short side up to {largest_scale}, long side up to max_size '
                      f'{max_size}): add a bucket of at least that size, rounded up to '
                      f'{STRIDE}')
  return tuple(sorted(shapes, key=lambda s: s[0] * s[1]))


def canvas(buckets: Sequence[Shape]) -> Shape:
  """The shape every image is padded to first: it holds every bucket."""
  return max(h for h, _ in buckets), max(w for _, w in buckets)


def bucket_of(size, buckets: Sequence[Shape]) -> Shape:
  """The smallest bucket (buckets sorted by area) holding an image of `size` (h, w), else the
  canvas."""
  for h, w in buckets:
    if size[0] <= h and size[1] <= w:
      return h, w
  return canvas(buckets)


def image_sizes(pixel_mask: np.ndarray) -> np.ndarray:
  """[B, H, W] pixel masks (1 = image, at the top left) -> [B, 2] image (h, w); 0 for none."""
  inside = np.asarray(pixel_mask) > 0
  return np.stack([inside.any(2).sum(1), inside.any(1).sum(1)], 1)


def _cut(example: dict, bucket: Shape) -> dict:
  """A canvas-padded example cut down to `bucket` (a copy, so that the canvas-sized batch it
  came from is freed while it waits)."""
  h, w = bucket
  return {key: value[:h, :w].copy() if key in PADDED_KEYS else value
          for key, value in example.items()}


def _blank(example: dict) -> dict:
  """A zero example shaped like `example`, its padded arrays empty (`_stack` pads them)."""
  return {key: np.zeros_like(value[:0, :0] if key in PADDED_KEYS else value)
          for key, value in example.items()}


def _stack(examples: list[dict], shape: Shape) -> dict:
  """Examples, each cut to its own bucket, as one batch zero-padded to `shape`."""
  batch = {}
  for key in examples[0]:
    if key not in PADDED_KEYS:
      batch[key] = np.stack([ex[key] for ex in examples])
      continue
    first = examples[0][key]
    batch[key] = np.zeros((len(examples),) + shape + first.shape[2:], first.dtype)
    for i, ex in enumerate(examples):  # Beyond its image an example is zeros: cut or padded.
      h, w = min(shape[0], ex[key].shape[0]), min(shape[1], ex[key].shape[1])
      batch[key][i, :h, :w] = ex[key][:h, :w]
  return batch


def _examples(batch: dict) -> list[dict]:
  count = len(next(iter(batch.values())))
  return [{key: value[i] for key, value in batch.items()} for i in range(count)]


def _grouping_key(bucket: Shape, buckets: Sequence[Shape]) -> tuple:
  return (bucket[0] > bucket[1], list(buckets).index(bucket) if bucket in buckets else len(buckets))


def _stream_order(num_processes: int, num_examples: int, local_batch: int):
  """(process, local index) of a window's examples in global stream order: global batch j is
  process 0's rows of it, then process 1's, ..."""
  for first in range(0, num_examples, local_batch):
    for process in range(num_processes):
      for k in range(first, first + local_batch):
        yield process, k


Rows = list[list[int]]  # Per process, the local indices of its rows of one batch.


def global_plan(sizes, local_batch: int, buckets: Sequence[Shape]) -> list[tuple[Shape, Rows]]:
  """One window on P processes: `sizes` [P, n, 2], the image sizes of each process's n examples
  in its stream order -> n / local_batch batches as (shape, rows), the same on every process.
  Full batches of one bucket, in the order they fill, take `local_batch` examples of that bucket
  from every process; then the rest, each process's sorted by orientation and bucket, its j-th
  chunk in the j-th batch, padded to the smallest bucket holding all of that batch's images."""
  sizes = np.asarray(sizes)
  num_processes, num_examples = sizes.shape[:2]
  if num_examples % local_batch:
    raise ValueError(f'{num_examples} examples do not make whole batches of {local_batch}')
  own = [[bucket_of(size, buckets) for size in process] for process in sizes]
  waiting: dict[Shape, Rows] = {}  # Bucket -> each process's examples of it, not yet planned.
  batches = []
  for process, k in _stream_order(num_processes, num_examples, local_batch):
    queues = waiting.setdefault(own[process][k], [[] for _ in range(num_processes)])
    queues[process].append(k)
    if all(len(queue) >= local_batch for queue in queues):  # Only this process just got there.
      batches.append((own[process][k], [queue[:local_batch] for queue in queues]))
      for queue in queues:
        del queue[:local_batch]
  # The rest by orientation, then bucket, so that few batches mix landscape and portrait
  # (those need the canvas). Every process has the same number left: full batches took
  # local_batch from each.
  rest = [sorted((k for queues in waiting.values() for k in queues[process]),
                 key=lambda k, p=process: _grouping_key(own[p][k], buckets) + (k,))
          for process in range(num_processes)]
  for first in range(0, len(rest[0]), local_batch):
    rows = [process_rest[first:first + local_batch] for process_rest in rest]
    largest = np.max([sizes[p][k] for p, process_rows in enumerate(rows) for k in process_rows], 0)
    batches.append((bucket_of(largest, buckets), rows))
  return batches


def plan(sizes: Sequence, batch_size: int, buckets: Sequence[Shape]) -> list[tuple[Shape, list]]:
  """One window on one process: examples with image `sizes` (in stream order) ->
  len(sizes) / batch_size batches as (shape, example indices) (`global_plan` with P = 1)."""
  return [(shape, rows[0]) for shape, rows in global_plan([sizes], batch_size, buckets)]


def _this_process_only(local_sizes: np.ndarray) -> np.ndarray:
  return local_sizes[None]


def all_processes(local_sizes: np.ndarray) -> np.ndarray:
  """This process's [n, 2] int sizes -> every process's, [P, n, 2]. A collective: every process
  calls it at the same point of its stream (the streams pull windows in the same order)."""
  return np.asarray(multihost_utils.process_allgather(local_sizes.astype(np.int32)))


def train_stream(batches: Iterator[dict], buckets: Sequence[Shape], window: int,
                 skip: int = 0, process_index: int = 0,
                 gather: Callable[[np.ndarray], np.ndarray] = _this_process_only
                 ) -> Iterator[dict]:
  """Windows of `window` canvas-padded batches (this process's rows of global batches), each
  regrouped by `global_plan` into as many batches cut to their buckets. `batches` starts at a
  window's first batch; `skip` batches of the first window are dropped (a resume inside a
  window). `gather`: this process's image sizes -> every process's (`all_processes` on several
  hosts). A window's examples wait in host memory at their own bucket's size (COCO, batch 64,
  window 8: ~6 GB by the report's mean bucket, shared out among the hosts)."""
  while True:
    examples, sizes, local_batch = [], [], 0
    for batch in itertools.islice(batches, window):  # One canvas-sized batch in memory at once.
      local_batch = len(batch['pixel_mask'])
      sizes += list(image_sizes(batch['pixel_mask']))
      examples += [_cut(ex, bucket_of(size, buckets))
                   for ex, size in zip(_examples(batch), sizes[-local_batch:])]
    if not examples:
      return
    for shape, rows in global_plan(gather(np.stack(sizes)), local_batch, buckets)[skip:]:
      yield _stack([examples[k] for k in rows[process_index]], shape)
    skip = 0


def eval_stream(batches: Iterable[dict], buckets: Sequence[Shape], window: int = 1,
                process_index: int = 0,
                gather: Callable[[np.ndarray], np.ndarray] = _this_process_only
                ) -> Iterator[dict]:
  """Eval batches (with `_mask`, 1 = real) regrouped so that each batch holds real examples of
  one bucket, cut to it, with zero examples (`_mask` 0) where a process has too few. Every real
  example comes out once, padded to its own bucket.

  One process: a bucket's batch goes out once it is full, and its last one at the end. Several
  (`gather` as in `train_stream`, once per `window` batches): a bucket's batch goes out once
  every process has a local batch of it; after each window, also once any process has, the
  others adding what they have (so that no process holds more than a local batch of a bucket
  past a window); the rest at the end. Every process emits the same number of batches."""
  batches = iter(batches)
  waiting: dict[Shape, list[list]] = {}  # Bucket -> per process: its examples (others: None).
  blank, local_batch = None, 0

  def emit(bucket):
    queues = waiting[bucket]
    mine = queues[process_index][:local_batch]
    for queue in queues:
      del queue[:local_batch]
    if not any(queues):
      del waiting[bucket]  # Re-created when the bucket comes back: one process's dict order.
    return _stack(mine + [blank] * (local_batch - len(mine)), bucket)

  while True:
    examples, sizes = [], []
    for batch in itertools.islice(batches, window):
      local_batch = len(batch['_mask'])
      examples += _examples(batch)
      # Filler (`_mask` 0) counts as size 0x0: every process skips every process's filler.
      sizes += list(image_sizes(batch['pixel_mask']) * (batch['_mask'][:, None] > 0))
    if not examples:
      break
    if blank is None:
      blank = _blank(examples[0])
    all_sizes = gather(np.stack(sizes))
    for process, k in _stream_order(len(all_sizes), len(examples), local_batch):
      if not all_sizes[process][k].all():
        continue
      bucket = bucket_of(all_sizes[process][k], buckets)
      queues = waiting.setdefault(bucket, [[] for _ in all_sizes])
      queues[process].append(_cut(examples[k], bucket) if process == process_index else None)
      if all(len(queue) >= local_batch for queue in queues):
        yield emit(bucket)
    for bucket in list(waiting):  # Several processes: bound what each holds.
      while bucket in waiting and max(map(len, waiting[bucket])) >= local_batch:
        yield emit(bucket)
  for bucket in list(waiting):
    while bucket in waiting:
      yield emit(bucket)


_said_multi_host = []


def say_multi_host(num_processes: int, window: int) -> None:
  """Logs once how several hosts regroup."""
  if num_processes > 1 and not _said_multi_host:
    _said_multi_host.append(True)
    logging.info('config.input.pad_buckets: %d hosts exchange their images\' sizes once per '
                 '%d batches and plan the same bucketed batches', num_processes, window)
