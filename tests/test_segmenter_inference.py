"""Sliding-window inference against a loop transcription of the original's segm/model/utils.py
(resize, sliding_window, merge_windows, inference), with torch's F.interpolate for every resize."""

import functools

import jax
import numpy as np
import pytest
import tensorflow as tf
import torch
import torch.nn.functional as F

from segmenter_jax import inference, segmentation_input

K = 3
_RNG = np.random.default_rng(0)
_PIXEL_WEIGHTS = _RNG.normal(size=(3, K))
_MEAN_WEIGHTS = _RNG.normal(size=(3, K))


def make_logits_fn(window):
  """A known model: per-pixel colour mixing, plus the window's mean colour (so every window sees
  its whole content) and a fixed position field (so overlapping windows disagree)."""
  field = np.random.default_rng(1).normal(size=(window, window, K))

  def logits_fn(windows):  # [n, window, window, 3] numpy or jax
    mean = windows.mean(axis=(1, 2), keepdims=True)
    return windows @ _PIXEL_WEIGHTS + 2 * (mean @ _MEAN_WEIGHTS) + field
  return logits_fn


def torch_resize(x, size):
  """F.interpolate(bilinear, align_corners=False) of an [H, W, C] array, as the original."""
  t = torch.from_numpy(np.ascontiguousarray(x, np.float64)).permute(2, 0, 1)[None]
  return F.interpolate(t, size=tuple(int(s) for s in size), mode='bilinear',
                       align_corners=False)[0].permute(1, 2, 0).numpy()


def original_windows(image, window, stride, logits_fn):
  """sliding_window + merge_windows before the final resize: (H, W, K) mean logits."""
  height, width = image.shape[:2]
  h_anchors = [a for a in range(0, height, stride) if a < height - window] + [height - window]
  w_anchors = [a for a in range(0, width, stride) if a < width - window] + [width - window]
  logit = np.zeros((height, width, K))
  count = np.zeros((height, width, 1))
  for ha in h_anchors:
    for wa in w_anchors:
      crop = image[ha:ha + window, wa:wa + window]
      logit[ha:ha + window, wa:wa + window] += logits_fn(crop[None])[0]
      count[ha:ha + window, wa:wa + window] += 1
  return logit / count


def original_resize_to_window(image, window):
  """segm/model/utils.py resize(): a short side below the window is brought up to it."""
  h, w = image.shape[:2]
  if h < w:
    h_res, w_res = window, w / h * window
  else:
    h_res, w_res = h / w * window, window
  if min(h, w) < window:
    return torch_resize(image, (int(h_res), int(w_res)))
  return image


def mmcv_rescale(h, w, scale):
  long_max, short_max = max(scale), min(scale)
  factor = min(long_max / max(h, w), short_max / min(h, w))
  return int(h * factor + 0.5), int(w * factor + 0.5)


def original_inference(image, scales, flip, img_scale, window, stride, logits_fn):
  """MultiScaleFlipAug views + segm inference(): softmax probabilities averaged, [H, W, K]."""
  height, width = image.shape[:2]
  total, views = 0.0, 0
  for scale in scales:
    size = mmcv_rescale(height, width, (int(img_scale[0] * scale), int(img_scale[1] * scale)))
    scaled = torch_resize(image, size)
    for flipped in ((False, True) if flip else (False,)):
      view = original_resize_to_window(scaled[:, ::-1] if flipped else scaled, window)
      logits = torch_resize(original_windows(view, window, stride, logits_fn), (height, width))
      if flipped:
        logits = logits[:, ::-1]
      total += np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
      views += 1
  return total / views


def in_canvas(images, canvas):
  """[B, H, W, C] canvas with each image at the top left, and sizes [B, 2]."""
  out = np.zeros((len(images),) + tuple(canvas) + images[0].shape[2:], np.float32)
  for i, image in enumerate(images):
    out[i, :image.shape[0], :image.shape[1]] = image
  return out, np.array([im.shape[:2] for im in images], np.int32)


@pytest.mark.parametrize('window, stride', [(16, 10), (16, 16), (12, 5)])
def test_sliding_window_matches_original_merge(window, stride):
  logits_fn = make_logits_fn(window)
  images = [_RNG.normal(size=s + (3,)) for s in [(40, 56), (33, 47), (window, window + 3)]]
  canvas, sizes = in_canvas(images, (40, 56))
  merged = jax.jit(functools.partial(inference.sliding_window, logits_fn, window=window,
                                     stride=stride))(canvas, sizes)
  for i, image in enumerate(images):
    h, w = image.shape[:2]
    np.testing.assert_allclose(merged[i, :h, :w], original_windows(image, window, stride,
                                                                   logits_fn), atol=1e-4)
    assert not np.any(merged[i, h:]) and not np.any(merged[i, :, w:])  # Zero outside.


def test_sliding_window_runs_transposed_examples_in_their_own_orientation():
  window, stride = 16, 9
  logits_fn = make_logits_fn(window)
  portrait = _RNG.normal(size=(45, 30, 3))
  landscape = _RNG.normal(size=(30, 45, 3))
  # The portrait image sits transposed in the landscape canvas.
  canvas, sizes = in_canvas([portrait.transpose(1, 0, 2), landscape], (30, 45))
  merged = inference.sliding_window(logits_fn, canvas, sizes, window=window, stride=stride,
                                    transposed=np.array([1, 0]))
  expected = original_windows(portrait, window, stride, logits_fn)
  np.testing.assert_allclose(merged[0].transpose(1, 0, 2), expected, atol=1e-4)
  np.testing.assert_allclose(merged[1], original_windows(landscape, window, stride, logits_fn),
                             atol=1e-4)


def test_window_anchors_are_the_originals():
  for length in range(16, 80):
    for stride in (5, 16, 20):
      expected = [a for a in range(0, length, stride) if a < length - 16] + [length - 16]
      anchors = [inference.window_anchor(length, i, 16, stride)
                 for i in range(inference.num_anchors(79, 16, stride))]
      assert [int(a) for a, used in anchors if used] == expected


@pytest.mark.parametrize('sizes_in, sizes_out', [
    ([(7, 9), (12, 5)], [(20, 31), (30, 11)]),  # Upsampling.
    ([(30, 40), (25, 17)], [(11, 13), (9, 6)]),  # Downsampling (no antialiasing).
    ([(8, 8), (30, 12)], [(8, 8), (12, 30)]),  # Identity, and mixed.
])
def test_resize_bilinear_equals_torch(sizes_in, sizes_out):
  images = [_RNG.normal(size=s + (4,)) for s in sizes_in]
  canvas, in_sizes = in_canvas(images, (30, 40))
  out_sizes = np.array(sizes_out, np.int32)
  resized = inference.resize_bilinear(canvas, in_sizes, out_sizes, (32, 32))
  for i, image in enumerate(images):
    h, w = sizes_out[i]
    np.testing.assert_allclose(resized[i, :h, :w], torch_resize(image, (h, w)), atol=2e-5)


def eval_batch(images, scales, img_scale, window):
  """Eval examples as the pipeline builds them: canvases, sizes, transposition."""
  geometry = segmentation_input.eval_geometry([im.shape[:2] for im in images], scales,
                                              img_scale, window)
  config = dict(crop_size=window, img_scale=img_scale, eval_scales=scales)
  preprocess = segmentation_input.eval_preprocess(_Config(config), geometry)
  examples = [preprocess({'image': tf.constant(im), 'label': tf.zeros(im.shape[:2], tf.uint8)})
              for im in images]
  batch = {k: np.stack([ex[k].numpy() for ex in examples]) for k in examples[0]}
  return batch, geometry


class _Config(dict):
  def __getattr__(self, name):
    return self[name]


@pytest.mark.parametrize('scales, flip', [
    ((1.0,), False), pytest.param((0.5, 0.75, 1.0, 1.5), True, marks=pytest.mark.slow)])
def test_segment_matches_original_inference(scales, flip):
  window, stride, img_scale = 16, 12, (64, 24)
  logits_fn = make_logits_fn(window)
  # Landscape and portrait; at scale 0.5 the short side is below the window (upsampled).
  images = [_RNG.integers(0, 256, size=s + (3,), dtype=np.uint8)
            for s in [(30, 50), (41, 23), (24, 24)]]
  batch, geometry = eval_batch(images, scales, img_scale, window)
  normalised = (batch['image'].astype(np.float32) - 127.5) / 127.5
  probabilities = jax.jit(functools.partial(
      inference.segment, logits_fn, scaled_canvases=geometry.scaled_canvases,
      view_canvases=geometry.view_canvases, window=window, stride=stride, flip=flip))(
          normalised, batch['size'], batch['scaled_size'], batch['view_size'],
          transposed=batch['transposed'])
  for i, image in enumerate(images):
    expected = original_inference((image - 127.5) / 127.5, scales, flip, img_scale, window,
                                  stride, logits_fn)
    got = np.asarray(probabilities[i])
    if batch['transposed'][i]:
      got = got.transpose(1, 0, 2)
    np.testing.assert_allclose(got[:image.shape[0], :image.shape[1]], expected, atol=2e-5)


def test_image_smaller_than_the_window_is_upsampled_as_the_original():
  window, stride = 16, 8
  logits_fn = make_logits_fn(window)
  image = _RNG.integers(0, 256, size=(10, 13, 3), dtype=np.uint8)
  batch, geometry = eval_batch([image], (1.0,), (13, 10), window)
  # The short side goes up to the window: 16 x int(13 / 10 * 16) = 16 x 20, two windows.
  np.testing.assert_array_equal(batch['view_size'][0, 0], [16, 20])
  assert geometry.view_canvases == ((16, 20),)
  normalised = (batch['image'].astype(np.float32) - 127.5) / 127.5
  probabilities = inference.segment(
      logits_fn, normalised, batch['size'], batch['scaled_size'], batch['view_size'],
      scaled_canvases=geometry.scaled_canvases, view_canvases=geometry.view_canvases,
      window=window, stride=stride)
  expected = original_inference((image - 127.5) / 127.5, (1.0,), False, (13, 10), window,
                                stride, logits_fn)
  np.testing.assert_allclose(probabilities[0], expected, atol=2e-5)

