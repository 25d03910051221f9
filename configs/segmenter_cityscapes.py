"""Segmenter on Cityscapes (19 train ids), the paper's recipe.

  python -m segmenter_jax.main --config=configs/segmenter_cityscapes.py:l16_mask \
      --config.input.data_dir=DIR/cityscapes --workdir=DIR

The argument is VARIANT[,crop=N] (configs/segmenter_recipe.py; default l16_mask, the released
Seg-L-Mask/16 at 768, whose mask transformer has ONE block, for memory). Data:
leftImg8bit/{train,val}/<city>/ and gtFine/ with *_labelTrainIds.png (cityscapesscripts'
createTrainIdLabelImgs), or *_labelIds.png, mapped to train ids when loaded; 2,975 train and 500
val images, all 1024 x 2048.
"""

from vit_jax.framework import config_args

recipe = config_args.import_beside(__file__, 'segmenter_recipe')


def get_config(arg='l16_mask'):
  args = recipe.parse(arg, 'configs/segmenter_cityscapes.py')
  crop = args.crop or 768
  config = recipe.get_config(args, crop)

  config.input.source = 'cityscapes'  # data_dir: the folder with leftImg8bit/ and gtFine/.
  config.input.eval_split = 'val'
  config.input.reduce_zero_label = False
  config.input.img_scale = (2048, 1024)  # The full resolution.
  config.input.eval_stride = 512  # Train-time eval; segm/eval/miou.py uses crop - 32.
  config.input.batch_size = 8
  config.input.eval_batch_size = 8
  config.input.shuffle_buffer = 2975

  # The released Seg-L-Mask/16 has one decoder block (322.25M parameters); otherwise 2.
  config.model.decoder_layers = 1 if args.variant == 'L/16' else 2
  config.model.num_classes = 19
  config.optim.lr = 1e-2  # Cityscapes: 10x the ADE20K and Pascal Context rate.
  config.total_steps = 216 * 372  # 216 epochs of ceil(2,975 / 8) iterations: "80k".
  config.eval_every_epochs = 8
  return config
