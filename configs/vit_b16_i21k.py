"""ViT-B/16 pre-training on ImageNet-21k, the recipe behind the original i21k checkpoint.

  python -m vit_jax.main --config=configs/vit_b16_i21k.py --workdir=DIR \
      --config.input.data_dir=TFDS_DIR

Sources: ViT paper Table 3 and the maintainers' answer in vision_transformer issue #2
(Adam, batch 4096, lr 1e-3 with 10k warmup and linear decay to 1e-5, weight decay 0.03, dropout
0.1, 90 epochs, representation layer 768, head bias -10). ImageNet-21k is not a public TFDS
dataset: build it as a TFDS dataset named `imagenet21k` (or override --config.input.dataset), or
use --config.input.source=folder --config.input.data_dir=ROOT with ROOT/train/<class>/*.jpg.
"""

import ml_collections

from vit_jax.framework import loop_config


def get_config():
  config = loop_config.defaults()
  config.task = 'classification'

  config.input.source = 'tfds'
  config.input.dataset = 'imagenet21k'
  config.input.train_split = 'full[51200:]'  # big_vision's split; the first 51,200 are held out.
  config.input.eval_split = 'full[:25600]'
  config.input.image_size = 224
  config.input.eval_resize = 256  # Short side to 256, central 224 crop.
  config.input.augment = 'inception_crop'
  config.input.min_area = 0.05
  config.input.pad = 0
  config.input.channels = 3
  config.input.batch_size = 4096
  config.input.eval_batch_size = 4096
  config.input.shuffle_buffer = 250_000

  config.model.name = 'vit'
  config.model.variant = 'B/16'
  config.model.num_classes = 21843
  config.model.classifier = 'token'
  config.model.representation_size = 768
  config.model.dropout_rate = 0.1
  config.model.attention_dropout_rate = 0.0
  config.model.head_bias_init = -10.0

  config.loss = ml_collections.ConfigDict()
  config.loss.name = 'sigmoid_xent'  # Multi-label ImageNet-21k; goes with the -10 head bias.

  config.optim.name = 'adamw'
  config.optim.lr = 1e-3
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.weight_decay = 0.03  # Decoupled and multiplied by the lr.
  config.optim.wd_mask = r'.*/kernel'
  config.optim.grad_clip_norm = 1.0
  config.optim.accum_steps = 1  # Raise to fit the batch of 4096 in less memory.
  config.optim.schedule = ml_collections.ConfigDict(
      dict(name='warmup_linear', warmup_steps=10_000, end_value=1e-5))

  config.total_epochs = 90
  config.log_every = 50
  config.eval_every = 10_000
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3
  return config
