"""The offline DETR panoptic job: things (rectangles, ellipses, triangles) and stuff (sky and
ground bands) on generated images.

  python -m detr_jax.main --config=configs/detr_panoptic_shapes.py --workdir=workdirs/pan_shapes

The images are generated from a seed (detr_jax/panoptic_shapes.py). The losses, matching,
post-process and PQ are the paper's; the model is small and trained from scratch, box model and
mask head together in one stage (the paper trains the box model first, then the mask head on
the frozen box model: configs/detr_panoptic.py; offline there is no box model to start from).
On the 128 validation images after the 2000 steps: PQ 0.688 (things 0.531, stuff 0.923); 0.556
at step 1000; 3000 steps (the drop at 2400) reach 0.765.
"""

import ml_collections

from vit_jax.framework import config_args

boxes = config_args.import_beside(__file__, 'detr_shapes')


def get_config():
  """The boxes job (configs/detr_shapes.py) with stuff, masks and the panoptic task."""
  config = boxes.get_config()
  config.task = 'panoptic'

  config.input.shapes = ml_collections.ConfigDict(dict(
      seed=0, num_train=2048, num_eval=128, image_size=64, min_objects=1, max_objects=3,
      min_object_size=12, max_object_size=28))
  config.input.category_layout = 'contiguous'  # 5 classes: 3 things, sky, ground.
  config.input.gt_canvas = (64, 64)
  config.input.max_boxes = 5  # Up to 3 things and 2 stuff bands.
  config.input.eval_batch_size = 32

  config.model.freeze_detr = False  # One stage: the box model trains with the mask head.
  config.model.num_classes = 5
  config.model.num_heads = 8  # Masks at stride 4 (16x16) from the 4x4 feature map.

  config.loss.mask_weight = 1.0  # Focal.
  config.loss.dice_weight = 1.0

  config.optim.lr = 3e-4  # 1e-4.

  config.total_steps = 2000
  config.eval_every = 1000
  config.checkpoint_every = 1000
  return config
