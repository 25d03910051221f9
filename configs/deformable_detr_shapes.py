"""The offline Deformable DETR job: configs/detr_shapes.py's task, Deformable DETR's model.

  python -m detr_jax.main --config=configs/deformable_detr_shapes.py --workdir=workdirs/ddetr

The same generated shapes, small ResNet trained from scratch (GroupNorm) and step count as the
DETR job, so the two compare on equal footing; what changes is the paper's: multi-scale
deformable attention over four levels (strides 8-64: 8x8, 4x4, 2x2 and 1x1 maps of the 64 px
images), sigmoid classes with the focal loss, matching and loss weights class 2 / L1 5 / GIoU 2,
the sampling offsets and reference points at 0.1x the learning rate.

  --config=configs/deformable_detr_shapes.py:backbone=swin

takes DETR's small Swin backbone (configs/detr_shapes.py) at strides 8, 16, 32 (8x8, 4x4, 2x2),
the stride-64 level a 3x3/2 convolution of its stride-32 output, as with ResNet.

Measured (seed 0, --config.total_steps=2000, CPU, on the 2,048 training images the job had
then): Swin backbone (2.65M parameters in all) AP 0.149 / AP50 0.397 at step 1000, AP 0.277 /
AP50 0.542 at 2000; the ResNet one (1.05M) AP 0.311 / 0.681 and 0.580 / 0.879. From scratch the
small Swin learns slower.
"""

import ml_collections

from vit_jax.framework import config_args

detr = config_args.import_beside(__file__, 'detr_shapes')


def get_config(arg=''):
  """DETR's shapes job (data, backbone, widths, optimizer, steps) with Deformable DETR's model,
  focal classes and matching weights."""
  args = config_args.parse(arg, 'configs/deformable_detr_shapes.py', names={},
                           options={'backbone': ('resnet', 'swin')})
  config = detr.get_config(f'backbone={args.backbone}')

  config.model.name = 'deformable_detr'
  config.model.dilation = False  # Multi-scale levels instead of DETR's stride-16 map.
  config.model.num_feature_levels = 4
  config.model.num_queries = 16  # 300.
  config.model.encoder_points = 4
  config.model.decoder_points = 4
  config.model.with_box_refine = False
  config.model.two_stage = False

  config.loss = ml_collections.ConfigDict(dict(
      aux_loss=True, class_weight=2.0, bbox_weight=5.0, giou_weight=2.0, focal_alpha=0.25,
      focal_gamma=2.0))
  config.matcher.class_weight = 2.0  # The matching cost (--set_cost_*): 2 / 5 / 2.

  # The sampling offsets and reference points at 0.1x (the original's lr_linear_proj_mult); the
  # backbone at the full rate: it learns from scratch here (2e-5 is for ImageNet weights).
  config.optim.lr_mults = ((r'.*/(sampling_offsets|reference_points)/.*', 0.1),)
  return config
