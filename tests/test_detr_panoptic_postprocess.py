"""The panoptic post-process against HF transformers' and torch's on the same outputs, and the
original's merging and dropping rules on hand-made cases.

HF's post_process_panoptic_segmentation is MaskFormer's rule (sigmoid masks weighted by the
score, a mask threshold, an overlap ratio, stuff fused as a union), not the original's
PostProcessPanoptic (no longer in transformers). Its settings below make the two agree where
both apply: equal scores for the kept queries (so the weighting changes no argmax), mask
threshold 0 and overlap ratio 4.5 / pixels (a segment needs more than 4 pixels), at most one
query per stuff class. Where they differ (stuff duplicates, re-assigning dropped pixels) the
hand-made cases check the original's rules.
"""

import types

import numpy as np
from PIL import Image
import pytest
import torch
from transformers import DetrImageProcessor

from detr_jax import panoptic_postprocess

IS_THING = (True, True, True, True, False, False)  # Labels 4 and 5 are stuff.
NO_OBJECT = len(IS_THING)


def _outputs(seed, mask_size=(32, 32)):
  """Class logits [2, 12, 7] where each query is a = 8 on one class, 0 elsewhere (so every kept
  query has the same score, 0.998), two queries uniform (score 1/7, dropped); stuff labels at
  most once per image; random mask logits [2, 12, h, w]."""
  rng = np.random.default_rng(seed)
  logits = np.zeros((2, 12, NO_OBJECT + 1), np.float32)
  for image in range(2):
    classes = rng.permutation([0, 1, 2, 3, 4, 5, NO_OBJECT, 0, 1, 2])
    logits[image, np.arange(10), classes] = 8.
  masks = (rng.standard_normal((2, 12) + mask_size) * 3).astype(np.float32)
  return logits, masks


def _hf_reference(logits, masks, size):
  """HF's post-process on the masks upsampled by torch to 4x the mask size, then cropped."""
  up = torch.nn.functional.interpolate(torch.from_numpy(masks), scale_factor=4, mode='bilinear',
                                       align_corners=False)[..., :size[0], :size[1]]
  outputs = types.SimpleNamespace(logits=torch.from_numpy(logits), pred_masks=up)
  return DetrImageProcessor().post_process_panoptic_segmentation(
      outputs, threshold=0.85, mask_threshold=0., overlap_mask_area_threshold=4.5 / up[0, 0].numel(),
      label_ids_to_fuse={4, 5})


@pytest.mark.parametrize('size', [(128, 128), (120, 100)])
def test_equals_hf_and_torch_where_the_rules_agree(size):
  logits, masks = _outputs(seed=0)
  for image, reference in enumerate(_hf_reference(logits, masks, size)):
    ids, segments = panoptic_postprocess.panoptic_segments(logits[image], masks[image], IS_THING,
                                                           size)
    np.testing.assert_array_equal(ids, reference['segmentation'].numpy())
    assert [(s['id'], s['category_id']) for s in segments] == [
        (s['id'], s['label_id']) for s in reference['segments_info']]
    assert len(segments) == 9  # 10 confident queries, one of them sure of no-object.
    assert [s['area'] for s in segments] == [int((ids == s['id']).sum()) for s in segments]
    assert [s['isthing'] for s in segments] == [IS_THING[s['category_id']] for s in segments]
    np.testing.assert_allclose([s['score'] for s in segments],
                               [s['score'] for s in reference['segments_info']], atol=1e-6)


def test_resized_to_the_original_size_with_pil_nearest():
  logits, masks = _outputs(seed=1)
  size, original = (120, 100), (90, 75)
  reference = _hf_reference(logits, masks, size)[0]['segmentation'].numpy().astype(np.int32)
  expected = np.asarray(Image.fromarray(reference).resize(original[::-1], Image.NEAREST))
  ids, segments = panoptic_postprocess.panoptic_segments(logits[0], masks[0], IS_THING, size,
                                                         original)
  assert ids.shape == original
  np.testing.assert_array_equal(ids, expected)
  assert [s['area'] for s in segments] == [int((expected == s['id']).sum()) for s in segments]


def test_stuff_duplicates_and_small_segments_are_dropped_pass_by_pass():
  """Queries T (thing 0), S1 and S2 (stuff 4), U (thing 2) on 24 pixels. Pass 1 (merging): S1
  wins 3 pixels, S2 10, T 6, U 5; S2 merges into S1 (13) and, left with 0 pixels, is dropped.
  Pass 2: S2's pixels go to their next best, T; S1 is left with 3 and dropped. Pass 3: S1's
  pixels go to U. HF would keep stuff 4 as one segment of 13 pixels."""
  owner = np.array(list('SSSAAAAAAAAAATTTTTTUUUUU'))  # S: S1 wins, A: S2 wins.
  per_pixel = {'S': (1, 3, 0, 2), 'A': (2, 1, 3, 0), 'T': (3, 0, 0, 0), 'U': (0, 0, 0, 3)}
  masks = np.array([per_pixel[o] for o in owner], np.float32).T.reshape(4, 4, 6)
  ids, segments = panoptic_postprocess.segments_from_masks(
      masks, np.array([0, 4, 4, 2]), np.full(4, 0.9), IS_THING, (4, 6))
  expected = np.where(np.isin(owner, ['A', 'T']), 1, 2).reshape(4, 6)
  np.testing.assert_array_equal(ids, expected)
  assert [(s['id'], s['category_id'], s['area']) for s in segments] == [(1, 0, 16), (2, 2, 8)]


def test_no_confident_query_leaves_every_pixel_without_segment():
  logits = np.zeros((5, NO_OBJECT + 1), np.float32)
  logits[:, NO_OBJECT] = 9.  # Sure of no-object...
  logits[0] = 0.  # ...or unsure.
  ids, segments = panoptic_postprocess.panoptic_segments(
      logits, np.ones((5, 4, 4), np.float32), IS_THING, (16, 16), (20, 24))
  assert segments == [] and ids.shape == (20, 24) and not ids.any()


def test_bilinear_upsampling_is_torchs():
  masks = np.random.default_rng(2).standard_normal((3, 5, 7)).astype(np.float32)
  expected = torch.nn.functional.interpolate(torch.from_numpy(masks)[None], size=(20, 28),
                                             mode='bilinear', align_corners=False)[0].numpy()
  np.testing.assert_allclose(panoptic_postprocess.upsample_masks(masks, (18, 27)),
                             expected[:, :18, :27], atol=1e-5)
