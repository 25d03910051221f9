"""The offline main job: a small ViT on scikit-learn's handwritten digits (8x8 pixels).

  python -m vit_jax.main --config=configs/vit_digits.py --workdir=workdirs/vit_digits

1437 training and 360 test images ship with scikit-learn, so this runs anywhere without a
download; it reaches ~99% test accuracy in under 3 minutes on a 2-core CPU.
"""

import ml_collections

from vit_jax.framework import loop_config


def get_config():
  config = loop_config.defaults()
  config.task = 'classification'

  config.input.source = 'digits'
  config.input.eval_split = 'test'
  config.input.image_size = 16  # Upsampled from 8x8, so that a 1-pixel shift is a half-pixel one.
  config.input.channels = 1
  config.input.augment = 'pad_crop'  # Shifts of up to `pad` pixels; a flip would change the class.
  config.input.pad = 1
  config.input.batch_size = 128
  config.input.eval_batch_size = 128  # Does not divide the 360 test images: eval pads and masks.

  config.model.name = 'vit'
  config.model.num_classes = 10
  config.model.patch_size = 4  # A 4x4 grid of patches.
  config.model.hidden_size = 64
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.mlp_dim = 128
  config.model.classifier = 'token'
  config.model.dropout_rate = 0.1

  config.loss = ml_collections.ConfigDict()
  config.loss.name = 'softmax_xent'

  config.optim.name = 'adamw'
  config.optim.lr = 1e-3
  config.optim.weight_decay = 1e-4
  config.optim.wd_mask = r'.*/kernel'
  config.optim.grad_clip_norm = 1.0
  config.optim.schedule = ml_collections.ConfigDict(
      dict(name='warmup_cosine', warmup_steps=100, end_value=0.0))

  config.total_steps = 1500
  config.eval_every = 500
  config.checkpoint_every = 500
  return config
