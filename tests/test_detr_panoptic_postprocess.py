"""The panoptic post-process against the original's PostProcessPanoptic, HF transformers' and
torch's on the same outputs, and the original's merging and dropping rules on hand-made cases.

The default ('original') rule is checked against facebookresearch/detr's rule written here in
torch (`_original_rule`) and, where DETR_REPO names a checkout of facebookresearch/detr, against
its models/segmentation.py PostProcessPanoptic itself, on a small random model's outputs.

HF's post_process_panoptic_segmentation is MaskFormer's rule (sigmoid masks weighted by the
score, a mask threshold, an overlap ratio, stuff fused as a union), not the original's
PostProcessPanoptic (no longer in transformers). Its settings below make the two agree where
both apply: equal scores for the kept queries (so the weighting changes no argmax), mask
threshold 0 and overlap ratio 4.5 / pixels (a segment needs more than 4 pixels), at most one
query per stuff class. Where they differ (stuff duplicates, re-assigning dropped pixels) the
hand-made cases check the original's rules.
"""

import collections
import functools
import io
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import torch
from transformers import DetrImageProcessor

from detr_jax import panoptic_model, panoptic_postprocess

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


def _hf_rule(logits, masks, is_thing, size, target_size=None):
  """Ours with the rule HF's comparison above assumes (masks upsampled 4x, then cropped)."""
  return panoptic_postprocess.panoptic_segments(logits, masks, is_thing, size, target_size,
                                                mask_rule='cropped')


@pytest.mark.parametrize('size', [(128, 128), (120, 100)])
def test_equals_hf_and_torch_where_the_rules_agree(size):
  logits, masks = _outputs(seed=0)
  for image, reference in enumerate(_hf_reference(logits, masks, size)):
    ids, segments = _hf_rule(logits[image], masks[image], IS_THING, size)
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
  ids, segments = _hf_rule(logits[0], masks[0], IS_THING, size, original)
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
  np.testing.assert_allclose(panoptic_postprocess.upsample_masks(masks, (18, 27), rule='cropped'),
                             expected[:, :18, :27], atol=1e-5)
  # The original's: the padded batch's cells stretched to the image (here 19 x 25 of 20 x 28).
  stretched = torch.nn.functional.interpolate(torch.from_numpy(masks)[None], size=(19, 25),
                                              mode='bilinear', align_corners=False)[0].numpy()
  np.testing.assert_allclose(panoptic_postprocess.upsample_masks(masks, (19, 25), (20, 28)),
                             stretched, atol=1e-5)
  np.testing.assert_allclose(  # Cells beyond the padding (a larger canvas) are not read.
      panoptic_postprocess.upsample_masks(np.pad(masks, ((0, 0), (0, 2), (0, 3))), (19, 25),
                                          (20, 28)), stretched, atol=1e-5)


def _id2rgb(ids):
  """panopticapi.utils.id2rgb: id = R + 256 G + 256^2 B."""
  return np.stack([ids % 256, ids // 256 % 256, ids // 256**2], -1).astype(np.uint8)


def _rgb2id(colours):
  return (colours.astype(np.int64) * [1, 256, 256**2]).sum(-1)


def _original_rule(outputs, processed_sizes, target_sizes, is_thing):
  """facebookresearch/detr's PostProcessPanoptic rule in torch: the padded batch's mask logits
  stretched to each image's processed size, softmax over the kept queries, stuff merged in the
  first pass, the map resized as an RGB PNG with PIL's nearest rule, segments of <= 4 pixels
  dropped until none is left. Returns per image the id map (ids from 0) and (class, area)s."""
  results = []
  for logits, masks, size, target in zip(outputs['pred_logits'], outputs['pred_masks'],
                                         processed_sizes, target_sizes):
    scores, classes = logits.softmax(-1).max(-1)
    keep = (classes != logits.shape[-1] - 1) & (scores > 0.85)
    classes = classes[keep]
    masks = torch.nn.functional.interpolate(masks[keep][:, None], tuple(size), mode='bilinear',
                                            align_corners=False)[:, 0].flatten(1)
    stuff = collections.defaultdict(list)
    for k, label in enumerate(classes.tolist()):
      if not is_thing[label]:
        stuff[label].append(k)

    def id_map(masks, merge):
      ids = (masks.T.softmax(-1).argmax(-1) if len(masks) else torch.zeros(
          masks.shape[1], dtype=torch.long)).view(*size)
      if merge:
        for same in stuff.values():
          for k in same:
            ids[ids == k] = same[0]
      image = Image.fromarray(_id2rgb(ids.numpy())).resize(tuple(target)[::-1], Image.NEAREST)
      ids = _rgb2id(np.asarray(image))
      return ids, [int((ids == k).sum()) for k in range(len(masks))]

    ids, area = id_map(masks, merge=True)
    while len(classes) and any(a <= 4 for a in area):
      small = torch.tensor([a <= 4 for a in area])
      classes, masks = classes[~small], masks[~small]
      ids, area = id_map(masks, merge=False)
    results.append((ids, list(zip(classes.tolist(), area))))
  return results


def _facebookresearch_rule(outputs, processed_sizes, target_sizes, is_thing):
  """facebookresearch/detr's own PostProcessPanoptic (models/segmentation.py of the checkout at
  DETR_REPO; panopticapi's two colour functions supplied), in `_original_rule`'s format."""
  sys.path.insert(0, os.environ['DETR_REPO'])
  try:
    from models import segmentation  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  segmentation.id2rgb, segmentation.rgb2id = _id2rgb, _rgb2id
  outputs = dict(outputs, pred_boxes=torch.rand(outputs['pred_logits'].shape[:2] + (4,)))
  predictions = segmentation.PostProcessPanoptic(dict(enumerate(is_thing)))(
      outputs, torch.tensor(processed_sizes), torch.tensor(target_sizes))
  return [(_rgb2id(np.asarray(Image.open(io.BytesIO(p['png_string'])))),
           [(s['category_id'], s['area']) for s in p['segments_info']]) for p in predictions]


@functools.cache
def _small_model_outputs(sizes):
  """A random small panoptic DETR's logits [B, 12, 7] and mask logits [B, 12, h, w] on random
  images of `sizes` padded to the largest (the original's batching)."""
  model = panoptic_model.build_detr_panoptic(dict(
      num_classes=len(IS_THING), backbone_blocks=(1, 1, 1, 1), backbone_width=8, hidden_dim=64,
      num_queries=12, num_encoder_layers=1, num_decoder_layers=1, num_heads=8, mlp_dim=32))
  padded = tuple(max(s[i] for s in sizes) for i in (0, 1))
  pixel_mask = np.zeros((len(sizes),) + padded, np.int32)
  for i, (h, w) in enumerate(sizes):
    pixel_mask[i, :h, :w] = 1
  rng = np.random.default_rng(len(sizes))
  images = (rng.normal(size=pixel_mask.shape + (3,)) * pixel_mask[..., None]).astype(np.float32)
  images, pixel_mask = jnp.asarray(images), jnp.asarray(pixel_mask)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), images, pixel_mask)
  out = jax.jit(model.apply)(variables, images, pixel_mask)
  return np.asarray(out['logits'][-1]), np.asarray(out['masks'])


REFERENCES = [_original_rule, pytest.param(_facebookresearch_rule, marks=pytest.mark.skipif(
    'DETR_REPO' not in os.environ, reason='DETR_REPO: a checkout of facebookresearch/detr'))]


@pytest.mark.slow  # Compiles a small DETR for each batch shape.
@pytest.mark.parametrize('reference', REFERENCES, ids=['transcribed', 'facebookresearch'])
@pytest.mark.parametrize('sizes', [[(45, 67)], [(45, 67), (33, 50)], [(61, 39), (64, 64),
                                                                       (17, 23)]],
                         ids=['one_image', 'padded_pair', 'padded_three'])
def test_default_rule_is_the_originals_on_a_small_models_outputs(reference, sizes):
  """A random small model's outputs on a batch padded to its largest image (odd sides, as the
  original pads), the class logits made confident on random classes and the mask logits given
  noise of their own spread (so queries win distinct regions; a tie's winner is float
  round-off): the same segment map and segments as the original, pixel for pixel, also when
  our mask logits come with more padding around them (a fixed canvas)."""
  logits, masks = _small_model_outputs(tuple(sizes))
  padded = tuple(max(s[i] for s in sizes) for i in (0, 1))
  rng = np.random.default_rng(0)
  assert masks.shape[2:] == tuple(-(-s // 4) for s in padded)  # As the original's model.
  masks = masks + (masks.std() * rng.normal(size=masks.shape)).astype(np.float32)
  confident = rng.random((len(sizes), 12, 1)) < 0.9
  logits = logits + 9 * confident * np.eye(NO_OBJECT + 1)[
      rng.integers(0, NO_OBJECT + 1, (len(sizes), 12))]
  targets = [(h + 3, w - 2) for h, w in sizes]  # The original image sizes.
  expected = reference({'pred_logits': torch.from_numpy(logits.astype(np.float32)),
                        'pred_masks': torch.from_numpy(masks)}, sizes, targets, IS_THING)
  canvas = np.pad(masks, ((0, 0), (0, 0), (0, 5), (0, 7)), constant_values=3.)
  for i, (ids_from_0, segments) in enumerate(expected):
    ids, ours = panoptic_postprocess.panoptic_segments(logits[i], canvas[i], IS_THING, sizes[i],
                                                       targets[i], padded_size=padded)
    assert len(ours) > 2  # Several segments: the rule at work.
    np.testing.assert_array_equal(ids, ids_from_0 + 1)  # Our ids from 1 (0: VOID).
    assert [(s['category_id'], s['area']) for s in ours] == segments
    cropped, _ = panoptic_postprocess.panoptic_segments(
        logits[i], canvas[i], IS_THING, sizes[i], targets[i], mask_rule='cropped')
    fills = tuple(sizes[i]) == padded and not any(s % 4 for s in padded)
    assert (cropped != ids).mean() > 0.05 or fills  # The two rules agree only then.

