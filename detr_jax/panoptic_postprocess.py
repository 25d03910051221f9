"""DETR's panoptic post-process (the original's PostProcessPanoptic, `models/segmentation.py`):
one image's class logits and mask logits -> a segment-id map and its segments.

1. Keep the queries whose most likely class (softmax over all classes) is not no-object and has
   probability > 0.85.
2. Upsample the kept queries' mask logits bilinearly to the processed (model input) image size;
   each pixel goes to the kept query with the largest logit.
3. Resize the map to the target (original) size with PIL's nearest rule; count each segment.
4. The first pass merges the kept queries of one stuff class into its first query; every query
   whose segment has 4 pixels or fewer (so every merged-away stuff duplicate) is then dropped
   and steps 2-3 run again without it, until no segment is that small. As the original, the
   later passes do not merge: a stuff duplicate's pixels go to whichever query comes next
   there, so a stuff class keeps only its first query.

Ids here start at 1 (segment i is the i-th remaining query in query order) and 0 marks pixels of
no segment (none kept), panopticapi's VOID; the original numbers from 0, which panopticapi
tells from VOID only through the segments list.

Step 2 has two rules (MASK_RULES). Masks come at stride 4 of the zero-padded image batch.
- 'original' (the default; the rule the paper's PQ was computed with): the mask logits of the
  padded batch, ceil(padded / 4) cells a side, are stretched to the image size, as the
  original's `interpolate(masks, size)` does. It is exact only where the image fills its
  padding; elsewhere the mask is squeezed towards the top-left (3-14% of pixels change owner
  on a random model's outputs). Our batches are padded to a fixed canvas, so the caller names
  the padding the original would have had (`padded_size`): the image's own size by default, a
  batch of one image as the original's evaluation with --batch_size 1.
- 'cropped': the mask logits upsampled 4x and cropped to the image, as the original's
  PostProcessSegm does; independent of the padding. On the shapes job's model (1000 steps) the
  rules agree at its 64 px eval size (the image fills its canvas); at 54 px on the 64 px canvas
  PQ is 0.412 by the original's rule and 0.408 cropped.
"""

from typing import Sequence

import numpy as np
from PIL import Image

THRESHOLD = 0.85
MAX_DROPPED_AREA = 4  # Segments of at most this many pixels are dropped.
STRIDE = 4  # Of the mask logits, relative to the padded image.
MASK_RULES = ('original', 'cropped')


def bilinear_weights(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in]: torch's interpolate(mode='bilinear', align_corners=False) along one
  axis (pixel centres, edges clamped, no antialiasing) as a matrix."""
  scale = size_in / size_out
  source = np.maximum((np.arange(size_out) + 0.5) * scale - 0.5, 0.)
  low = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
  high = np.minimum(low + 1, size_in - 1)
  frac = source - low
  weights = np.zeros((size_out, size_in), np.float32)
  rows = np.arange(size_out)
  np.add.at(weights, (rows, low), 1. - frac)
  np.add.at(weights, (rows, high), frac)
  return weights


def upsample_masks(masks: np.ndarray, size: Sequence[int],
                   padded_size: Sequence[int] | None = None, rule: str = 'original') -> np.ndarray:
  """Mask logits [K, h, w] at stride 4 of the padded image -> [K, H, W] over the image's
  top-left `size` = (H, W), by `rule` (MASK_RULES): 'original' stretches the cells of
  `padded_size` (default `size`) to (H, W); 'cropped' upsamples 4x and crops."""
  if rule not in MASK_RULES:
    raise ValueError(f'mask rule {rule!r} is none of {MASK_RULES}')
  h, w = masks.shape[-2:]
  if rule == 'cropped':
    rows = bilinear_weights(h, h * STRIDE)[:size[0]]
    cols = bilinear_weights(w, w * STRIDE)[:size[1]]
  else:
    padded_h, padded_w = (-(-int(s) // STRIDE) for s in (padded_size or size))
    if padded_h > h or padded_w > w:
      raise ValueError(f'padded size {tuple(padded_size)} needs {padded_h}x{padded_w} mask '
                       f'cells; the masks have {h}x{w}')
    masks = masks[:, :padded_h, :padded_w]
    rows = bilinear_weights(padded_h, int(size[0]))
    cols = bilinear_weights(padded_w, int(size[1]))
  return np.einsum('yh,khw,xw->kyx', rows, masks.astype(np.float32), cols, optimize=True)


def _resize_nearest(ids: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """The id map resized as the original does (a PIL image, Image.NEAREST)."""
  if tuple(ids.shape) == tuple(size):
    return ids
  image = Image.fromarray(ids.astype(np.int32))  # Mode 'I'.
  return np.asarray(image.resize((int(size[1]), int(size[0])), Image.NEAREST), np.int64)


def kept_queries(logits: np.ndarray, threshold: float = THRESHOLD):
  """Class logits [Q, C + 1] (the last class is no-object) -> the kept queries' indices, and
  every query's label (most likely class) and score (its softmax probability)."""
  logits = np.asarray(logits, np.float64)
  prob = np.exp(logits - logits.max(-1, keepdims=True))
  prob /= prob.sum(-1, keepdims=True)
  labels, scores = prob.argmax(-1), prob.max(-1)
  return np.flatnonzero((labels != logits.shape[-1] - 1) & (scores > threshold)), labels, scores


def panoptic_segments(logits: np.ndarray, masks: np.ndarray, is_thing: Sequence[bool],
                      processed_size: Sequence[int], target_size: Sequence[int] | None = None,
                      threshold: float = THRESHOLD, padded_size: Sequence[int] | None = None,
                      mask_rule: str = 'original') -> tuple[np.ndarray, list[dict]]:
  """One image's panoptic segmentation.

  Args:
    logits: [Q, C + 1] class logits (the last class is no-object).
    masks: [Q, h, w] mask logits at stride 4 of the padded image.
    is_thing: [C] per class label, True for things, False for stuff.
    processed_size: (H, W) of the image the model saw, before padding.
    target_size: (H, W) of the result (the original image); default processed_size.
    threshold: the class probability a query needs to be kept.
    padded_size: (H, W) of the padded batch the 'original' rule assumes; default processed_size.
    mask_rule: one of MASK_RULES (see the module's docstring).

  Returns:
    segment ids int64 [target H, target W] (0: no segment, else 1..K) and the K segments in id
    order: {'id', 'category_id' (the class label), 'isthing', 'area' (pixels), 'score'}.
  """
  kept, labels, scores = kept_queries(logits, threshold)
  upsampled = upsample_masks(np.asarray(masks)[kept], processed_size, padded_size, mask_rule)
  return segments_from_masks(upsampled, labels[kept], scores[kept], is_thing,
                             processed_size if target_size is None else target_size)


def segments_from_masks(masks: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                        is_thing: Sequence[bool], target_size: Sequence[int]):
  """Steps 2-4 for the kept queries: their mask logits [K, H, W] at the processed size, labels
  [K] and scores [K] -> `panoptic_segments`' result."""
  target_size = tuple(int(s) for s in target_size)

  def segment_map(queries, merge_stuff):
    """Ids 1..len(queries) by pixel argmax over `queries` (rows of `masks`), resized."""
    if not len(queries):
      return np.zeros(target_size, np.int64)
    ids = masks[queries].argmax(0) + 1
    if merge_stuff:
      first_of_class = {}
      for i, query in enumerate(queries):
        if not is_thing[labels[query]]:
          ids[ids == i + 1] = first_of_class.setdefault(int(labels[query]), i + 1)
    return _resize_nearest(ids, target_size)

  remaining = np.arange(len(labels))
  ids = segment_map(remaining, merge_stuff=True)
  while len(remaining):
    area = np.bincount(ids.ravel(), minlength=len(remaining) + 1)[1:]
    small = area <= MAX_DROPPED_AREA
    if not small.any():
      break
    remaining = remaining[~small]
    ids = segment_map(remaining, merge_stuff=False)
  area = np.bincount(ids.ravel(), minlength=len(remaining) + 1)[1:]
  segments = [{'id': i + 1, 'category_id': int(labels[q]), 'isthing': bool(is_thing[labels[q]]),
               'area': int(area[i]), 'score': float(scores[q])} for i, q in enumerate(remaining)]
  return ids, segments
