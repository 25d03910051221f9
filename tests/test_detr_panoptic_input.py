"""Panoptic data: the generated scenes, a COCO panoptic folder holding the same scenes, the
segment map moved with the image by DETR's augmentation, and the errors users hit."""

import json
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import torch

from detr_jax import panoptic_input, panoptic_shapes, transforms
from vit_jax.framework.errors import UserError

SETTINGS = dict(num_train=6, num_eval=6, image_size=48, max_objects=3, min_object_size=10,
                max_object_size=20)


def _config(**changes):
  config = ml_collections.ConfigDict(dict(
      source='shapes', shapes=dict(SETTINGS), category_layout='contiguous', augment='none',
      eval_scale=48, max_size=48, pad_size=(48, 48), max_boxes=5, shuffle_buffer=0,
      train_scales=(32, 40, 48), crop_resize_scales=(40,), crop_min=24, crop_max=40))
  config.update(changes)
  return config


def _examples(config, split='validation'):
  source = panoptic_input.make_source(config, split)
  preprocess = panoptic_input.eval_preprocess(config)
  load = source.load or (lambda ex: ex)
  return [{k: v.numpy() for k, v in preprocess(load(ex)).items()} for ex in source.read()]


def _masks_to_boxes(ids, count):
  """The original's masks_to_boxes: (x_min, y_min, x_max, y_max), max = last pixel's index."""
  boxes = []
  for k in range(1, count + 1):
    ys, xs = np.nonzero(ids == k)
    boxes.append((xs.min(), ys.min(), xs.max(), ys.max()))
  return np.array(boxes, np.float64)


def test_shapes_examples_hold_the_generated_segments():
  data = panoptic_shapes.generate(panoptic_shapes.ShapesSettings(**SETTINGS), 'validation')
  examples = _examples(_config())
  assert len(examples) == 6
  for i, ex in enumerate(examples):
    count = int(data['segment_mask'][i].sum())
    np.testing.assert_array_equal(ex['panoptic'], data['panoptic'][i])
    np.testing.assert_array_equal(ex['segments'], data['panoptic'][i])  # Same size, same slots.
    np.testing.assert_array_equal(ex['box_mask'], (np.arange(5) < count).astype(int))
    np.testing.assert_array_equal(ex['labels'][:count], data['category'][i, :count] - 1)
    # Sky and ground are the last two segments: labels 3 and 4.
    assert ex['labels'][count - 2:count].tolist() == [3, 4]
    x0, y0, x1, y1 = _masks_to_boxes(data['panoptic'][i], count).T / 48
    np.testing.assert_allclose(ex['boxes'][:count],
                               np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1),
                               atol=1e-6)
    assert ex['size'].tolist() == ex['orig_size'].tolist() == [48, 48]


def _write_coco_panoptic(root, split):
  """The shapes split as COCO panoptic: JPEG-free (PNG) images, RGB-coded id PNGs with
  COCO-like large segment ids, the json with categories and segments_info."""
  data = panoptic_shapes.generate(panoptic_shapes.ShapesSettings(**SETTINGS), split)
  os.makedirs(os.path.join(root, split))
  os.makedirs(os.path.join(root, f'panoptic_{split}'))
  rng = np.random.default_rng(0)
  images, annotations = [], []
  for i, image in enumerate(data['image']):
    ids = rng.choice(2 ** 24 - 1, size=5, replace=False) + 1
    segment_ids = np.concatenate([[0], ids])[data['panoptic'][i]]
    rgb = np.stack([segment_ids % 256, segment_ids // 256 % 256, segment_ids // 65536], -1)
    Image.fromarray(image).save(os.path.join(root, split, f'{i}.png'))
    Image.fromarray(rgb.astype(np.uint8)).save(os.path.join(root, f'panoptic_{split}', f'{i}.png'))
    images.append({'id': 100 + i, 'file_name': f'{i}.png', 'width': 48, 'height': 48})
    segments = [{'id': int(ids[k]), 'category_id': int(data['category'][i, k]), 'iscrowd': 0}
                for k in range(int(data['segment_mask'][i].sum()))]
    annotations.append({'image_id': 100 + i, 'file_name': f'{i}.png', 'segments_info': segments})
  os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
  with open(os.path.join(root, 'annotations', f'panoptic_{split}.json'), 'w') as f:
    json.dump({'images': images, 'annotations': annotations,
               'categories': list(panoptic_shapes.CATEGORIES)}, f)


def test_a_coco_panoptic_folder_reads_as_the_same_segments(tmp_path):
  _write_coco_panoptic(str(tmp_path), 'validation')
  folder = _examples(_config(source='coco_panoptic_folder', data_dir=str(tmp_path)))
  generated = _examples(_config())
  for ex, reference in zip(folder, generated):
    for key in ('image', 'segments', 'panoptic', 'labels', 'boxes', 'box_mask', 'segment_mask'):
      np.testing.assert_array_equal(ex[key], reference[key])
  assert [ex['image_id'] for ex in folder] == list(range(100, 106))
  config = _config(source='coco_panoptic_folder', data_dir=str(tmp_path))
  assert panoptic_input.label_is_thing(config, 'validation') == [True] * 3 + [False] * 2


def test_resize_nearest_is_pytorchs():
  ids = np.random.default_rng(0).integers(0, 9, (13, 17)).astype(np.int32)
  for size in ((20, 31), (7, 9), (13, 40)):
    expected = torch.nn.functional.interpolate(torch.from_numpy(ids)[None, None].float(), size,
                                               mode='nearest')[0, 0].numpy()
    np.testing.assert_array_equal(transforms.resize_nearest(tf.constant(ids), *size), expected)


def test_augmentation_moves_the_map_with_the_boxes():
  """After flip / resize / crop, each kept segment's pixels lie in its moved box, mostly
  touching it, up to 3 pixels: the box ends at its last pixel's index (masks_to_boxes), which
  an upscaling by s moves s - 1 pixels from the scaled mask's end, plus nearest's rounding; as
  the original, a crop clips the box around the whole mask, which a cut triangle need not fill.
  """
  config = _config(augment='detr')
  source = panoptic_input.make_source(config, 'train')
  preprocess = panoptic_input.train_preprocess(config)
  checked = tight = 0
  for n, raw in enumerate(source.read()):
    for seed in range(4):
      ex = {k: v.numpy() for k, v in preprocess(raw, tf.constant([n, seed])).items()}
      height, width = ex['pixel_mask'].any(1).sum(), ex['pixel_mask'].any(0).sum()
      for k in np.flatnonzero(ex['box_mask']):
        ys, xs = np.nonzero(ex['segments'] == k + 1)
        if not len(xs):
          continue
        cx, cy, w, h = ex['boxes'][k] * [width, height, width, height]
        assert cx - w / 2 - 3 <= xs.min() and xs.max() <= cx + w / 2 + 3
        assert cy - h / 2 - 3 <= ys.min() and ys.max() <= cy + h / 2 + 3
        tight += abs(xs.min() - (cx - w / 2)) <= 3 and abs(ys.max() - (cy + h / 2)) <= 3
        checked += 1
      assert not ex['segments'][height:].any() and not ex['segments'][:, width:].any()
  assert checked > 50 and tight > 0.8 * checked


def test_unknown_category_and_missing_folder_are_one_line_errors(tmp_path):
  _write_coco_panoptic(str(tmp_path), 'validation')
  path = os.path.join(tmp_path, 'annotations', 'panoptic_validation.json')
  with open(path) as f:
    data = json.load(f)
  data['annotations'][0]['segments_info'][0]['category_id'] = 77
  with open(path, 'w') as f:
    json.dump(data, f)
  config = _config(source='coco_panoptic_folder', data_dir=str(tmp_path))
  with pytest.raises(UserError, match=r'category ids \[77\], which are not in its "categories"'):
    panoptic_input.make_source(config, 'validation')
  with pytest.raises(UserError, match="no panoptic annotation file for split 'train'"):
    panoptic_input.make_source(config, 'train')
