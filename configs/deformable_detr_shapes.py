"""The offline Deformable DETR job: configs/detr_shapes.py's task, Deformable DETR's model.

  python -m detr_jax.main --config=configs/deformable_detr_shapes.py --workdir=workdirs/ddetr

The same generated shapes, small ResNet trained from scratch (GroupNorm) and step count as the
DETR job, so the two compare on equal footing; what changes is the paper's: multi-scale
deformable attention over four levels (strides 8-64: 8x8, 4x4, 2x2 and 1x1 maps of the 64 px
images), sigmoid classes with the focal loss, matching and loss weights class 2 / L1 5 / GIoU 2,
the sampling offsets and reference points at 0.1x the learning rate.
"""

import ml_collections

from vit_jax.framework import loop_config


def get_config():
  config = loop_config.defaults()
  config.task = 'detection'

  config.input.source = 'shapes'
  config.input.shapes = ml_collections.ConfigDict(dict(
      seed=0, num_train=2048, num_eval=256, image_size=64, min_objects=1, max_objects=3,
      min_object_size=16, max_object_size=32))
  config.input.eval_split = 'validation'
  config.input.category_layout = 'contiguous'  # 3 classes: rectangle, ellipse, triangle.
  config.input.augment = 'none'
  config.input.eval_scale = 64
  config.input.max_size = 64
  config.input.pad_size = (64, 64)
  config.input.pad_buckets = ()  # One image size: nothing to bucket.
  config.input.max_boxes = 4
  config.input.batch_size = 16  # 32.
  config.input.eval_batch_size = 64
  config.input.shuffle_buffer = 2048

  config.model.name = 'deformable_detr'
  config.model.num_classes = 3
  config.model.backbone_blocks = (1, 1, 1, 1)  # ResNet-50: (3, 4, 6, 3).
  config.model.backbone_width = 16  # 64.
  config.model.backbone_norm = 'group'  # Frozen BN needs ImageNet statistics; none offline.
  config.model.num_feature_levels = 4
  config.model.hidden_dim = 64  # 256.
  config.model.num_queries = 16  # 300.
  config.model.num_encoder_layers = 2  # 6.
  config.model.num_decoder_layers = 2  # 6.
  config.model.num_heads = 4  # 8.
  config.model.encoder_points = 4
  config.model.decoder_points = 4
  config.model.mlp_dim = 128  # 1024.
  config.model.dropout_rate = 0.0  # 0.1.
  config.model.with_box_refine = False
  config.model.two_stage = False

  config.loss = ml_collections.ConfigDict()
  config.loss.aux_loss = True
  config.loss.class_weight = 2.0
  config.loss.bbox_weight = 5.0
  config.loss.giou_weight = 2.0
  config.loss.focal_alpha = 0.25
  config.loss.focal_gamma = 2.0

  config.matcher = ml_collections.ConfigDict()  # The matching cost (--set_cost_*).
  config.matcher.class_weight = 2.0
  config.matcher.bbox_weight = 5.0
  config.matcher.giou_weight = 2.0

  config.optim.name = 'adamw'
  config.optim.lr = 2e-4
  config.optim.weight_decay = 1e-4
  config.optim.wd_mask = '.*'
  config.optim.grad_clip_norm = 0.1
  # The sampling offsets and reference points at 0.1x (the original's lr_linear_proj_mult); the
  # backbone at the full rate: it learns from scratch here (2e-5 is for ImageNet weights).
  config.optim.lr_mults = ((r'.*/(sampling_offsets|reference_points)/.*', 0.1),)
  config.optim.schedule = ml_collections.ConfigDict(dict(
      name='warmup_step', warmup_steps=100, decay_factor=0.1, boundary_fractions=(0.8,)))

  # Predictions drawn to TensorBoard at each eval: the best draw_top_k scoring draw_threshold.
  config.draw_threshold = 0.5
  config.draw_top_k = 10

  config.total_steps = 8000
  config.eval_every = 2000
  config.checkpoint_every = 2000
  return config
