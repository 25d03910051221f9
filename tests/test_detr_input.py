"""DETR input: COCO-format folders, TFDS COCO, generated shapes, DETR's transforms."""

import itertools
import json
import os
import re

import ml_collections
import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from helpers import load_config, mock_coco, mock_coco_examples, write_coco_folder
from detr_jax import detection_input, shapes, transforms
from detr_jax.detection import DetectionTask
from vit_jax.framework import input_pipeline
from vit_jax.framework.errors import UserError


def raw_examples(source):
  return {ex['image_id']: ex for ex in source.read().as_numpy_iterator()}


def test_folder_source_maps_categories_and_drops_crowd_and_degenerate_boxes(tmp_path, caplog):
  config = write_coco_folder(tmp_path)
  with caplog.at_level('INFO'):
    source = detection_input.make_source(config, 'val')
  assert source.num_examples == 3
  raw = raw_examples(source)
  # Image 7: the crowd region is gone; xywh -> (x0, y0, x1, y1) / (w, h).
  np.testing.assert_allclose(raw[7]['boxes'][:2], [[2 / 40, 3 / 30, 12 / 40, 11 / 30],
                                                   [20 / 40, 5 / 30, 35 / 40, 25 / 30]])
  np.testing.assert_array_equal(raw[7]['labels'][:2], [3, 7])  # coco_ids: label = category id.
  np.testing.assert_array_equal(raw[7]['box_mask'], [1, 1])  # Rows: the most boxes per image.
  # Image 42: zero width and fully outside dropped; half outside clipped to the image.
  np.testing.assert_allclose(raw[42]['boxes'][:2], [[4 / 32, 6 / 48, 24 / 32, 36 / 48],
                                                    [25 / 32, 40 / 48, 1, 1]])
  np.testing.assert_array_equal(raw[42]['box_mask'], [1, 1])
  np.testing.assert_array_equal(raw[1000]['box_mask'], [0, 0])  # The negative is kept.
  assert 'dropped 2 boxes without area' in caplog.text
  assert '1 crowd annotations' in caplog.text
  assert detection_input.categories(config, 'val')[1] == list(range(8))

  config.category_layout = 'contiguous'  # Sorted ids 1, 3, 7 -> 0, 1, 2.
  raw = raw_examples(detection_input.make_source(config, 'val'))
  np.testing.assert_array_equal(raw[7]['labels'][:2], [1, 2])
  np.testing.assert_array_equal(raw[42]['labels'][:2], [0, 2])
  assert detection_input.categories(config, 'val')[1] == [1, 3, 7]
  assert detection_input.num_classes(config, 'val') == 3


def test_folder_source_reads_images_lazily_and_counts_boxes_beyond_max(tmp_path, caplog):
  config = write_coco_folder(tmp_path)
  config.max_boxes = 1
  with caplog.at_level('WARNING'):
    source = detection_input.make_source(config, 'val')
  assert 'dropped 2 boxes beyond max_boxes=1 in 2 images' in caplog.text
  raw = next(source.read().as_numpy_iterator())
  assert raw['image'].decode().endswith('a.png')  # A path until the example is used.
  loaded = source.load(next(iter(source.read())))
  assert tf.io.decode_png(loaded['image']).shape == (30, 40, 3)


def test_folder_errors_are_one_line(tmp_path):
  config = write_coco_folder(tmp_path)
  config.num_classes = 7  # coco_ids needs max id + 1 = 8.
  with pytest.raises(UserError, match='num_classes is 7: set num_classes to at least 8'):
    detection_input.make_source(config, 'val')
  config.num_classes = 8
  detection_input.make_source(config, 'val')
  with pytest.raises(UserError, match='instances_train.json does not exist'):
    detection_input.make_source(config, 'train')
  os.remove(tmp_path / 'val' / 'c.png')
  with pytest.raises(UserError, match=r'1 images listed .* are missing, e.g. .*c\.png'):
    detection_input.make_source(config, 'val')
  config.category_layout = 'sorted'
  with pytest.raises(UserError, match='unknown config.input.category_layout') as error:
    detection_input.make_source(config, 'val')
  assert '\n' not in str(error.value)


def test_eval_categories_that_differ_from_training_stop_the_run_at_start_up(tmp_path):
  config = load_config('detr_shapes')
  config.input.update(write_coco_folder(tmp_path, 'train'), train_split='train',
                      eval_split='val', category_layout='contiguous')
  write_coco_folder(tmp_path, 'val')
  annotations = tmp_path / 'annotations' / 'instances_val.json'
  data = json.loads(annotations.read_text())
  data['categories'].append({'id': 2, 'name': 'cow'})  # Would shift labels 'dog' and 'bird'.
  annotations.write_text(json.dumps(data))
  with pytest.raises(UserError, match=re.escape(
      "the 'val' categories (label -> id [1, 2, 3, 7]) differ from the 'train' categories "
      '([1, 3, 7]): give both annotation files the same categories list')):
    DetectionTask(config).check_inputs()


def test_folder_images_that_do_not_decode_are_skipped_or_named(tmp_path, caplog):
  config = write_coco_folder(tmp_path)
  bad = tmp_path / 'val' / 'sub' / 'b.jpg'
  bad.write_bytes(b'')
  source = detection_input.make_source(config, 'val')
  assert sorted(raw_examples(source)) == [7, 1000]
  assert f'Skipping 1 of 3 images in {tmp_path / "val"} that do not decode, e.g. {bad}' \
      in caplog.text
  config.on_bad_image = 'stop'
  with pytest.raises(UserError, match=re.escape(
      f'1 image(s) in {tmp_path / "val"} do not decode: {bad}; fix or remove')):
    detection_input.make_source(config, 'val')


def test_folder_eval_examples(tmp_path):
  config = write_coco_folder(tmp_path)
  source = detection_input.make_source(config, 'val')
  batch = next(input_pipeline.eval_batches(source, detection_input.eval_preprocess(config), 4))
  assert batch['image'].shape == (4, 64, 64, 3) and batch['pixel_mask'].shape == (4, 64, 64)
  assert batch['boxes'].shape == (4, 4, 4)  # Padded to max_boxes.
  np.testing.assert_array_equal(batch['box_mask'], [[1, 1, 0, 0], [1, 1, 0, 0], [0] * 4, [0] * 4])
  np.testing.assert_array_equal(batch['image_id'], [7, 42, 1000, 0])
  np.testing.assert_array_equal(batch['_mask'], [1, 1, 1, 0])
  np.testing.assert_array_equal(batch['orig_size'][:3], [[30, 40], [48, 32], [36, 36]])
  # Image 7 (40x30): short side to 48 -> 48x64 (64 = max_size, no cap needed).
  assert batch['pixel_mask'][0].sum() == 48 * 64
  # Normalised (cx, cy, w, h) are those of the original image: resizing keeps them.
  np.testing.assert_allclose(batch['boxes'][0, :2], [[7 / 40, 7 / 30, 10 / 40, 8 / 30],
                                                     [27.5 / 40, 15 / 30, 15 / 40, 20 / 30]],
                             atol=1e-6)
  # Image 42 (32 wide, 48 high): a short side of 48 would make the long one 72 > 64, so the
  # short side is round(64 * 32 / 48) = 43 and the long one int(43 * 48 / 32) = 64.
  assert batch['pixel_mask'][1].sum() == 43 * 64
  assert batch['pixel_mask'][1, :64, :43].all() and not batch['pixel_mask'][1, :, 43:].any()
  np.testing.assert_array_equal(batch['image'][1, :, 43:], 0)  # Zero padding, after normalising.


def test_tfds_coco_gives_coco_category_ids(caplog):
  config = ml_collections.ConfigDict(dict(
      source='tfds', dataset='coco/2017', category_layout='coco_ids', max_boxes=3,
      augment='detr', train_scales=(24, 32), max_size=48, crop_resize_scales=(24,),
      crop_min=12, crop_max=20, eval_scale=32, pad_size=(48, 48)))
  with mock_coco(mock_coco_examples()), caplog.at_level('WARNING'):
    source = detection_input.make_source(config, 'validation')
    raw = list(source.read().as_numpy_iterator())
    batch = next(input_pipeline.eval_batches(source, detection_input.eval_preprocess(config), 2))
    train = next(input_pipeline.train_batches(source, detection_input.train_preprocess(config),
                                              2))
  assert source.num_examples == 2 and isinstance(raw[0]['image'], bytes)  # Still encoded.
  # Crowd (label 11) and the zero-height box removed; labels 0, 79 -> COCO ids 1, 90;
  # (ymin, xmin, ymax, xmax) -> (x0, y0, x1, y1).
  np.testing.assert_array_equal(raw[0]['labels'], [1, 90, 0])
  np.testing.assert_array_equal(raw[0]['box_mask'], [1, 1, 0])
  np.testing.assert_allclose(raw[0]['boxes'][:2], [[0.2, 0.1, 0.6, 0.5], [0.1, 0.2, 0.5, 0.4]])
  assert 'image 139: dropped 1 boxes without area' in caplog.text
  np.testing.assert_array_equal(raw[1]['box_mask'], [0, 0, 0])
  np.testing.assert_array_equal(batch['image_id'], [139, 285])
  np.testing.assert_array_equal(batch['orig_size'], [[20, 30], [16, 12]])
  np.testing.assert_allclose(batch['boxes'][0, 0], [0.4, 0.3, 0.4, 0.4], atol=1e-6)
  assert batch['image'].shape == (2, 48, 48, 3) and train['image'].shape == (2, 48, 48, 3)
  assert train['labels'].shape == (2, 3) and set(train['labels'][train['box_mask'] == 1]) <= {
      1, 90}

  config.category_layout = 'contiguous'
  with mock_coco(mock_coco_examples()):
    raw = next(detection_input.make_source(config, 'validation').read().as_numpy_iterator())
  np.testing.assert_array_equal(raw['labels'], [0, 79, 0])


def test_coco_category_ids_match_tfds_label_order():
  assert len(detection_input.COCO_CATEGORY_IDS) == 80
  assert list(detection_input.COCO_CATEGORY_IDS) == sorted(set(detection_input.COCO_CATEGORY_IDS))
  missing = set(range(1, 91)) - set(detection_input.COCO_CATEGORY_IDS)
  assert missing == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}  # COCO's 10 unused ids.


# Objects cover less than half of each image, so the per-channel median is the background.
SHAPES = dict(seed=3, num_train=600, num_eval=40, image_size=64, min_objects=1, max_objects=3,
              min_object_size=12, max_object_size=24, noise=8)


def test_shapes_are_deterministic_per_seed_and_split():
  settings = shapes.ShapesSettings(**SHAPES)
  a = shapes.generate.__wrapped__(settings, 'train')
  b = shapes.generate.__wrapped__(settings, 'train')
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  other = shapes.generate.__wrapped__(shapes.ShapesSettings(**dict(SHAPES, seed=4)), 'train')
  assert not np.array_equal(a['image'], other['image'])
  assert len(shapes.generate(settings, 'validation')['image']) == 40


def test_shape_boxes_are_tight_around_drawn_pixels_and_classes_balanced():
  data = shapes.generate(shapes.ShapesSettings(**SHAPES), 'train')
  fill = {1: [], 2: [], 3: []}
  for image, boxes, category, mask in zip(data['image'], data['boxes'], data['category'],
                                          data['box_mask']):
    background = np.median(image.reshape(-1, 3), 0)
    objects = np.abs(image.astype(int) - background).max(-1) > 48
    components, count = scipy.ndimage.label(objects, structure=np.ones((3, 3)))
    found = sorted((s[1].start, s[0].start, s[1].stop, s[0].stop)
                   for s in scipy.ndimage.find_objects(components))
    assert count == mask.sum()
    np.testing.assert_array_equal(found, sorted(map(tuple, boxes[mask == 1].astype(int))))
    for (x0, y0, x1, y1), c in zip(boxes[mask == 1].astype(int), category[mask == 1]):
      fill[int(c)].append(objects[y0:y1, x0:x1].mean())
  counts = np.array([len(fill[c]) for c in (1, 2, 3)])
  assert counts.sum() > 1000 and (counts / counts.sum() > 0.29).all()
  # The class is the shape: fill ratios near 1, pi/4 and 1/2.
  assert min(fill[1]) == 1.0
  assert 0.70 < np.mean(fill[2]) < 0.85 and max(fill[2]) < 0.9
  assert 0.42 < np.mean(fill[3]) < 0.58 and max(fill[3]) < 0.7


@pytest.mark.slow
def test_shapes_source_and_stream_are_deterministic_from_the_seed():
  config = ml_collections.ConfigDict(dict(
      source='shapes', shapes=dict(SHAPES), max_boxes=4, augment='detr', train_scales=(48, 64),
      max_size=80, crop_resize_scales=(48, 56), crop_min=32, crop_max=48, eval_scale=64,
      pad_size=(80, 80), category_layout='contiguous'))
  source = detection_input.make_source(config, 'train')
  stream = lambda seed: list(itertools.islice(input_pipeline.train_batches(
      source, detection_input.train_preprocess(config), 8, seed=seed), 3))
  first, again, other = stream(5), stream(5), stream(6)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(first[0]['image'], other[0]['image'])
  batch = first[0]
  assert batch['image'].shape == (8, 80, 80, 3) and batch['boxes'].shape == (8, 4, 4)
  assert set(np.unique(batch['labels'][batch['box_mask'] == 1])) <= {0, 1, 2}
  assert (batch['boxes'][batch['box_mask'] == 0] == 0).all()
  raw = next(source.read().as_numpy_iterator())
  assert raw['image'].dtype == np.uint8 and raw['boxes'].max() <= 1


def get_size_with_aspect_ratio(image_size, size, max_size=None):
  """facebookresearch/detr datasets/transforms.py, transcribed."""
  w, h = image_size
  if max_size is not None:
    min_original_size = float(min((w, h)))
    max_original_size = float(max((w, h)))
    if max_original_size / min_original_size * size > max_size:
      size = int(round(max_size * min_original_size / max_original_size))
  if (w <= h and w == size) or (h <= w and h == size):
    return (h, w)
  if w < h:
    ow = size
    oh = int(size * h / w)
  else:
    oh = size
    ow = int(size * w / h)
  return (oh, ow)


def test_resize_rule_matches_the_original():
  rng = np.random.default_rng(0)
  n = 3000
  heights, widths = rng.integers(1, 2000, n), rng.integers(1, 2000, n)
  sizes = rng.choice([480, 512, 800, 400, 1, 17, 97], n)
  heights[:10] = sizes[:10]  # The "already that size" branch.
  for max_size in (None, 1333, 500, 97):
    got = np.stack(transforms.target_size(heights, widths, sizes, max_size), -1)
    expected = [get_size_with_aspect_ratio((w, h), s, max_size)
                for h, w, s in zip(heights, widths, sizes)]
    np.testing.assert_array_equal(got, expected)
    if max_size:  # The cap holds up to the original's rounding of the short side.
      long = np.maximum(heights, widths) / np.minimum(heights, widths)
      assert (got.max(-1) <= max_size + long / 2).all()
  # Ties round half to even, as Python's round: 5 * 1 / 2 = 2.5 -> 2.
  assert [int(v) for v in transforms.target_size(1, 2, 4, 5)] == [2, 4]
  assert get_size_with_aspect_ratio((2, 1), 4, 5) == (2, 4)


def test_flip_twice_is_identity_and_crop_clips_and_drops():
  rng = np.random.default_rng(0)
  image = tf.constant(rng.uniform(0, 255, (20, 30, 3)), tf.float32)
  boxes = tf.constant([[1.5, 2, 10, 12], [0, 0, 30, 20], [25, 3, 30, 4]], tf.float32)
  flipped, flipped_boxes = transforms.hflip(image, boxes)
  np.testing.assert_allclose(flipped_boxes[0], [20, 2, 28.5, 12])
  np.testing.assert_array_equal(flipped.numpy()[:, ::-1], image.numpy())
  back, back_boxes = transforms.hflip(flipped, flipped_boxes)
  np.testing.assert_array_equal(back, image)
  np.testing.assert_allclose(back_boxes, boxes, atol=1e-5)

  mask = tf.constant([1, 1, 1], tf.int32)
  cropped, cropped_boxes, kept = transforms.crop(image, boxes, mask, 5, 4, 10, 16)
  np.testing.assert_array_equal(cropped, image[5:15, 4:20])
  np.testing.assert_allclose(cropped_boxes[:2], [[0, 0, 6, 7], [0, 0, 16, 10]])
  np.testing.assert_array_equal(kept, [1, 1, 0])  # The third box lies right of the crop.
  # A box touching the crop's edge from outside has no area left: dropped.
  _, _, kept = transforms.crop(image, tf.constant([[0, 0, 4, 20.0]]), mask[:1], 0, 4, 20, 10)
  np.testing.assert_array_equal(kept, [0])


def _rectangle_example(rng):
  h, w = rng.integers(30, 90, 2)
  x0, y0 = rng.integers(0, w - 8), rng.integers(0, h - 8)
  x1, y1 = rng.integers(x0 + 8, w + 1), rng.integers(y0 + 8, h + 1)
  image = np.zeros((h, w, 3), np.uint8)
  image[y0:y1, x0:x1] = 255
  boxes = np.zeros((2, 4), np.float32)
  boxes[0] = [x0 / w, y0 / h, x1 / w, y1 / h]
  return {'image': image, 'image_id': 1, 'boxes': boxes, 'labels': np.array([5, 0], np.int32),
          'box_mask': np.array([1, 0], np.int32)}


def test_augmented_boxes_follow_the_pixels():
  config = ml_collections.ConfigDict(dict(
      augment='detr', train_scales=tuple(range(40, 73, 8)), max_size=100,
      crop_resize_scales=(48, 56, 64), crop_min=24, crop_max=56, pad_size=(100, 100)))
  preprocess = detection_input.train_preprocess(config)
  rng = np.random.default_rng(0)
  std, mean = np.array(transforms.IMAGENET_STD), np.array(transforms.IMAGENET_MEAN)
  seen_sizes, dropped = set(), 0
  for i in range(40):
    out = preprocess(_rectangle_example(rng), tf.constant([7, i], tf.int64))
    out = {k: v.numpy() for k, v in out.items()}
    rows, cols = out['pixel_mask'].sum(0).max(), out['pixel_mask'].sum(1).max()
    assert out['pixel_mask'].sum() == rows * cols and out['pixel_mask'][:rows, :cols].all()
    assert not out['image'][rows:].any() and not out['image'][:, cols:].any()
    seen_sizes.add((rows, cols))
    pixels = (out['image'][:rows, :cols] * std + mean).mean(-1) > 0.5
    if not out['box_mask'][0]:
      assert not pixels.any()
      dropped += 1
      continue
    cx, cy, w, h = out['boxes'][0] * [cols, rows, cols, rows]
    assert w > 0 and h > 0  # Boxes the crop leaves without area are dropped.
    if min(w, h) < 2:  # A sliver left by the crop: too thin to see after resizing.
      continue
    ys, xs = np.nonzero(pixels)
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1],
                               [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=1.0)
    assert out['labels'][0] == 5 and out['box_mask'][1] == 0
  assert len(seen_sizes) > 10 and dropped < 20


def test_image_larger_than_the_padding_is_resized_down_to_fit():
  config = ml_collections.ConfigDict(dict(augment='none', eval_scale=60, max_size=None,
                                          pad_size=(50, 50)))
  example = _rectangle_example(np.random.default_rng(1))
  example['image'] = np.zeros((30, 40, 3), np.uint8)
  out = detection_input.eval_preprocess(config)(example)
  # 30x40 -> 60x80 by the short side, then scaled by min(50/60, 50/80) -> 37x50.
  assert out['pixel_mask'].numpy().sum() == 37 * 50
  np.testing.assert_array_equal(out['orig_size'], [30, 40])
  x0, y0, x1, y1 = example['boxes'][0]
  np.testing.assert_allclose(out['boxes'][0], [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0],
                             atol=1e-6)
  with pytest.raises(UserError, match='pad_size'):
    detection_input.eval_preprocess(ml_collections.ConfigDict(dict(max_size=None)))
