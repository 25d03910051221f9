"""DETR's padding buckets: an image's outputs do not depend on the bucket it is padded into (given
padding beside it), its bucket depends on its size alone, the regrouped streams score every
example once, resume exactly and use a few fixed shapes."""

import itertools
import json
import os
import re
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT, augmented_shapes_task, canvas_batch, load_config
from detr_jax import detection_input, models, padding_buckets, padding_report
from vit_jax.framework.errors import UserError

COCO_BUCKETS = load_config('detr_coco', 'r50').input.pad_buckets
TINY = dict(backbone_blocks=(1, 1, 1, 1), backbone_width=8, hidden_dim=32, num_heads=4,
            mlp_dim=64, num_encoder_layers=2, num_decoder_layers=2, num_queries=6,
            dropout_rate=0.0)


def _tiny_detr_with_trained_looking_batch_norm():
  """A small DETR with random weights (drawn by numpy: cheaper than compiling init) whose frozen
  batch norm has non-zero offsets, as ImageNet weights have, so that the padding's features are
  not zero (with default statistics they are)."""
  model = models.DETR(num_classes=3, **TINY)
  shapes = flax.linen.meta.unbox(jax.eval_shape(
      model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), jnp.ones((1, 64, 64))))
  rng = np.random.default_rng(0)

  def draw(path, x):
    noise = rng.normal(size=x.shape).astype(np.float32)
    if path[0].key == 'frozen':
      return {'var': np.abs(noise) + 0.5, 'scale': 1 + 0.1 * noise}.get(path[-1].key,
                                                                       0.1 * noise)
    if x.ndim == 1:
      return 0.1 * noise
    return noise * np.sqrt((2 if x.ndim == 4 else 1) / np.prod(x.shape[:-1]))  # He / LeCun.

  return model, jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.slow
def test_an_image_has_the_same_outputs_in_any_bucket_that_leaves_padding_beside_it():
  model, variables = _tiny_detr_with_trained_looking_batch_norm()
  image = np.random.default_rng(1).normal(size=(64, 96, 3)).astype(np.float32)
  apply = jax.jit(lambda v, x, m: model.apply(v, x, m, mask_features=True))

  def outputs(bucket):
    """The predictions, and the encoder's input on the image's feature cells (2x3)."""
    pixels = np.zeros((1,) + bucket + (3,), np.float32)
    pixels[0, :64, :96] = image
    mask = np.zeros((1,) + bucket, np.int32)
    mask[0, :64, :96] = 1
    out = apply(variables, pixels, mask)
    return (np.concatenate([out['logits'][-1, 0], out['boxes'][-1, 0]], -1),
            np.asarray(out['mask_features']['src'][0, :2, :3]))

  (small, small_src), (large, large_src) = outputs((96, 128)), outputs((160, 192))
  # float32 round-off: measured 3e-8 on outputs of up to 0.5, 0 on features of up to 18.
  np.testing.assert_allclose(small, large, atol=1e-5, rtol=0)
  np.testing.assert_allclose(small_src, large_src, atol=1e-4, rtol=0)
  # No padding below and right of the image: the convolutions see zeros instead of the
  # padding's features, and the features move (measured 0.08): why an image keeps its own
  # bucket whatever its batch-mates need.
  assert np.abs(outputs((64, 96))[1] - large_src).max() > 1e-2


def test_bucket_sides_off_the_stride_read_another_mask_pixel():
  mask = np.zeros((1, 192, 192), bool)
  mask[0, :92, :92] = True  # A 92-pixel image: feature cell 3 starts at pixel 96, outside.
  on_stride = models.downsample_mask(mask[:, :160, :160], (5, 5))
  off_stride = models.downsample_mask(mask[:, :150, :150], (5, 5))  # Cell 3 reads pixel 90.
  np.testing.assert_array_equal(on_stride[0, :, 0], [1, 1, 1, 0, 0])
  np.testing.assert_array_equal(off_stride[0, :, 0], [1, 1, 1, 1, 0])


@pytest.mark.parametrize('size, bucket', [
    ((800, 1066), (800, 1088)),  # 640x480 at eval.
    ((800, 1199), (800, 1344)),  # 640x427 at eval.
    ((1066, 800), (1088, 800)),  # 480x640 at eval.
    ((800, 800), (800, 1088)),  # Square: no square bucket, the smallest that holds it.
    ((480, 640), (608, 832)),  # 640x480 at train scale 480.
    ((750, 1333), (800, 1344)),  # 16:9, the long side capped at max_size.
])
def test_the_bucket_is_the_smallest_that_holds_the_image(size, bucket):
  buckets = detection_input.pad_buckets(load_config('detr_coco', 'r50').input)
  assert padding_buckets.bucket_of(size, buckets) == bucket


def test_eval_batches_hold_one_bucket_and_every_example_once_whatever_the_batching():
  buckets = ((32, 96), (96, 32), (64, 96), (96, 64))
  rng = np.random.default_rng(0)
  sizes = [tuple(s) for s in rng.choice([(32, 64), (64, 32), (48, 96), (96, 48), (64, 64)], 13)]
  ids = list(range(1, 14))
  for batch_size in (4, 5):
    order = rng.permutation(13)
    padded = -(-13 // batch_size) * batch_size  # eval_batches' zero examples after the split.
    all_sizes = [sizes[i] for i in order] + [(0, 0)] * (padded - 13)
    all_ids = [ids[i] for i in order] + [0] * (padded - 13)
    plain = [canvas_batch(all_sizes[i:i + batch_size], all_ids[i:i + batch_size])
             for i in range(0, padded, batch_size)]
    seen = []
    for batch in padding_buckets.eval_stream(iter(plain), buckets):
      assert len(batch['_mask']) == batch_size
      for i in np.nonzero(batch['_mask'])[0]:
        image_id = int(batch['image_id'][i])
        h, w = sizes[image_id - 1]
        assert batch['image'].shape[1:3] == padding_buckets.bucket_of((h, w), buckets)
        assert (batch['image'][i, :h, :w] == image_id).all()
        assert batch['image'][i].sum() == image_id * h * w * 3  # Zeros elsewhere.
        assert (batch['boxes'][i] == image_id).all()
        seen.append(image_id)
      assert not batch['image'][batch['_mask'] == 0].any()
    assert sorted(seen) == ids


def test_train_stream_resumes_exactly_with_one_bucket_per_batch_and_few_shapes():
  task = augmented_shapes_task()
  buckets = detection_input.pad_buckets(task.config.input)
  batches = list(itertools.islice(task.train_input(0), 16))  # Two epochs.
  shapes = set()
  for batch in batches:
    shape = batch['image'].shape[1:3]
    shapes.add(shape)
    assert batch['pixel_mask'].shape[1:] == shape
    sizes = padding_buckets.image_sizes(batch['pixel_mask'])
    # Full batches hold one bucket; a window's leftovers get the smallest bucket holding them.
    assert shape == padding_buckets.bucket_of(sizes.max(0), buckets)
  assert shapes <= set(buckets) | {(96, 96)} and len(shapes) >= 3
  # A window holds exactly the plain stream's examples (the boxes identify them).
  plain = list(itertools.islice(augmented_shapes_task(pad_buckets=()).train_input(0), 4))
  key = lambda bs: sorted(b.tobytes() for batch in bs for b in batch['boxes'])
  assert key(plain) == key(batches[:4])
  # Resuming inside a window (at step 6) gives exactly the remaining batches.
  resumed = list(itertools.islice(task.train_input(6 * 8), 10))
  for a, b in zip(resumed, batches[6:]):
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize('buckets, message', [
    (((600, 1344), (1344, 800)), 'multiples of 32'),
    (((800, 1344),), 'hold no 1333x800 image'),
])
def test_bad_buckets_are_one_line_errors(buckets, message):
  config = load_config('detr_coco', 'r50').input
  config.pad_buckets = buckets
  with pytest.raises(UserError, match=message):
    detection_input.padded_sizes(config)


def test_padding_report_on_hand_counted_sizes():
  # Two landscape and two portrait images in a random order, batches of 2.
  sizes = np.array([(480, 640), (480, 640), (640, 480), (640, 480)])
  rows = {r.name: r for r in padding_report.rows(
      sizes, ((480, 640), (640, 480)), batch_size=2, window=2, fixed=(1333, 1333),
      per_device=1)}
  assert rows['image itself (no padding)'].pixels_per_image == 480 * 640
  assert rows['buckets, each image its own'].pixels_per_image == 480 * 640
  # Regrouped, both batches hold one bucket whatever the order.
  assert rows['buckets, batch 2 grouped in windows of 2'].pixels_per_image == 480 * 640
  assert rows['buckets, batch 2 grouped in windows of 2'].shapes == 2


@pytest.mark.slow
def test_padding_report_command_reads_an_annotation_file(tmp_path):
  images = [{'id': i, 'file_name': f'{i}.jpg', 'height': h, 'width': w}
            for i, (h, w) in enumerate([(480, 640)] * 3 + [(640, 480)], 1)]
  path = tmp_path / 'instances.json'
  path.write_text(json.dumps({'images': images, 'annotations': [], 'categories': []}))
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'scripts', 'detr_padding_report.py'),
       f'--annotations={path}', '--batch_size=2', '--window=2'],
      capture_output=True, text=True, check=True, timeout=300)
  # Eval: 640x480 -> 800x1066 (bucket 800x1088), 480x640 -> 1066x800 (bucket 1088x800).
  eval_part = result.stdout.split('eval:')[1]
  assert re.search(r'image itself \(no padding\) +852,800 ', eval_part), result.stdout
  assert re.search(r'fixed canvas 1333x1333 +1,776,889 +1.00x +1\n', eval_part)
  # Each image in its own bucket: 870,400 pixels, 2.04x fewer than the canvas, 2 shapes.
  assert re.search(r'buckets, each image its own +870,400 +2.04x +2\n', eval_part)
