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
"""

import itertools
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
from absl import logging

from vit_jax.errors import UserError

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


def _own(example: dict, buckets: Sequence[Shape]) -> tuple[Shape, dict]:
  """A canvas-padded example's bucket, and the example cut down to it (a copy, so that the
  canvas-sized batch it came from is freed while it waits)."""
  bucket = bucket_of(image_sizes(example['pixel_mask'][None])[0], buckets)
  h, w = bucket
  return bucket, {key: value[:h, :w].copy() if key in PADDED_KEYS else value
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


def plan(sizes: Sequence, batch_size: int, buckets: Sequence[Shape]) -> list[tuple[Shape, list]]:
  """One window: examples with image `sizes` (in stream order) -> len(sizes) / batch_size
  batches as (shape, example indices): full batches of one bucket in the order they fill, then
  the rest (by orientation and bucket), each padded to the smallest bucket holding all of its
  images."""
  if len(sizes) % batch_size:
    raise ValueError(f'{len(sizes)} examples do not make whole batches of {batch_size}')
  waiting: dict[Shape, list[int]] = {}
  batches = []
  for i, size in enumerate(sizes):
    bucket = bucket_of(size, buckets)
    waiting.setdefault(bucket, []).append(i)
    if len(waiting[bucket]) == batch_size:
      batches.append((bucket, waiting.pop(bucket)))
  # The rest by orientation, then bucket, so that few batches mix landscape and portrait
  # (those need the canvas).
  rest = sorted((i for indices in waiting.values() for i in indices),
                key=lambda i: _grouping_key(bucket_of(sizes[i], buckets), buckets) + (i,))
  for start in range(0, len(rest), batch_size):
    chunk = rest[start:start + batch_size]
    largest = np.max(np.asarray([sizes[i] for i in chunk]), 0)
    batches.append((bucket_of(largest, buckets), chunk))
  return batches


def train_stream(batches: Iterator[dict], buckets: Sequence[Shape], window: int,
                 skip: int = 0) -> Iterator[dict]:
  """Windows of `window` canvas-padded batches, each regrouped by `plan` into as many batches
  cut to their buckets. `batches` starts at a window's first batch; `skip` batches of the first
  window are dropped (a resume inside a window). A window's examples wait in host memory at
  their own bucket's size (COCO, batch 64, window 8: ~6 GB by the report's mean bucket)."""
  while True:
    examples, batch_size = [], 0
    for batch in itertools.islice(batches, window):  # One canvas-sized batch in memory at once.
      batch_size = len(batch['pixel_mask'])
      examples += [_own(ex, buckets)[1] for ex in _examples(batch)]
    if not examples:
      return
    sizes = [image_sizes(ex['pixel_mask'][None])[0] for ex in examples]
    for shape, indices in plan(sizes, batch_size, buckets)[skip:]:
      yield _stack([examples[i] for i in indices], shape)
    skip = 0


def eval_stream(batches: Iterable[dict], buckets: Sequence[Shape]) -> Iterator[dict]:
  """Eval batches (with `_mask`, 1 = real) regrouped so that each batch holds real examples of
  one bucket, cut to it; the last batch of each bucket is filled with zero examples (`_mask`
  0). Every real example comes out once, padded to its own bucket."""
  waiting: dict[Shape, list[dict]] = {}
  batch_size = 0
  for batch in batches:
    batch_size = len(batch['_mask'])
    for example in _examples(batch):
      if not example['_mask']:
        continue  # Filler: every bucket's last batch gets its own.
      bucket, example = _own(example, buckets)
      waiting.setdefault(bucket, []).append(example)
      if len(waiting[bucket]) == batch_size:
        yield _stack(waiting.pop(bucket), bucket)
  for bucket, examples in waiting.items():
    blank = {key: np.zeros_like(value) for key, value in examples[0].items()}
    yield _stack(examples + [blank] * (batch_size - len(examples)), bucket)


_said_multi_host = []


def single_host(num_processes: int) -> bool:
  """Whether regrouping may run: with several hosts each would group its own slice differently,
  and a global batch has one shape, so they all keep the canvas (logged once)."""
  if num_processes > 1 and not _said_multi_host:
    _said_multi_host.append(True)
    logging.info('config.input.pad_buckets: %d hosts, so every batch keeps the canvas (the '
                 'regrouping is per host and hosts must agree on a batch shape)', num_processes)
  return num_processes == 1
