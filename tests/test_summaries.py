"""The pictures of predictions (vit_jax/framework/drawing.py) on hand-made cases, and the examples each eval
draws. That every task's training writes them to TensorBoard is checked by the main-job tests
(test_train, test_detr_train, test_segmenter_train) with `helpers.event_images`."""

import jax
import numpy as np
import optax
import pytest

from helpers import tiny_digits_config
from vit_jax.classification import input as classification_input
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import drawing, evaluation, sharding, train

TITLE = drawing.with_caption(np.zeros((0, 1, 3), np.uint8), ['title']).shape[0]  # Header rows.


def has_colour(image, colour):
  return bool(np.all(image == np.asarray(colour, np.uint8), axis=-1).any())


def coloured(image):
  """The distinct colours of `image` that are not greys (text is antialiased in greys)."""
  pixels = image.reshape(-1, 3).astype(int)
  grey = (pixels[:, 0] == pixels[:, 1]) & (pixels[:, 1] == pixels[:, 2])
  return {tuple(p) for p in pixels[~grey]}


def test_to_rgb_maps_each_pixel_range_to_uint8():
  np.testing.assert_array_equal(drawing.to_rgb(np.array([[-1.0, 0.0, 1.0]]))[0, :, 0],
                                [0, 128, 255])  # ViT's [-1, 1]
  np.testing.assert_array_equal(drawing.to_rgb(np.array([[0.0, 0.5, 1.0]]))[0, :, 0],
                                [0, 128, 255])  # [0, 1]
  grey = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
  np.testing.assert_array_equal(drawing.to_rgb(grey), np.repeat(grey, 3, axis=-1))


def test_palette_is_the_same_for_any_number_of_classes():
  np.testing.assert_array_equal(drawing.palette(3), drawing.palette(200)[:3])
  assert len({tuple(c) for c in drawing.palette(200)}) == 200


def test_attention_rollout_of_two_layers_by_hand():
  # Layer 1: the class token attends only to patch 1; patches attend to themselves. With the
  # residual: row 0 = (0.5, 0.5, 0). Layer 2: uniform, with the residual 2/3 on the diagonal and
  # 1/6 elsewhere. Row 0 of layer2 @ layer1 = 2/3 (.5, .5, 0) + 1/6 (0, 1, 0) + 1/6 (0, 0, 1).
  first = np.array([[0, 1, 0], [0, 1, 0], [0, 0, 1]], np.float32)
  second = np.full((2, 3, 3), 1 / 3)  # Two identical heads: their mean is the same.
  np.testing.assert_allclose(drawing.attention_rollout([first, second]), [1 / 2, 1 / 6])


def test_box_is_drawn_on_its_pixels_in_its_class_colour():
  image = np.zeros((40, 50, 3), np.uint8)
  picture = drawing.draw_boxes(image, [[10, 5, 30, 25]], [2], width=2)
  colour = drawing.palette(3)[2]
  # Below the name tag at the top-left corner: the 2-pixel edges x 10-11 and 28-29, y 23-24.
  for y, x in [(22, 10), (22, 11), (22, 28), (22, 29), (24, 20), (23, 20), (8, 29)]:
    np.testing.assert_array_equal(picture[y, x], colour, err_msg=f'{(y, x)}')
  for y, x in [(22, 12), (22, 27), (22, 30), (26, 20), (22, 9), (30, 40)]:  # Inside, outside.
    np.testing.assert_array_equal(picture[y, x], 0, err_msg=f'{(y, x)}')


def test_detections_show_truth_and_the_top_k_predictions_over_the_threshold():
  image = np.zeros((60, 60, 3), np.uint8)
  boxes = [[5, 5, 20, 20], [25, 25, 40, 40], [40, 5, 55, 20]]
  picture = drawing.draw_detections(image, [[10, 10, 30, 30]], [2], boxes, [0, 1, 2],
                                    [0.9, 0.3, 0.8], ['a', 'b', 'c'], threshold=0.5, top_k=1)
  factor = drawing.enlargement(image.shape)  # 3: 60 pixels -> 180
  truth, predicted = picture[:, :60 * factor], picture[:, 60 * factor + 6:]
  colours = drawing.palette(3)
  assert has_colour(truth, colours[2]) and not has_colour(truth, colours[0])
  # Score 0.3 is under the threshold, 0.8 beyond the top 1: only class 0 is drawn.
  assert has_colour(predicted, colours[0])
  assert not has_colour(predicted, colours[1]) and not has_colour(predicted, colours[2])
  # The true box's left edge, x = 10 -> 30 in the enlarged image, halfway down (y 20 -> 60).
  np.testing.assert_array_equal(truth[TITLE + 60, 10 * factor], colours[2])


def test_legend_colours_are_the_mask_colours():
  image = np.full((20, 20, 3), 128, np.uint8)
  truth = np.zeros((20, 20), np.int64)
  truth[:, 10:] = 2
  truth[0] = 255  # Ignored: the image shows through.
  predicted = np.zeros((20, 20), np.int64)
  predicted[5:10, 5:10] = 1
  picture = drawing.draw_segmentation(image, truth, predicted, ['a', 'b', 'c', 'd'],
                                      ignore_index=255, alpha=1.0)
  factor = drawing.enlargement(image.shape)  # 7: 20 pixels -> 140
  panel = 20 * factor
  top = TITLE + panel  # The legend starts below the panels.
  truth_panel = picture[TITLE:top, panel + 6:2 * panel + 6]
  predicted_panel = picture[TITLE:top, 2 * panel + 12:3 * panel + 12]
  colours = drawing.palette(4)
  np.testing.assert_array_equal(truth_panel[10 * factor, 15 * factor], colours[2])
  np.testing.assert_array_equal(truth_panel[10 * factor, 5 * factor], colours[0])
  np.testing.assert_array_equal(truth_panel[0, 0], 128)
  np.testing.assert_array_equal(predicted_panel[7 * factor, 7 * factor], colours[1])
  # The legend names classes 0, 1 and 2 in exactly the colours the masks use; 3 is absent.
  assert coloured(picture[top:]) == {tuple(int(v) for v in colours[k]) for k in range(3)}


def test_segments_legend_names_each_segment_in_its_colour():
  image = np.full((32, 32, 3), 128, np.uint8)
  segments = np.zeros((32, 32), np.int64)
  segments[2:10, 2:10] = 3
  segments[12:20, 12:30] = 7
  picture = drawing.draw_segments(image, segments, {3: 'circle 1', 7: 'sky'}, alpha=1.0)
  factor = drawing.enlargement(image.shape)  # 4
  segment_panel = picture[TITLE:TITLE + 32 * factor, 32 * factor + 6:]
  colours = drawing.palette(8)
  np.testing.assert_array_equal(segment_panel[5 * factor, 5 * factor], colours[3])
  np.testing.assert_array_equal(segment_panel[15 * factor, 20 * factor], colours[7])
  np.testing.assert_array_equal(segment_panel[25 * factor, 5 * factor], 128)  # No segment.
  assert coloured(picture[TITLE + 32 * factor:]) == {tuple(int(v) for v in colours[k])
                                                    for k in (3, 7)}


def test_classification_shows_attention_on_its_patch_and_says_right_or_wrong():
  image = np.zeros((16, 16), np.float32) - 1  # Black in ViT's [-1, 1].
  attention = np.zeros((4, 4))
  attention[1, 2] = 1.0
  picture = drawing.draw_classification(image, 3, 3, attention=attention)
  factor = drawing.enlargement(image.shape)  # 8: 16 pixels -> 128
  heat = picture[TITLE:TITLE + 16 * factor, 16 * factor + 6:32 * factor + 6, 0]
  # Patch (1, 2) covers image rows 4-7 and columns 8-11: white heat at 60% over black = 153.
  assert set(np.unique(heat[4 * factor:8 * factor, 8 * factor:12 * factor])) == {153}
  heat[4 * factor:8 * factor, 8 * factor:12 * factor] = 0
  assert not heat.any()

  def greenish_and_reddish(picture):
    caption = picture[TITLE + 16 * factor:].astype(int)
    red, green = caption[..., 0], caption[..., 1]
    return (green > red + 60).sum(), (red > green + 60).sum()
  right, wrong = (greenish_and_reddish(drawing.draw_classification(image, 3, p, [str(k) for k in
                                                                                 range(10)]))
                  for p in (3, 5))
  assert right[0] > 20 and right[1] == 0  # 'predicted: 3' in green.
  assert wrong[1] > 20 and wrong[0] == 0  # 'predicted: 5' in red.


@pytest.mark.parametrize('count', [4, 0])
def test_each_eval_draws_the_first_examples_of_the_eval_split(count):
  task = ClassificationTask(tiny_digits_config(draw_examples=count))
  examples = task.drawn_examples()
  if count == 0:
    assert examples is None
    return
  assert examples['image'].shape == (4, 16, 16, 1) and examples['_mask'].tolist() == [1] * 4
  np.testing.assert_array_equal(examples['label'],
                                classification_input.digits_arrays('test')['label'][:4])


class RecordingWriter:
  def __init__(self):
    self.scalars, self.images = {}, {}

  def write_scalars(self, step, scalars):
    self.scalars[step] = scalars

  def write_images(self, step, images):
    self.images[step] = images


def test_an_eval_writes_its_pictures_and_a_drawing_that_fails_costs_only_them(caplog):
  task = ClassificationTask(tiny_digits_config(draw_examples=2))
  state = train.init_state(task, optax.identity(), jax.random.PRNGKey(0))
  mesh = sharding.make_mesh(task.config.mesh)
  batch_sharding = sharding.batch_sharding(mesh, sharding.logical_rules(
      task.config.sharding_rules))
  eval_step = jax.jit(lambda s, b: dict(task.eval_outputs({'params': s.params}, b),
                                        _mask=b['_mask']))
  draw_step = jax.jit(lambda s, b: task.draw_outputs({'params': s.params}, b))

  def evaluate_at(step):
    writer = RecordingWriter()
    evals = evaluation.BackgroundEvaluation(task, eval_step, batch_sharding, writer, draw_step)
    evals.start(step, state)
    evals.write_finished(wait=True)
    evals.close()
    return writer

  written = evaluate_at(5)
  assert written.scalars[5]['eval_num_examples'] == 360
  assert sorted(written.images[5]) == ['eval_predictions/0', 'eval_predictions/1']
  assert all(image.dtype == np.uint8 and image.shape[2] == 3 and image.std() > 10
             for image in written.images[5].values())

  def fails(batch, outputs):
    raise ValueError('a bug in a drawing')
  task.draw = fails
  written = evaluate_at(6)
  assert written.scalars[6]['eval_num_examples'] == 360 and not written.images
  assert 'Drawing the predictions failed; training goes on without them' in caplog.text
  assert 'a bug in a drawing' in caplog.text
