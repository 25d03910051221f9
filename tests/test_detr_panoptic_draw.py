"""The panoptic task's eval pictures: the ground truth's segments beside the post-processed
prediction's, on the drawn eval examples of the generated shapes."""

import numpy as np

from detr_jax import panoptic
from vit_jax.framework import drawing
from helpers import load_config

NUM_QUERIES, STRIDE = 4, 4


def test_pictures_show_the_truth_and_the_kept_query_segment_in_their_colours():
  config = load_config('detr_panoptic_shapes')
  config.draw_examples = 1
  config.input.shapes.num_eval = 4
  task = panoptic.PanopticTask(config)
  batch = task.drawn_examples()
  num_classes = task.model.num_classes
  size = tuple(int(s) for s in batch['size'][0])  # 64 x 64, no padding beyond the image.
  # Query 1 is sure of class 0 and owns the top half of the image, query 3 of the last class
  # (stuff) owns the rest; the others are no-object.
  logits = np.full((1, NUM_QUERIES, num_classes + 1), -10.)
  logits[0, :, -1] = 10.
  logits[0, 1, [0, -1]] = 10., -10.
  logits[0, 3, [num_classes - 1, -1]] = 10., -10.
  masks = np.zeros((1, NUM_QUERIES, size[0] // STRIDE, size[1] // STRIDE))
  masks[0, 1, :size[0] // STRIDE // 2] = 10.
  masks[0, 3] = 5.
  pictures = task.draw(batch, {'logits': logits, 'masks': masks})
  assert list(pictures) == ['0']
  picture = pictures['0']

  # Rebuild the expected picture from drawing's own parts: the truth panel from the example's
  # resized segment map, the prediction panel from segment 1 on the top half and
  # segment 2 elsewhere.
  image = batch['image'][0][:size[0], :size[1]] * [0.229, 0.224, 0.225] + [0.485, 0.456, 0.406]
  image = np.clip(image, 0, 1)
  predicted = np.full(size, 2)
  predicted[:size[0] // 2] = 1
  _, names = task._label_kinds
  real = np.flatnonzero(batch['segment_mask'][0])
  true_names = {k + 1: f'{names[batch["segment_labels"][0][k]]} {k + 1}' for k in real}
  expected = drawing.side_by_side(
      [drawing.draw_segments(image, batch['segments'][0][:size[0], :size[1]], true_names),
       drawing.draw_segments(image, predicted, {1: f'{names[0]} 1 (1.00)',
                                                2: f'{names[num_classes - 1]} 2 (1.00)'})],
      ['truth', 'prediction'])
  assert len(real) >= 2  # At least one thing and one stuff band in the truth.
  np.testing.assert_array_equal(picture, expected)
