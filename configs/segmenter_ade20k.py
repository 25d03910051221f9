"""Segmenter on ADE20K, the paper's recipe (Strudel et al. 2021; rstrudel/segmenter).

  python -m segmenter_jax.main --config=configs/segmenter_ade20k.py:s16_mask \
      --config.input.data_dir=DIR/ADEChallengeData2016 --workdir=DIR

The argument is VARIANT[,crop=N] (configs/segmenter_recipe.py), e.g. t16_mask, s16_mask,
b16_mask, b8_linear, l16_mask, deit_b16_mask, l16_mask,crop=512. The crop defaults to 512 (640
for L, as the released Seg-L-Mask/16). The encoder starts from the AugReg ImageNet-21k -> 1k
checkpoint at 384 the original used (config.init_from).

Data: ADEChallengeData2016 (images/ and annotations/ with training/ and validation/), labels
0 ("other") ignored and the 150 classes shifted down by one. TFDS also has scene_parse150
(--config.input.source=tfds --config.input.train_split=train --config.input.eval_split=test),
but its annotations are the 2017 instance masks (100 categories), not these 150 classes.
"""

from vit_jax.framework import config_args

recipe = config_args.import_beside(__file__, 'segmenter_recipe')


def get_config(arg='s16_mask'):
  args = recipe.parse(arg, 'configs/segmenter_ade20k.py')
  crop = args.crop or (640 if args.variant == 'L/16' else 512)
  config = recipe.get_config(args, crop)

  config.input.source = 'folder'  # data_dir: ADEChallengeData2016/
  config.input.dataset = 'scene_parse150'  # source=tfds only.
  config.input.train_split = 'training'  # 20,210 images.
  config.input.eval_split = 'validation'  # 2,000 images.
  config.input.image_dirs = None  # Default images/<split>.
  config.input.label_dirs = None  # Default annotations/<split>.
  config.input.label_suffix = '.png'
  config.input.reduce_zero_label = True  # 0 "other" -> ignore; classes 1..150 -> 0..149.
  config.input.img_scale = (2048, 512)  # Keep-ratio resize: short side 512.
  config.input.eval_stride = crop  # Train-time eval; segm/eval/miou.py uses crop - 32.
  config.input.batch_size = 8
  config.input.eval_batch_size = 8
  config.input.shuffle_buffer = 20_210

  config.model.num_classes = 150
  config.optim.lr = 1e-3
  config.total_steps = 64 * 2527  # 64 epochs of ceil(20,210 / 8) iterations: "160k".
  if args.train_subset:  # Table 5: the original counts epochs, so fewer images, fewer steps.
    config.total_steps = 64 * -(-args.train_subset // config.input.batch_size)
  config.eval_every_epochs = 4
  return config
