"""The offline Segmenter job: a small Segmenter on generated shapes (segmenter_jax/shapes.py).

  python -m segmenter_jax.main --config=configs/segmenter_shapes.py --workdir=workdirs/seg_shapes

Rectangles, ellipses and triangles, each class in its own hue (class_colours=False: random
colours, shape alone tells the class), on a noisy background, exact label maps: nothing to
download. The recipe is Segmenter's (Nesterov SGD, poly decay to 1e-5, random
resize + crop + flip + photometric distortion, sliding-window eval) at a size a 2-core CPU
trains in minutes; the eval split is 256 images never seen in training.
"""

import ml_collections

from vit_jax.framework import loop_config


def get_config():
  config = loop_config.defaults()
  config.task = 'segmentation'

  config.input.source = 'shapes'
  config.input.shapes = ml_collections.ConfigDict(dict(
      seed=0, num_train=4096, num_eval=256, image_size=32, min_objects=1, max_objects=3,
      min_object_size=12, max_object_size=20, noise=8, class_colours=True))
  config.input.eval_split = 'validation'
  config.input.class_names = ()  # The source's: background, rectangle, ellipse, triangle.
  config.input.normalization = 'vit'
  config.input.img_scale = (32, 32)  # Images are 32x32: the resize ratio is the only zoom.
  config.input.ratio_range = (0.75, 1.5)  # Paper: (0.5, 2.0); milder for 32-pixel images.
  config.input.crop_size = 32
  config.input.cat_max_ratio = 0.75
  config.input.photometric = True
  config.input.eval_stride = 32
  config.input.eval_scales = (1.0,)
  config.input.eval_flip = False
  config.input.batch_size = 32
  config.input.eval_batch_size = 64
  config.input.shuffle_buffer = 4096

  config.model.name = 'segmenter'
  config.model.variant = None  # Sizes below instead of Ti/S/B/L.
  config.model.patch_size = 4
  config.model.hidden_size = 64
  config.model.num_layers = 4
  config.model.num_heads = 2
  config.model.mlp_dim = 256
  config.model.decoder = 'mask_transformer'
  config.model.decoder_layers = 1
  config.model.num_classes = 4
  config.model.image_size = None  # The crop size.
  config.model.dropout_rate = 0.0
  config.model.drop_path_rate = 0.0  # Paper: 0.1; too little data to need it here.
  config.model.decoder_dropout_rate = 0.0

  config.optim.name = 'nesterov'
  config.optim.momentum = 0.9
  config.optim.lr = 0.05  # Paper: 1e-3 from ImageNet weights; here from scratch.
  config.optim.weight_decay = 0.0
  config.optim.grad_clip_norm = None
  config.optim.schedule = ml_collections.ConfigDict(
      dict(name='warmup_poly', warmup_steps=0, power=0.9, end_value=1e-5))

  config.total_steps = 1500
  config.eval_every = 500
  config.checkpoint_every = 500
  config.keep_checkpoints = 1
  return config
