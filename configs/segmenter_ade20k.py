"""Segmenter on ADE20K, the paper's recipe (Strudel et al. 2021; rstrudel/segmenter).

  python -m segmenter_jax.main --config=configs/segmenter_ade20k.py:s16_mask \
      --config.input.data_dir=DIR/ADEChallengeData2016 --workdir=DIR

The argument is VARIANT[,CROP]: SIZE PATCH _ DECODER with SIZE t|s|b|l, PATCH 8|16|32 and
DECODER mask|linear, e.g. t16_mask, s16_mask, b16_mask, b8_linear, l16_mask; a deit_ prefix
(deit_b16_mask, deit_b16_linear) takes the distilled DeiT-B encoder (ImageNet normalisation).
CROP defaults to 512 (640 for L, as the released Seg-L-Mask/16). The encoder starts from the
AugReg ImageNet-21k -> 1k checkpoint at 384 the original used (config.init_from; B/8, /32 and
DeiT have no such file here: pass yours).

Data: ADEChallengeData2016 (images/ and annotations/ with training/ and validation/), labels
0 ("other") ignored and the 150 classes shifted down by one. TFDS also has scene_parse150
(--config.input.source=tfds --config.input.train_split=train --config.input.eval_split=test),
but its annotations are the 2017 instance masks (100 categories), not these 150 classes.
"""

import ml_collections

SIZES = {'t': 'Ti', 's': 'S', 'b': 'B', 'l': 'L'}
DECODERS = {'mask': 'mask_transformer', 'linear': 'linear'}
# AugReg i21k -> ImageNet-1k fine-tuned at 384: the files timm 0.4.12 loads for Segmenter.
AUGREG = 'gs://vit_models/augreg/{}--imagenet2012-steps_20k-lr_{}-res_384.npz'
INIT = {
    'Ti/16': AUGREG.format('Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0', '0.03'),
    'S/16': AUGREG.format('S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0', '0.03'),
    'B/16': AUGREG.format('B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0', '0.01'),
    'L/16': AUGREG.format('L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1', '0.01'),
}


def parse_variant(arg: str):
  """'s16_mask' -> ('S/16', 'mask_transformer', deit=False, crop)."""
  name, _, crop = arg.partition(',')
  deit = name.startswith('deit_')
  name = name[len('deit_'):] if deit else name
  size_patch, _, decoder = name.partition('_')
  size, patch = size_patch[:1], size_patch[1:]
  if size not in SIZES or not patch.isdigit() or decoder not in DECODERS:
    raise ValueError(f'unknown Segmenter variant {arg!r}: use SIZE PATCH _ DECODER[,CROP], '
                     'e.g. s16_mask, b16_linear, l16_mask, b8_linear, deit_b16_mask, '
                     'l16_mask,512')
  variant = f'{"DeiT-" if deit else ""}{SIZES[size]}/{patch}'
  return variant, DECODERS[decoder], deit, int(crop or (640 if size == 'l' else 512))


def get_config(arg='s16_mask'):
  variant, decoder, deit, crop = parse_variant(arg)
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.input = ml_collections.ConfigDict()
  config.input.source = 'folder'
  config.input.data_dir = None  # ADEChallengeData2016/
  config.input.dataset = 'scene_parse150'  # source=tfds only.
  config.input.train_split = 'training'  # 20,210 images.
  config.input.eval_split = 'validation'  # 2,000 images.
  config.input.image_dirs = None  # Default images/<split>.
  config.input.label_dirs = None  # Default annotations/<split>.
  config.input.label_suffix = '.png'
  config.input.reduce_zero_label = True  # 0 "other" -> ignore; classes 1..150 -> 0..149.
  config.input.class_names = ()
  config.input.normalization = 'deit' if deit else 'vit'
  config.input.img_scale = (2048, 512)  # Keep-ratio resize: short side 512.
  config.input.ratio_range = (0.5, 2.0)
  config.input.crop_size = crop
  config.input.cat_max_ratio = 0.75
  config.input.photometric = True
  config.input.eval_stride = crop  # Train-time eval; segm/eval/miou.py uses crop - 32.
  config.input.eval_scales = (1.0,)  # Multi-scale: (0.5, 0.75, 1.0, 1.25, 1.5, 1.75).
  config.input.eval_flip = False  # Multi-scale: True.
  config.input.batch_size = 8
  config.input.eval_batch_size = 8
  config.input.shuffle_buffer = 20_210

  config.model = ml_collections.ConfigDict()
  config.model.name = 'segmenter'
  config.model.variant = variant
  config.model.decoder = decoder
  config.model.decoder_layers = 2
  config.model.num_classes = 150
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

  config.total_steps = 64 * 2527  # 64 epochs of ceil(20,210 / 8) iterations: "160k".
  config.log_every = 100
  config.eval_every = 4 * 2527
  config.checkpoint_every = 2527
  config.keep_checkpoints = 2
  config.init_from = INIT.get(variant)

  config.mesh = (('data', -1), ('model', 1))
  config.sharding_rules = (('batch', 'data'),)
  return config
