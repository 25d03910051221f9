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

from vit_jax.framework import loop_config


def get_config():
  config = loop_config.defaults()
  config.task = 'panoptic'

  config.input.source = 'shapes'
  config.input.shapes = ml_collections.ConfigDict(dict(
      seed=0, num_train=2048, num_eval=128, image_size=64, min_objects=1, max_objects=3,
      min_object_size=12, max_object_size=28))
  config.input.eval_split = 'validation'
  config.input.category_layout = 'contiguous'  # 5 classes: 3 things, sky, ground.
  config.input.augment = 'none'
  config.input.eval_scale = 64
  config.input.max_size = 64
  config.input.pad_size = (64, 64)
  config.input.pad_buckets = ()  # One image size: nothing to bucket.
  config.input.gt_canvas = (64, 64)
  config.input.max_boxes = 5  # Up to 3 things and 2 stuff bands.
  config.input.batch_size = 16
  config.input.eval_batch_size = 32
  config.input.shuffle_buffer = 2048

  config.model = ml_collections.ConfigDict()
  config.model.name = 'detr'
  config.model.remat = 'none'  # Or a policy name: 'full', 'dots_saveable', ...
  config.model.scan = False  # True: encoder and decoder layers under nn.scan.
  config.model.freeze_detr = False  # One stage: the box model trains with the mask head.
  config.model.num_classes = 5
  config.model.backbone_blocks = (1, 1, 1, 1)  # ResNet-50: (3, 4, 6, 3).
  config.model.backbone_width = 16  # 64.
  config.model.dilation = True  # Stride 16: a 4x4 feature map; masks at stride 4 (16x16).
  config.model.backbone_norm = 'group'  # Frozen BN needs ImageNet statistics; none offline.
  config.model.hidden_dim = 64  # 256.
  config.model.num_queries = 8  # 100.
  config.model.num_encoder_layers = 2  # 6.
  config.model.num_decoder_layers = 2  # 6.
  config.model.num_heads = 8
  config.model.mlp_dim = 128  # 2048.
  config.model.dropout_rate = 0.0  # 0.1.
  config.model.dtype = 'float32'

  config.loss = ml_collections.ConfigDict()
  config.loss.aux_loss = True
  config.loss.class_weight = 1.0
  config.loss.bbox_weight = 5.0
  config.loss.giou_weight = 2.0
  config.loss.eos_coef = 0.1
  config.loss.mask_weight = 1.0  # Focal.
  config.loss.dice_weight = 1.0

  config.matcher = ml_collections.ConfigDict()  # The matching cost (--set_cost_*).
  config.matcher.class_weight = 1.0
  config.matcher.bbox_weight = 5.0
  config.matcher.giou_weight = 2.0

  config.optim.name = 'adamw'
  config.optim.lr = 3e-4  # 1e-4.
  config.optim.weight_decay = 1e-4
  config.optim.wd_mask = '.*'
  config.optim.grad_clip_norm = 0.1
  config.optim.schedule = ml_collections.ConfigDict(dict(
      name='warmup_step', warmup_steps=100, decay_factor=0.1, boundary_fractions=(0.8,)))

  config.total_steps = 2000
  config.eval_every = 1000
  config.checkpoint_every = 1000
  return config
