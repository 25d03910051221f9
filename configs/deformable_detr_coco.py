"""Deformable DETR on COCO 2017, the paper's recipe (Zhu et al. 2021; fundamentalvision/
Deformable-DETR, configs/*.sh and main.py's defaults).

  python -m detr_jax.main --config=configs/deformable_detr_coco.py:deformable --workdir=DIR
  python -m detr_jax.main --config=configs/deformable_detr_coco.py:two_stage --workdir=DIR

VARIANT is one of the released models: single_scale, single_scale_dc5, deformable, box_refine
(+ iterative bounding box refinement) or two_stage (++ two-stage, which refines too). All share
one recipe: AdamW at 2e-4 (backbone 2e-5, sampling offsets and reference points 2e-5), weight
decay 1e-4 on everything, 50 epochs with the x0.1 drop at 40, gradient clipping at 0.1, batch 32,
DETR's augmentation; the durations are in epochs, so they stay right when
--config.input.batch_size changes.

Expects COCO in TFDS (`tfds build coco/2017`; --config.input.data_dir=DIR) or as a COCO-format
folder (--config.input.source=coco_folder --config.input.data_dir=DIR). Start the backbone from
ImageNet: --config.init_from=resnet50.pth (torchvision's state dict), or evaluate / fine-tune a
released model: --config.init_from=r50_deformable_detr-checkpoint.pth.
"""

import ml_collections

from vit_jax.framework import config_args, loop_config

detr_coco = config_args.import_beside(__file__, 'detr_coco')

# Variant -> model fields (the original's flags).
VARIANTS = {
    'deformable': {},
    'single_scale': {'num_feature_levels': 1},  # --num_feature_levels 1
    'single_scale_dc5': {'num_feature_levels': 1, 'dilation': True},  # + --dilation
    'box_refine': {'with_box_refine': True},  # --with_box_refine
    'two_stage': {'with_box_refine': True, 'two_stage': True},  # + --two_stage
}


def get_config(arg='deformable'):
  args = config_args.parse(arg, 'configs/deformable_detr_coco.py', names={'variant': VARIANTS},
                           options={'epochs': 50, 'lr_drop': 40})
  config = loop_config.defaults()
  config.task = 'detection'
  config.seed = 42

  # DETR's COCO input: the same sources, augmentation, padding buckets and box count. Each image
  # is padded to the smallest bucket that holds it, so its padded shape depends on the image
  # alone, which matters here: the input projections' GroupNorm takes its statistics over the
  # padded map (the original pads to each GPU's largest image).
  config.input = detr_coco.get_config('r50').input
  config.input.batch_size = 32  # 2 per GPU on 16 V100.
  config.input.eval_batch_size = 32
  config.input.shuffle_buffer = 10_000

  config.model.name = 'deformable_detr'
  config.model.num_classes = 91  # Sigmoid classes, indexed by COCO id.
  config.model.backbone_depth = 50
  config.model.num_feature_levels = 4
  config.model.hidden_dim = 256
  config.model.num_queries = 300
  config.model.num_encoder_layers = 6
  config.model.num_decoder_layers = 6
  config.model.num_heads = 8
  config.model.encoder_points = 4
  config.model.decoder_points = 4
  config.model.mlp_dim = 1024
  config.model.dropout_rate = 0.1
  config.model.update(VARIANTS[args.variant])

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
  config.optim.wd_mask = '.*'  # torch AdamW decays every parameter.
  config.optim.grad_clip_norm = 0.1
  # Backbone at 2e-5, its stem and layer1 frozen; sampling offsets and reference points at
  # 2e-5 (lr_linear_proj_mult 0.1; attention_weights is not among them).
  config.optim.lr_mults = ((r'backbone/(conv1|layer1_\d+)/.*', 0.0), (r'backbone/.*', 0.1),
                           (r'.*/?(sampling_offsets|reference_points)/.*', 0.1))
  config.optim.schedule = ml_collections.ConfigDict(dict(
      name='warmup_step', warmup_steps=0, decay_factor=0.1, boundary_epochs=(args.lr_drop,)))

  # Predictions drawn to TensorBoard at each eval: the best draw_top_k scoring draw_threshold.
  config.draw_threshold = 0.5
  config.draw_top_k = 10

  config.total_epochs = args.epochs
  config.eval_every_epochs = 5
  config.checkpoint_every_epochs = 1
  config.keep_checkpoints = 3
  return config
