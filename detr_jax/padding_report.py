"""What padding costs DETR: padded pixels per image for a fixed canvas, per-batch max padding and
padding buckets, on a set of image sizes (a COCO annotation file's, or a stated sample).

scripts/detr_padding_report.py prints it. The work of the backbone and encoder grows with the
padded pixels (the encoder's attention faster), so pixels per image is the measure.
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from detr_jax import detection_input, padding_buckets, transforms
from vit_jax.framework.errors import UserError

# Not measured: COCO 2017 is not downloadable here. An assumed mixture of (height, width) with
# weights, from the facts that nearly all COCO images have a long side of 640 and most are
# landscape 640x480 or 640x427, fewer portrait 480x640 or 427x640.
ASSUMED_COCO_SIZES = (((480, 640), 0.40), ((427, 640), 0.30), ((360, 640), 0.05),
                      ((640, 480), 0.10), ((640, 427), 0.10), ((640, 640), 0.05))


@dataclasses.dataclass(frozen=True)
class Row:
  """One padding scheme: mean padded pixels per image and the distinct batch shapes it uses."""
  name: str
  pixels_per_image: float
  shapes: int


def sample_sizes(count: int, seed: int = 0) -> np.ndarray:
  """`count` (h, w) drawn from ASSUMED_COCO_SIZES."""
  shapes = np.array([s for s, _ in ASSUMED_COCO_SIZES])
  weights = np.array([w for _, w in ASSUMED_COCO_SIZES])
  return shapes[np.random.default_rng(seed).choice(len(shapes), count, p=weights / weights.sum())]


def annotation_sizes(path: str) -> np.ndarray:
  """(h, w) of every image listed in a COCO annotation json."""
  images = detection_input.read_json(path).get('images') or []
  if not images or any(not im.get('height') or not im.get('width') for im in images):
    raise UserError(f'{path} lists no images with height and width: give a COCO instances file')
  return np.array([(im['height'], im['width']) for im in images], np.int64)


def resized(sizes: np.ndarray, scales: np.ndarray, max_size: int) -> np.ndarray:
  """(h, w) after DETR's resize (short side to `scales`, long side at most `max_size`)."""
  h, w = transforms.target_size(tf.constant(sizes[:, 0]), tf.constant(sizes[:, 1]),
                                tf.constant(scales), max_size)
  return np.stack([h.numpy(), w.numpy()], 1)


def rows(sizes: np.ndarray, buckets: Sequence, batch_size: int, window: Optional[int],
         fixed: Sequence[int], per_device: int = 2, seed: int = 0,
         processes: int = 1) -> list[Row]:
  """Padding schemes on resized image `sizes` taken in a random order (batches of
  `batch_size`). window: training's regrouping of that many batches at a time (the last
  partial window dropped), on `processes` hosts each holding its rows of every batch; None:
  eval's, over the whole split on one host (each bucket's last batch filled with blank
  examples, which cost as much as real ones)."""
  if processes < 1 or batch_size % processes:
    raise UserError(f'--processes {processes} must be a positive divisor of the batch size '
                    f'{batch_size}')
  order = np.random.default_rng(seed).permutation(len(sizes))
  sizes = sizes[order]
  buckets = tuple(sorted((tuple(b) for b in buckets), key=lambda s: s[0] * s[1]))

  def batch_max(size):
    batches = sizes[:len(sizes) // size * size].reshape(-1, size, 2).max(1)
    return Row(f'per-batch max, batch {size}', float(np.prod(batches, 1).mean()),
               len({tuple(b) for b in batches}))

  own = np.array([padding_buckets.bucket_of(s, buckets) for s in sizes])
  if window is None:
    shapes, counts = np.unique(own, axis=0, return_counts=True)
    batches = -(-counts // batch_size)
    grouped = Row(f'buckets, batch {batch_size} grouped over the split',
                  float((np.prod(shapes, 1) * batches).sum() * batch_size / len(sizes)),
                  len(shapes))
  else:
    span, local = window * batch_size, batch_size // processes
    # Each host's rows of the window's batches, in its stream order: [processes, window * local].
    hosts = lambda start: sizes[start:start + span].reshape(window, processes, local, 2).swapaxes(
        0, 1).reshape(processes, window * local, 2)
    streamed = [shape for start in range(0, len(sizes) - span + 1, span)
                for shape, _ in padding_buckets.global_plan(hosts(start), local, buckets)]
    on_hosts = f' on {processes} hosts' if processes > 1 else ''
    grouped = Row(f'buckets, batch {batch_size} grouped in windows of {window}{on_hosts}',
                  float(np.prod(streamed, 1).mean()) if streamed else float('nan'),
                  len(set(streamed)))
  return [Row('image itself (no padding)', float(np.prod(sizes, 1).mean()), 0),
          Row(f'fixed canvas {fixed[0]}x{fixed[1]}', float(np.prod(fixed)), 1),
          batch_max(batch_size), batch_max(per_device),
          Row('buckets, each image its own', float(np.prod(own, 1).mean()),
              len({tuple(b) for b in own})), grouped]


def report(sizes: np.ndarray, buckets: Sequence, *, train_scales: Sequence[int],
           eval_scale: int, max_size: int, batch_size: int, window: int,
           fixed: Sequence[int], seed: int = 0, processes: int = 1) -> dict[str, list[Row]]:
  """{'train': rows at scales drawn uniformly from train_scales (the multi-scale branch),
  on `processes` hosts, 'eval': rows at eval_scale}."""
  padding_buckets.check(buckets, max_size, max(tuple(train_scales) + (eval_scale,)))
  draws = np.random.default_rng(seed).choice(np.asarray(train_scales), len(sizes))
  settings = dict(buckets=buckets, batch_size=batch_size, fixed=fixed, seed=seed)
  return {'train': rows(resized(sizes, draws, max_size), window=window, processes=processes,
                        **settings),
          'eval': rows(resized(sizes, np.full(len(sizes), eval_scale), max_size), window=None,
                       **settings)}


def format_table(name: str, table: list[Row]) -> str:
  """A table with each row's saving against the fixed canvas."""
  fixed = next(r.pixels_per_image for r in table if r.name.startswith('fixed canvas'))
  width = max([44] + [len(r.name) for r in table])
  lines = [f'{name}:', f'  {"padding":<{width}} {"pixels/image":>13} {"vs fixed":>9} '
           f'{"shapes":>7}']
  for r in table:
    lines.append(f'  {r.name:<{width}} {r.pixels_per_image:>13,.0f} '
                 f'{fixed / r.pixels_per_image:>8.2f}x {r.shapes or "-":>7}')
  return '\n'.join(lines)
