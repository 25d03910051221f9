"""Segmentation data: generated shapes, folder layouts written here, TFDS scene_parse150 on mock
data, the training augmentation (image and label stay aligned) and the eval examples."""

import io
import os
import re

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from segmenter_jax import augment, segmentation, segmentation_input, shapes
from vit_jax.framework.errors import UserError


def input_config(**fields):
  base = dict(source='shapes', shapes={}, img_scale=(32, 32), ratio_range=(0.5, 2.0),
              crop_size=32, cat_max_ratio=0.75, photometric=True, normalization='vit',
              reduce_zero_label=False, eval_scales=(1.0,))
  return ml_collections.ConfigDict(dict(base, **fields))


def loaded_examples(config, split):
  source = segmentation_input.make_source(config, split)
  return list(source.read().map(source.load).as_numpy_iterator())


# ----------------------------------------------------------------------------- shapes


def redraw(objects, count, size):
  """The label map from the object list, drawn with other formulas than the generator's:
  point-in-triangle by edge signs, the ellipse by its implicit equation."""
  label = np.zeros((size, size), np.uint8)
  ys, xs = np.mgrid[:size, :size] + 0.5
  for cls, x, y, w, h, apex, on_top in objects[:count]:
    inside_box = (xs >= x) & (xs < x + w) & (ys >= y) & (ys < y + h)
    name = shapes.CLASSES[int(cls)]
    if name == 'rectangle':
      inside = inside_box
    elif name == 'ellipse':
      inside = ((xs - x - w / 2) * 2 / w) ** 2 + ((ys - y - h / 2) * 2 / h) ** 2 <= 1
    else:
      top, bottom = (y, y + h) if on_top else (y + h, y)
      a, b, c = (x + apex, top), (x, bottom), (x + w, bottom)
      side = lambda p, q: (q[0] - p[0]) * (ys - p[1]) - (q[1] - p[1]) * (xs - p[0])
      s1, s2, s3 = side(a, b), side(b, c), side(c, a)
      inside = (((s1 >= 0) & (s2 >= 0) & (s3 >= 0)) | ((s1 <= 0) & (s2 <= 0) & (s3 <= 0)))
      inside &= inside_box
    label[inside] = cls
  return label


@pytest.mark.parametrize('class_colours', [True, False])
def test_shapes_masks_are_exactly_the_drawn_shapes(class_colours):
  settings = shapes.ShapesSettings(num_eval=64, class_colours=class_colours)
  data = shapes.generate(settings, 'validation')
  for i in range(64):
    image, label = data['image'][i].astype(int), data['label'][i]
    np.testing.assert_array_equal(label, redraw(data['objects'][i], data['num_objects'][i], 32))
    background = image[label == 0]
    # One background colour +- noise (clipped at 0 and 255).
    assert np.all(background.max(0) - background.min(0) <= 2 * settings.noise)
    for cls, x, y, w, h, *_ in data['objects'][i][:data['num_objects'][i]]:
      x, y, w, h = int(x), int(y), int(w), int(h)
      inside = label[y:y + h, x:x + w] == cls
      colours = np.unique(image[y:y + h, x:x + w][inside], axis=0)
      assert len(colours) == 1  # Painted in exactly one colour, exactly where labelled.
      if class_colours:
        hue = tf.image.rgb_to_hsv(colours[0] / 255.0).numpy()[0] * 360
        centre = {1: 0, 2: 120, 3: 240}[int(cls)]
        assert abs((hue - centre + 180) % 360 - 180) <= 21
  assert set(np.unique(data['label'])) == {0, 1, 2, 3}


def test_shapes_are_deterministic_from_the_seed():
  settings = shapes.ShapesSettings(num_train=16, num_eval=16)
  first = {k: v.copy() for k, v in shapes.generate(settings, 'train').items()}
  shapes.generate.cache_clear()
  again = shapes.generate(settings, 'train')
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  other_seed = shapes.generate(shapes.ShapesSettings(seed=1, num_train=16, num_eval=16), 'train')
  eval_split = shapes.generate(settings, 'validation')
  assert not np.array_equal(first['image'], other_seed['image'])
  assert not np.array_equal(first['image'], eval_split['image'])


def test_shapes_settings_errors():
  with pytest.raises(UserError, match='unknown config.input.shapes keys'):
    shapes.ShapesSettings.from_config({'colours': 3})
  with pytest.raises(UserError, match='max_object_size <= image_size - 2'):
    shapes.ShapesSettings.from_config({'image_size': 16, 'max_object_size': 16})


# ----------------------------------------------------------------------------- folders


def write_png(path, array, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
  if mode == 'P':  # A palette label map, as VOC-style tools write them.
    image.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
  image.save(path)


def test_generic_folder_with_palette_labels_and_reduce_zero_label(tmp_path):
  rng = np.random.default_rng(0)
  written = {}
  for name, (h, w) in {'b_img': (9, 12), 'a_img': (7, 5)}.items():
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.choice(np.array([0, 1, 2, 150, 255], np.uint8), (h, w))
    write_png(str(tmp_path / 'images' / 'training' / f'{name}.png'), image)
    write_png(str(tmp_path / 'annotations' / 'training' / f'{name}.png'), label, 'P')
    written[name] = image, label
  config = input_config(source='folder', data_dir=str(tmp_path), reduce_zero_label=True)
  examples = loaded_examples(config, 'training')
  for example, name in zip(examples, sorted(written)):  # Sorted by file name.
    image, label = written[name]
    np.testing.assert_array_equal(tf.io.decode_png(example['image']).numpy(), image)
    # ADE20K's reduce_zero_label: 0 -> ignore, every other class - 1, 255 stays ignore.
    expected = np.where((label == 0) | (label == 255), 255, label.astype(int) - 1)
    np.testing.assert_array_equal(example['label'], expected)


def test_pascal_context_layout(tmp_path):
  root = tmp_path / 'VOC2010'
  rng = np.random.default_rng(1)
  labels = {}
  for image_id in ('2008_000002', '2008_000007', '2010_000001'):
    Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(
        str(tmp_path / 'x.jpg'))
    os.makedirs(root / 'JPEGImages', exist_ok=True)
    os.replace(tmp_path / 'x.jpg', root / 'JPEGImages' / f'{image_id}.jpg')
    labels[image_id] = rng.integers(0, 60, (6, 8), dtype=np.uint8)
    write_png(str(root / 'SegmentationClassContext' / f'{image_id}.png'), labels[image_id])
  os.makedirs(root / 'ImageSets' / 'SegmentationContext')
  (root / 'ImageSets' / 'SegmentationContext' / 'val.txt').write_text(
      '2010_000001\n2008_000002\n')
  examples = loaded_examples(input_config(source='pascal_context', data_dir=str(root)), 'val')
  assert len(examples) == 2  # The split file's ids, in its order.
  for example, image_id in zip(examples, ('2010_000001', '2008_000002')):
    np.testing.assert_array_equal(example['label'], labels[image_id])  # 0 = background.
    assert tf.io.decode_jpeg(example['image']).shape == (6, 8, 3)


@pytest.mark.parametrize('train_ids', [True, False])
def test_cityscapes_layout(tmp_path, train_ids):
  rng = np.random.default_rng(2)
  expected = {}
  for city, name in (('aachen', 'aachen_000000_000019'), ('bonn', 'bonn_000004_000019')):
    write_png(str(tmp_path / 'leftImg8bit' / 'val' / city / f'{name}_leftImg8bit.png'),
              rng.integers(0, 256, (4, 8, 3), dtype=np.uint8))
    ids = rng.choice(np.array([0, 1, 7, 8, 26, 33, 255], np.uint8), (4, 8))
    mapped = np.vectorize(lambda i: segmentation_input.CITYSCAPES_TRAIN_IDS.get(i, 255))(ids)
    gt = tmp_path / 'gtFine' / 'val' / city
    write_png(str(gt / f'{name}_gtFine_labelIds.png'), ids)
    if train_ids:
      write_png(str(gt / f'{name}_gtFine_labelTrainIds.png'), mapped.astype(np.uint8))
    expected[name] = mapped
  examples = loaded_examples(input_config(source='cityscapes', data_dir=str(tmp_path)), 'val')
  for example, name in zip(examples, sorted(expected)):
    np.testing.assert_array_equal(example['label'], expected[name])
  assert {int(v) for e in examples for v in np.unique(e['label'])} <= {0, 1, 13, 18, 255}


def test_folder_errors(tmp_path):
  with pytest.raises(UserError, match='is not a folder'):
    segmentation_input.make_source(input_config(source='folder', data_dir=str(tmp_path / 'no')),
                                   'training')
  write_png(str(tmp_path / 'images' / 'training' / 'a.png'), np.zeros((4, 4, 3), np.uint8))
  os.makedirs(tmp_path / 'annotations' / 'training')
  with pytest.raises(UserError, match='1 of 1 label maps .* missing'):
    segmentation_input.make_source(input_config(source='folder', data_dir=str(tmp_path)),
                                   'training')
  with pytest.raises(UserError, match="unknown config.input.source 'ade'"):
    segmentation_input.make_source(input_config(source='ade'), 'training')


def test_folder_pairs_whose_image_or_labels_do_not_decode_are_skipped_or_named(tmp_path):
  for name in ('a', 'b', 'c'):
    for folder, shape in (('images', (4, 4, 3)), ('annotations', (4, 4))):
      write_png(str(tmp_path / folder / 'training' / f'{name}.png'), np.zeros(shape, np.uint8))
  bad = tmp_path / 'annotations' / 'training' / 'b.png'
  bad.write_bytes(bad.read_bytes()[:20])  # Cut short, as an interrupted copy leaves it.
  config = input_config(source='folder', data_dir=str(tmp_path))
  images, labels, _ = segmentation_input.file_lists(config, 'training')
  assert [os.path.basename(p) for p in images] == ['a.png', 'c.png']
  assert [os.path.basename(p) for p in labels] == ['a.png', 'c.png']
  config.on_bad_image = 'stop'
  with pytest.raises(UserError, match=re.escape(f"(split 'training') do not decode: {bad}")):
    segmentation_input.file_lists(config, 'training')


# ----------------------------------------------------------------------------- TFDS


def test_tfds_scene_parse150_on_mock_data():
  config = input_config(source='tfds', dataset='scene_parse150', reduce_zero_label=True,
                        crop_size=16, img_scale=(64, 16))
  with tfds.testing.mock_data(num_examples=4):
    examples = loaded_examples(config, 'train')
    raw = list(tfds.load('scene_parse150', split='train').as_numpy_iterator())
    # The mock draws each feature's size on its own: training refuses such pairs.
    with pytest.raises(UserError, match="split 'train' failed: label map and image differ"):
      next(segmentation.SegmentationTask(_task_config(config)).train_input(0))
  assert len(examples) == 4
  for example, expected in zip(examples, raw):
    red = expected['annotation'][..., 0].astype(int)  # The class is in the red channel.
    np.testing.assert_array_equal(example['label'], np.where(red == 0, 255, red - 1))
    np.testing.assert_array_equal(tf.io.decode_jpeg(example['image']).shape,
                                  expected['image'].shape)
  with tfds.testing.mock_data(as_dataset_fn=_encoded_pairs_of_one_size):
    batch = next(segmentation.SegmentationTask(_task_config(config)).train_input(0))
  assert batch['image'].shape == (2, 16, 16, 3) and batch['label'].shape == (2, 16, 16)


def _encoded_pairs_of_one_size(*args, **kwargs):
  """scene_parse150 examples as stored (encoded), each annotation the size of its image."""
  rng = np.random.default_rng(0)
  sizes = ((20, 30), (36, 24), (16, 16), (24, 40))

  def encoded(h, w, format):  # PIL: this runs inside tf.data's graph, where tf ops are symbolic.
    data = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(data, format)
    return data.getvalue()
  return tf.data.Dataset.from_tensor_slices({
      'image': [encoded(h, w, 'JPEG') for h, w in sizes],
      'annotation': [encoded(h, w, 'PNG') for h, w in sizes]})


def _task_config(input_fields):
  config = ml_collections.ConfigDict(dict(
      seed=0, input=dict(input_fields, train_split='train', eval_split='test', batch_size=2,
                         eval_batch_size=2, shuffle_buffer=8),
      model=dict(name='segmenter', patch_size=8, hidden_size=16, num_layers=1, num_heads=1,
                 mlp_dim=16, decoder='linear', num_classes=255)))
  return config


# ----------------------------------------------------------------------------- augmentation


def coded_example(height, width, seed=0):
  """An image whose pixels say where they come from: red = row, green = column (both < 256),
  blue = the label, so alignment survives any crop, flip or pad."""
  label = np.random.default_rng(seed).integers(0, 5, (height, width)).astype(np.uint8)
  rows, cols = np.mgrid[:height, :width]
  image = np.stack([rows, cols, label], -1).astype(np.uint8)
  return {'image': tf.constant(image), 'label': tf.constant(label)}


@pytest.mark.parametrize('height, width', [(40, 50), (20, 24)])  # The second is padded.
def test_crop_flip_pad_keep_image_and_label_aligned(height, width):
  config = input_config(img_scale=(width, height) if width > height else (height, width),
                        ratio_range=(1.0, 1.0), photometric=False, cat_max_ratio=1.0)
  preprocess = segmentation_input.train_preprocess(config)
  flips = set()
  for seed in range(12):
    out = preprocess(coded_example(height, width), tf.constant([seed, 3], tf.int64))
    image = np.round(out['image'].numpy() * 127.5 + 127.5).astype(int)
    label = out['label'].numpy()
    real = label != 255
    assert real.sum() == min(height, 32) * min(width, 32)
    # Padding is bottom/right: zeros in normalised space (the mean colour), label 255.
    assert np.all(out['image'].numpy()[~real] == 0)
    rows, cols = image[..., 0][real].reshape(min(height, 32), -1), image[..., 1][real].reshape(
        min(height, 32), -1)
    np.testing.assert_array_equal(image[..., 2][real], label[real])  # Label = blue.
    np.testing.assert_array_equal(np.diff(rows, axis=0), 1)  # Whole rows, in order.
    step = np.unique(np.diff(cols, axis=1))
    assert len(step) == 1 and abs(step[0]) == 1  # Whole columns, maybe mirrored.
    flips.add(int(step[0]))
  assert flips == {-1, 1}  # Both flip outcomes occurred.


def test_random_resize_follows_mmcv_sizes_and_nearest_labels():
  image, label = coded_example(30, 50)['image'], coded_example(30, 50)['label']
  for seed in range(5):
    seed = tf.constant([seed, 0], tf.int64)
    resized, resized_label = augment.random_resize(
        tf.cast(image, tf.float32), tf.cast(label, tf.int32), (2048, 512), (0.5, 2.0), seed)
    ratio = tf.random.stateless_uniform([], seed, 0.5, 2.0, tf.float64).numpy()
    scale = (int(2048 * ratio), int(512 * ratio))
    factor = min(max(scale) / 50, min(scale) / 30)
    size = (int(30 * factor + 0.5), int(50 * factor + 0.5))
    assert resized.shape[:2] == size and resized_label.shape == size
    # OpenCV's nearest: source pixel floor(dst * in / out).
    rows = np.minimum(np.floor(np.arange(size[0]) * 30 / size[0]).astype(int), 29)
    cols = np.minimum(np.floor(np.arange(size[1]) * 50 / size[1]).astype(int), 49)
    np.testing.assert_array_equal(resized_label, label.numpy()[rows][:, cols])


def test_random_crop_prefers_crops_without_a_dominant_class():
  label = np.zeros((64, 64), np.int32)
  label[40:, 40:] = 1  # A 24 x 24 corner; most 16 x 16 crops see only class 0.
  label[:4, :] = 255  # Ignored rows do not count.
  image = tf.zeros((64, 64, 3))

  def acceptable(crop):
    counts = np.bincount(crop[crop != 255], minlength=2)
    return (counts > 0).sum() > 1 and counts.max() / counts.sum() < 0.75

  def share_acceptable(cat_max_ratio):
    outcomes = [acceptable(augment.random_crop(image, tf.constant(label), 16, cat_max_ratio,
                                               tf.constant([s, 1], tf.int64))[1].numpy())
                for s in range(60)]
    return np.mean(outcomes)

  # A uniform crop is acceptable ~10% of the time; 11 draws make it ~70%.
  assert share_acceptable(1.0) < 0.25
  assert share_acceptable(0.75) > 0.55


def test_photometric_distortion_is_per_pixel_and_stays_in_range():
  rng = np.random.default_rng(0)
  palette = rng.integers(0, 256, (6, 3))
  index = rng.integers(0, 6, (20, 20))
  image = tf.constant(palette[index], tf.float32)
  changed = 0
  for seed in range(8):
    out = augment.photometric_distortion(image, tf.constant([seed, 5], tf.int64)).numpy()
    assert out.min() >= 0 and out.max() <= 255 and np.all(out == np.round(out))
    for i in range(6):  # Equal input pixels stay equal: colours change, positions do not.
      assert len(np.unique(out[index == i], axis=0)) == 1
    changed += not np.array_equal(out, image.numpy())
  assert changed >= 6


# ----------------------------------------------------------------------------- eval examples


def mmcv_and_segmenter_sizes(h, w, scale, img_scale, window):
  target = (int(img_scale[0] * scale), int(img_scale[1] * scale))
  factor = min(max(target) / max(h, w), min(target) / min(h, w))
  h1, w1 = int(h * factor + 0.5), int(w * factor + 0.5)
  if min(h1, w1) >= window:
    return (h1, w1), (h1, w1)
  if h1 < w1:
    return (h1, w1), (window, int(w1 / h1 * window))
  return (h1, w1), (int(h1 / w1 * window), window)


def test_view_sizes_equal_the_original_arithmetic():
  rng = np.random.default_rng(0)
  scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
  sizes = rng.integers(100, 2500, (300, 2))
  sizes = np.sort(sizes, axis=1)
  scaled, views = segmentation_input.scaled_sizes(sizes[:, 0], sizes[:, 1], scales,
                                                  (2048, 512), 512)
  for i, (h, w) in enumerate(sizes):
    for s, scale in enumerate(scales):
      expected = mmcv_and_segmenter_sizes(int(h), int(w), scale, (2048, 512), 512)
      assert (tuple(scaled[i, s].numpy()), tuple(views[i, s].numpy())) == expected


def test_eval_examples_keep_the_original_in_a_landscape_canvas():
  config = input_config(crop_size=16, img_scale=(64, 16), eval_scales=(0.5, 1.0))
  images = [np.full((20, 30, 3), 7, np.uint8), np.full((40, 12, 3), 9, np.uint8)]
  geometry = segmentation_input.eval_geometry([im.shape[:2] for im in images], (0.5, 1.0),
                                              (64, 16), 16)
  assert geometry.canvas == (20, 40)  # Short sides <= 20, long sides <= 40.
  preprocess = segmentation_input.eval_preprocess(config, geometry)
  labels = [np.arange(600).reshape(20, 30) % 7, np.arange(480).reshape(40, 12) % 5]
  out = [preprocess({'image': tf.constant(im), 'label': tf.constant(l.astype(np.uint8))})
         for im, l in zip(images, labels)]
  assert [int(o['transposed']) for o in out] == [0, 1]
  np.testing.assert_array_equal(out[0]['size'], [20, 30])
  np.testing.assert_array_equal(out[1]['size'], [12, 40])
  np.testing.assert_array_equal(out[1]['label'][:12, :40], labels[1].T)
  assert np.all(out[1]['label'][12:] == 255) and np.all(out[0]['label'][:, 30:] == 255)
  assert out[0]['image'].shape == (20, 40, 3) and out[0]['image'].dtype == tf.uint8
  for o in out:
    for s, scale in enumerate((0.5, 1.0)):
      scaled, view = mmcv_and_segmenter_sizes(int(o['size'][0]), int(o['size'][1]), scale,
                                              (64, 16), 16)
      assert tuple(o['scaled_size'][s].numpy()) == scaled
      assert tuple(o['view_size'][s].numpy()) == view


def test_label_values_outside_the_classes_are_an_error():
  with pytest.raises(UserError, match='label value 7 is neither a class'):
    segmentation_input.check_labels({'label': np.array([[0, 255, 7]])}, num_classes=4)
  segmentation_input.check_labels({'label': np.array([[0, 255, 3]])}, num_classes=4)
