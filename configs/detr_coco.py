"""DETR on COCO 2017, the paper's recipe (Carion et al. 2020; facebookresearch/detr).

  python -m detr_jax.main --config=configs/detr_coco.py:r50 --workdir=DIR       # 500 epochs
  python -m detr_jax.main --config=configs/detr_coco.py:dc5_r101,epochs=300 --workdir=DIR

The argument is BACKBONE[,epochs=N]: r50, dc5_r50, r101 or dc5_r101 (the four released models;
DC5 dilates the last stage, stride 16), and 500 epochs (lr drop at 400) or 300 (drop at 200).
The recipe is the same for all four; its durations are in epochs, so they stay right when
--config.input.batch_size changes.

The paper's ablations (its Tables 2-4, all R50 at 300 epochs: add epochs=300) are options:

  enc_layers=0|3|6|12          encoder depth (Table 2)
  spatial_pos=NAME             spatial positional encodings (Table 3; SPATIAL_POS below)
  output_pos=learned_input     object queries added once at the decoder input (Table 3)
  loss=class_l1|class_giou     box loss terms (Table 4; the default is class_l1_giou)
  aux_loss=False               no losses on the intermediate decoder layers (section 3.2)

e.g. configs/detr_coco.py:r50,epochs=300,spatial_pos=none,output_pos=learned_input (Table 3's
first row).

Expects COCO in TFDS (`tfds build coco/2017`; --config.input.data_dir=DIR) or as a COCO-format
folder (--config.input.source=coco_folder --config.input.data_dir=DIR). Start the backbone from
ImageNet: --config.init_from=resnet50.pth (torchvision's state dict), or fine-tune a released
model: --config.init_from=detr-r50-e632da11.pth.
"""

import ml_collections

from vit_jax.framework import config_args, loop_config

# Backbone name -> (ResNet depth, dilated last stage).
BACKBONES = {'r50': (50, False), 'dc5_r50': (50, True), 'r101': (101, False),
             'dc5_r101': (101, True)}
# Epochs -> the epoch of the x0.1 learning-rate drop (README: 500 drops at 400; 300 at 200;
# other lengths at 2/3, as scenic's DETR).
LR_DROP = {500: 400, 300: 200, 150: 100}
# spatial_pos -> (encoding, where the encoder gets it, where the decoder gets it): Table 3's
# "spatial pos. enc." columns. 'attention': added to queries and keys of every attention layer;
# 'input': added once to the encoder's input / to the memory the decoder reads.
SPATIAL_POS = {
    'sine_attention': ('sine', 'attention', 'attention'),  # sine at attn. / sine at attn.
    'none': ('sine', 'none', 'none'),  # none / none
    'sine_input': ('sine', 'input', 'input'),  # sine at input / sine at input
    'learned_attention': ('learned', 'attention', 'attention'),  # learned at attn. (both)
    'sine_attention_decoder': ('sine', 'none', 'attention'),  # none / sine at attn.
}
# output_pos -> where the object queries (query_embed) enter: Table 3's "output pos. enc.".
OUTPUT_POS = {'learned_attention': 'attention', 'learned_input': 'input'}
# loss -> (L1 weight, GIoU weight) in the loss: Table 4 (the class term always stays, at 1).
# The Hungarian matching keeps all three costs (1, 5, 2): the original sets them apart
# (--set_cost_* vs --*_loss_coef) and the paper ablates loss components only, so a changed
# matching is --config.matcher.*_weight.
LOSSES = {
    'class_l1_giou': (5.0, 2.0),  # class, l1, GIoU
    'class_l1': (5.0, 0.0),  # class, l1
    'class_giou': (0.0, 2.0),  # class, GIoU
}


def get_config(arg='r50'):
  args = config_args.parse(arg, 'configs/detr_coco.py', names={'backbone': BACKBONES},
                           options={'epochs': 500, 'enc_layers': 6,
                                    'spatial_pos': tuple(SPATIAL_POS),
                                    'output_pos': tuple(OUTPUT_POS), 'loss': tuple(LOSSES),
                                    'aux_loss': True})
  if args.enc_layers < 0:
    raise ValueError(f'enc_layers={args.enc_layers} in configs/detr_coco.py:{arg}: use 0 or '
                     'more encoder layers (the paper: 0, 3, 6, 12)')
  depth, dilation = BACKBONES[args.backbone]
  position_embedding, encoder_pos, decoder_pos = SPATIAL_POS[args.spatial_pos]
  bbox_weight, giou_weight = LOSSES[args.loss]
  config = loop_config.defaults()
  config.task = 'detection'
  config.seed = 42

  config.input.source = 'tfds'
  config.input.dataset = 'coco/2017'
  config.input.eval_split = 'validation'
  config.input.category_layout = 'coco_ids'  # Labels are COCO ids: 91 = max id + 1 classes.
  config.input.augment = 'detr'  # Flip; multi-scale resize, or resize + random crop + resize.
  config.input.train_scales = tuple(range(480, 801, 32))
  config.input.max_size = 1333
  config.input.crop_resize_scales = (400, 500, 600)
  config.input.crop_min, config.input.crop_max = 384, 600
  config.input.eval_scale = 800
  # Fixed shapes: each image zero-padded, with a mask, to the smallest bucket that holds it
  # (detr_jax/padding_buckets.py); batches are grouped by bucket, 8 batches at a time. The
  # original pads to each GPU's largest image. () pads every image to pad_size instead.
  config.input.pad_buckets = ((608, 832), (832, 608), (800, 1088), (1088, 800), (800, 1344),
                              (1344, 800))
  config.input.bucket_window = 8
  config.input.pad_size = (1333, 1333)  # The fixed canvas, when pad_buckets is ().
  config.input.max_boxes = 100  # COCO's most crowded train image has 93 non-crowd boxes.
  config.input.batch_size = 64  # 4 per GPU on 16 V100 (DC5: 1 per GPU on 64).
  config.input.eval_batch_size = 64
  config.input.shuffle_buffer = 10_000

  config.model.name = 'detr'
  config.model.num_classes = 91
  config.model.backbone_depth = depth
  config.model.dilation = dilation
  config.model.hidden_dim = 256
  config.model.num_queries = 100
  config.model.num_encoder_layers = args.enc_layers  # 6.
  config.model.num_decoder_layers = 6
  config.model.num_heads = 8
  config.model.mlp_dim = 2048
  config.model.dropout_rate = 0.1
  config.model.position_embedding = position_embedding  # 'sine'.
  config.model.encoder_spatial_pos = encoder_pos  # 'attention'.
  config.model.decoder_spatial_pos = decoder_pos  # 'attention'.
  config.model.output_pos = OUTPUT_POS[args.output_pos]  # 'attention'.

  config.loss = ml_collections.ConfigDict()
  config.loss.aux_loss = args.aux_loss  # True.
  config.loss.class_weight = 1.0
  config.loss.bbox_weight = bbox_weight  # 5.
  config.loss.giou_weight = giou_weight  # 2.
  config.loss.eos_coef = 0.1

  config.matcher = ml_collections.ConfigDict()  # The matching cost (--set_cost_*).
  config.matcher.class_weight = 1.0
  config.matcher.bbox_weight = 5.0
  config.matcher.giou_weight = 2.0

  config.optim.name = 'adamw'
  config.optim.lr = 1e-4
  config.optim.weight_decay = 1e-4
  config.optim.wd_mask = '.*'  # torch AdamW decays every parameter.
  config.optim.grad_clip_norm = 0.1
  # Backbone at 1e-5; the stem and layer1 frozen, as the original.
  config.optim.lr_mults = ((r'backbone/(conv1|layer1_\d+)/.*', 0.0), (r'backbone/.*', 0.1))
  config.optim.schedule = ml_collections.ConfigDict(dict(
      name='warmup_step', warmup_steps=0, decay_factor=0.1,
      boundary_epochs=(LR_DROP.get(args.epochs, args.epochs * 2 // 3),)))

  # Predictions drawn to TensorBoard at each eval: the best draw_top_k scoring draw_threshold.
  config.draw_threshold = 0.5
  config.draw_top_k = 10

  config.total_epochs = args.epochs
  config.eval_every_epochs = 10
  config.checkpoint_every_epochs = 1
  config.keep_checkpoints = 3
  return config
