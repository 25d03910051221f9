"""Segmenter's recipe (Strudel et al. 2021; rstrudel/segmenter), shared by the dataset configs.

Not a config itself: segmenter_ade20k.py, segmenter_pascal_context.py and
segmenter_cityscapes.py take what every dataset shares from here and set their row of the
paper's table (classes, crop, batch, lr, iterations, label layout).

Their argument is VARIANT[,crop=N][,train_subset=N]: SIZE PATCH _ DECODER with SIZE t|s|b|l,
PATCH 8|16|32 and DECODER mask|linear, e.g. s16_mask, b16_linear, b8_linear, l16_mask; a deit_
prefix (deit_b16_mask, deit_b16_linear) takes the distilled DeiT encoder (ImageNet
normalisation). The paper's backbone and patch-size rows (Table 3) are s16_linear, s32_linear,
b32_linear, b16_linear, b8_linear, l16_linear and deit_b16_linear. train_subset=N trains on a
fixed N of the training images (Table 5: 4000 ... 16000 ADE20K images; the first N of one seeded
permutation, so a smaller subset lies inside a larger one), for as many epochs as the full set.
"""

import ml_collections

from vit_jax.framework import config_args, loop_config

SIZES = {'t': 'Ti', 's': 'S', 'b': 'B', 'l': 'L'}
PATCHES = (8, 16, 32)
DECODERS = {'mask': 'mask_transformer', 'linear': 'linear'}
# Variant name -> (encoder variant, decoder, DeiT).
VARIANTS = {f'{size}{patch}_{decoder}': (f'{SIZES[size]}/{patch}', DECODERS[decoder], False)
            for size in SIZES for patch in PATCHES for decoder in DECODERS}
VARIANTS.update({f'deit_{size}16_{decoder}': (f'DeiT-{SIZES[size]}/16', DECODERS[decoder], True)
                 for size in 'tsb' for decoder in DECODERS})

# AugReg i21k -> ImageNet-1k fine-tuned at 384: the files timm loads for Segmenter's backbones
# (vit_*_patch*_384). B/8 has none (Segmenter converted its own, never published) and DeiT-B is
# a .pth (https://dl.fbaipublicfiles.com/deit/deit_base_distilled_patch16_384-d0272ac0.pth):
# download it and pass it as --config.init_from.
AUGREG = 'gs://vit_models/augreg/{}--imagenet2012-steps_20k-lr_{}-res_384.npz'
INIT = {
    'Ti/16': AUGREG.format('Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0', '0.03'),
    'S/16': AUGREG.format('S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0', '0.03'),
    'S/32': AUGREG.format('S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0', '0.03'),
    'B/16': AUGREG.format('B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0', '0.01'),
    'B/32': AUGREG.format('B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0', '0.03'),
    'L/16': AUGREG.format('L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1', '0.01'),
}


def parse(arg: str, config_file: str):
  """VARIANT[,crop=N][,train_subset=N] -> namespace(variant, decoder, deit, crop, train_subset);
  crop and train_subset None unless given."""
  args = config_args.parse(arg, config_file, names={'variant': VARIANTS},
                           options={'crop': int, 'train_subset': int})
  args.variant, args.decoder, args.deit = VARIANTS[args.variant]
  return args


def get_config(args, crop: int) -> ml_collections.ConfigDict:
  """Everything the datasets share, for the parsed `args` at `crop`; the caller sets its row:
  input (source, data_dir, splits, label layout, img_scale, batch sizes, eval_stride,
  shuffle_buffer), model.num_classes, optim.lr and the durations."""
  config = loop_config.defaults()
  config.task = 'segmentation'

  config.input.class_names = ()
  config.input.normalization = 'deit' if args.deit else 'vit'
  config.input.ratio_range = (0.5, 2.0)
  config.input.crop_size = crop
  config.input.cat_max_ratio = 0.75
  config.input.photometric = True
  config.input.eval_scales = (1.0,)  # Multi-scale: (0.5, 0.75, 1.0, 1.25, 1.5, 1.75).
  config.input.eval_flip = False  # Multi-scale: True.
  config.input.train_subset = args.train_subset  # None: every training image.

  config.model.name = 'segmenter'
  config.model.variant = args.variant
  config.model.decoder = args.decoder
  config.model.decoder_layers = 2
  config.model.image_size = crop
  config.model.dropout_rate = 0.0
  config.model.drop_path_rate = 0.1
  config.model.decoder_dropout_rate = 0.1
  config.model.decoder_drop_path_rate = 0.0

  config.optim.name = 'nesterov'  # timm's "sgd" is Nesterov SGD.
  config.optim.momentum = 0.9
  config.optim.weight_decay = 0.0
  config.optim.grad_clip_norm = None
  config.optim.schedule = ml_collections.ConfigDict(
      dict(name='warmup_poly', warmup_steps=0, power=0.9, end_value=1e-5))

  config.checkpoint_every_epochs = 1
  config.init_from = INIT.get(args.variant) or ml_collections.config_dict.placeholder(str)
  return config
