"""Segmenter on Pascal Context (60 classes with background), the paper's recipe.

  python -m segmenter_jax.main --config=configs/segmenter_pascal_context.py:l16_mask \
      --config.input.data_dir=DIR/VOCdevkit/VOC2010 --workdir=DIR

The argument is VARIANT[,crop=N] (configs/segmenter_recipe.py; default l16_mask, the released
Seg-L-Mask/16 at 480). Data: VOC2010 with SegmentationClassContext/ label maps (0 = background,
1..59 the classes, as mmseg's pascal_context converter writes them) and
ImageSets/SegmentationContext/{train,val}.txt; 4,996 train and 5,104 val images. Scored over all
60 classes including background (the "PC-60" protocol).
"""

from vit_jax.framework import config_args

recipe = config_args.import_beside(__file__, 'segmenter_recipe')


def get_config(arg='l16_mask'):
  args = recipe.parse(arg, 'configs/segmenter_pascal_context.py')
  crop = args.crop or 480
  config = recipe.get_config(args, crop)

  config.input.source = 'pascal_context'  # data_dir: VOCdevkit/VOC2010/
  config.input.eval_split = 'val'
  config.input.reduce_zero_label = False  # Background is class 0.
  config.input.img_scale = (4160, 520)  # Keep-ratio resize: short side 520.
  config.input.eval_stride = 320  # Train-time eval; segm/eval/miou.py uses crop - 32.
  config.input.batch_size = 16
  config.input.eval_batch_size = 16
  config.input.shuffle_buffer = 4996

  config.model.num_classes = 60
  config.optim.lr = 1e-3
  config.total_steps = 256 * 313  # 256 epochs of ceil(4,996 / 16) iterations: "80k".
  config.eval_every_epochs = 16
  return config
