"""Segmenter on Pascal Context (60 classes with background), the paper's recipe.

  python -m segmenter_jax.main --config=configs/segmenter_pascal_context.py:l16_mask \
      --config.input.data_dir=DIR/VOCdevkit/VOC2010 --workdir=DIR

The argument is VARIANT[,CROP] as in configs/segmenter_ade20k.py (default l16_mask, the
released Seg-L-Mask/16 at 480). Data: VOC2010 with SegmentationClassContext/ label maps (0 =
background, 1..59 the classes, as mmseg's pascal_context converter writes them) and
ImageSets/SegmentationContext/{train,val}.txt; 4,996 train and 5,104 val images. Scored over all
60 classes including background (the "PC-60" protocol).
"""

import ml_collections

SIZES = {'t': 'Ti', 's': 'S', 'b': 'B', 'l': 'L'}
DECODERS = {'mask': 'mask_transformer', 'linear': 'linear'}
AUGREG = 'gs://vit_models/augreg/{}--imagenet2012-steps_20k-lr_{}-res_384.npz'
INIT = {
    'Ti/16': AUGREG.format('Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0', '0.03'),
    'S/16': AUGREG.format('S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0', '0.03'),
    'B/16': AUGREG.format('B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0', '0.01'),
    'L/16': AUGREG.format('L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1', '0.01'),
}


def parse_variant(arg: str):
  """'l16_mask' -> ('L/16', 'mask_transformer', deit=False, crop 480)."""
  name, _, crop = arg.partition(',')
  deit = name.startswith('deit_')
  name = name[len('deit_'):] if deit else name
  size_patch, _, decoder = name.partition('_')
  size, patch = size_patch[:1], size_patch[1:]
  if size not in SIZES or not patch.isdigit() or decoder not in DECODERS:
    raise ValueError(f'unknown Segmenter variant {arg!r}: use SIZE PATCH _ DECODER[,CROP], '
                     'e.g. l16_mask, b16_linear, deit_b16_mask, l16_mask,512')
  variant = f'{"DeiT-" if deit else ""}{SIZES[size]}/{patch}'
  return variant, DECODERS[decoder], deit, int(crop or 480)


def get_config(arg='l16_mask'):
  variant, decoder, deit, crop = parse_variant(arg)
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.input = ml_collections.ConfigDict()
  config.input.source = 'pascal_context'
  config.input.data_dir = None  # VOCdevkit/VOC2010/
  config.input.train_split = 'train'
  config.input.eval_split = 'val'
  config.input.reduce_zero_label = False  # Background is class 0.
  config.input.class_names = ()
  config.input.normalization = 'deit' if deit else 'vit'
  config.input.img_scale = (4160, 520)  # Keep-ratio resize: short side 520.
  config.input.ratio_range = (0.5, 2.0)
  config.input.crop_size = crop
  config.input.cat_max_ratio = 0.75
  config.input.photometric = True
  config.input.eval_stride = 320  # Train-time eval; segm/eval/miou.py uses crop - 32.
  config.input.eval_scales = (1.0,)  # Multi-scale: (0.5, 0.75, 1.0, 1.25, 1.5, 1.75).
  config.input.eval_flip = False  # Multi-scale: True.
  config.input.batch_size = 16
  config.input.eval_batch_size = 16
  config.input.shuffle_buffer = 4996

  config.model = ml_collections.ConfigDict()
  config.model.name = 'segmenter'
  config.model.variant = variant
  config.model.decoder = decoder
  config.model.decoder_layers = 2
  config.model.num_classes = 60
  config.model.image_size = crop
  config.model.dropout_rate = 0.0
  config.model.drop_path_rate = 0.1
  config.model.decoder_dropout_rate = 0.1
  config.model.decoder_drop_path_rate = 0.0
  config.model.dtype = 'float32'
  config.model.remat = False

  config.optim = ml_collections.ConfigDict()
  config.optim.name = 'nesterov'  # timm's "sgd" is Nesterov SGD.
  config.optim.momentum = 0.9
  config.optim.lr = 1e-3
  config.optim.weight_decay = 0.0
  config.optim.grad_clip_norm = None
  config.optim.accum_steps = 1
  config.optim.lr_mults = ()
  config.optim.schedule = ml_collections.ConfigDict(
      dict(name='warmup_poly', warmup_steps=0, power=0.9, end_value=1e-5))

  config.total_steps = 256 * 313  # 256 epochs of ceil(4,996 / 16) iterations: "80k".
  config.log_every = 100
  config.eval_every = 16 * 313
  config.checkpoint_every = 313
  config.keep_checkpoints = 2
  config.init_from = INIT.get(variant)

  config.mesh = (('data', -1), ('model', 1))
  config.sharding_rules = (('batch', 'data'),)
  return config
