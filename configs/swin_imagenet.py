"""Swin Transformer on ImageNet: the official repo's recipes (microsoft/Swin-Transformer configs
and main.py; reference/swin.md §4).

  python -m vit_jax.main --config=configs/swin_imagenet.py:T --workdir=DIR \
      --config.input.data_dir=TFDS_DIR
  python -m vit_jax.main --config=configs/swin_imagenet.py:B,recipe=in22k --workdir=DIR
  python -m vit_jax.main --config=configs/swin_imagenet.py:B,recipe=ft22k,size=384 \
      --config.init_from=SWIN_B_22K.pth --workdir=DIR

The argument is VARIANT[,recipe=in1k|in22k|ft22k|ft1k][,size=224|384]:
  in1k   ImageNet-1k from scratch: 300 epochs, 20 warmup, batch 1024 (paper Sec. 4.1)
  in22k  ImageNet-22k pre-training: 90 epochs, 5 warmup, batch 4096, 21841 classes
  ft22k  22k -> 1k fine-tuning from --config.init_from: 30 epochs, 5 warmup, batch 1024
  ft1k   1k 224 -> 384 fine-tuning from --config.init_from (the repo's B-384): as ft22k
size 384 takes window 12 (the 384 models); the relative position tables of a window-7
checkpoint are resized bicubically on loading, as the original does.

The repo's learning rates are per 512 images (main.py scales them by the total batch / 512):
5e-4 -> 1e-3 at 1024 (in1k), 1.25e-4 -> 1e-3 at 4096 (in22k), 2e-5 -> 4e-5 at 1024 (fine-tuning).
This loop does not rescale: change --config.optim.lr with --config.input.batch_size.

Every recipe trains with the repo's timm augmentations (DeiT's, vit_jax/classification/input.py):
bicubic RandomResizedCrop (0.08-1) and flip, RandAugment rand-m9-mstd0.5-inc1, random erasing
0.25 (pixel mode), Mixup 0.8 / CutMix 1.0 (switch 0.5) on groups of 128 rows (the repo's
per-GPU batch), label smoothing 0.1, ImageNet mean / std; no repeated augmentation. The warmup
starts at 0, not the repo's warmup lr (1e-6, or 4e-8 when fine-tuning).
"""

import ml_collections

from vit_jax.framework import config_args, loop_config

VARIANTS = ('T', 'S', 'B', 'L')
RECIPES = ('in1k', 'in22k', 'ft22k', 'ft1k')

# recipe -> (epochs, warmup epochs, batch, lr per 512 images, min lr per 512, weight decay)
SCHEDULES = {
    'in1k': (300, 20, 1024, 5e-4, 5e-6, 0.05),
    'in22k': (90, 5, 4096, 1.25e-4, 1.25e-6, 0.05),
    'ft22k': (30, 5, 1024, 2e-5, 2e-7, 1e-8),
    'ft1k': (30, 5, 1024, 2e-5, 2e-7, 1e-8),
}
# Stochastic depth of the last block, per recipe and size (configs/swin/*.yaml).
DROP_PATH = {
    'in1k': {'T': 0.2, 'S': 0.3, 'B': 0.5},  # The repo trains no Swin-L on 1k alone.
    'in22k': {'T': 0.1, 'S': 0.2, 'B': 0.2, 'L': 0.2},
    'ft22k': {'T': 0.1, 'S': 0.2, 'B': 0.2, 'L': 0.2},
    'ft1k': {'T': 0.2, 'S': 0.3, 'B': 0.5},  # As the 1k model it starts from.
}


def get_config(arg: str = 'T'):
  args = config_args.parse(arg, 'configs/swin_imagenet.py', names={'variant': VARIANTS},
                           options={'recipe': RECIPES, 'size': 224})
  if args.size not in (224, 384):
    raise ValueError(f'configs/swin_imagenet.py:{arg}: size is 224 (window 7) or 384 (window 12)')
  if args.variant not in DROP_PATH[args.recipe]:
    raise ValueError(f'configs/swin_imagenet.py:{arg}: the official recipes train Swin-L on '
                     'ImageNet-22k only: use recipe=in22k or ft22k')
  epochs, warmup, batch, lr_per_512, min_lr_per_512, weight_decay = SCHEDULES[args.recipe]
  config = loop_config.defaults()
  config.task = 'classification'

  config.input = ml_collections.ConfigDict()
  config.input.source = 'tfds'
  config.input.dataset = 'imagenet21k' if args.recipe == 'in22k' else 'imagenet2012'
  config.input.data_dir = ml_collections.config_dict.placeholder(str)
  # ImageNet-22k is not a public TFDS dataset (see configs/vit_b16_i21k.py); its held-out
  # images as there.
  config.input.train_split = 'full[51200:]' if args.recipe == 'in22k' else 'train'
  config.input.eval_split = 'full[:25600]' if args.recipe == 'in22k' else 'validation'
  config.input.image_size = args.size
  # The repo's eval: short side to 256/224 * size and a central crop at 224; at 384 a squash.
  config.input.eval_resize = 256 if args.size == 224 else None
  config.input.augment = 'random_resized_crop'  # timm's (0.08-1, ratio 3/4-4/3), then flip.
  config.input.min_area = 0.08
  config.input.interpolation = 'bicubic'
  config.input.normalization = 'deit'  # ImageNet mean and std.
  config.input.randaugment = 'rand-m9-mstd0.5-inc1'
  config.input.random_erasing = 0.25
  config.input.mixup_alpha = 0.8
  config.input.cutmix_alpha = 1.0
  config.input.mix_prob = 1.0
  config.input.mix_switch_prob = 0.5
  config.input.mix_group = 128
  config.input.batch_size = batch
  config.input.eval_batch_size = 1024

  config.model = ml_collections.ConfigDict()
  config.model.name = 'swin'
  config.model.variant = f'{args.variant}-{args.size}'
  config.model.num_classes = 21841 if args.recipe == 'in22k' else 1000
  config.model.drop_path_rate = DROP_PATH[args.recipe][args.variant]
  config.model.dtype = 'float32'  # The repo trains in fp16 AMP; 'bfloat16' here.
  config.model.remat = 'none'  # The repo's --use-checkpoint: 'full'.
  config.model.scan = False  # Each stage's blocks as (plain, shifted) pairs under nn.scan.

  config.loss = ml_collections.ConfigDict()
  config.loss.name = 'softmax_xent'
  config.loss.label_smoothing = 0.1  # Of the mixed targets.

  config.optim.name = 'adamw'
  config.optim.lr = lr_per_512 * batch / 512
  config.optim.b1, config.optim.b2, config.optim.eps = 0.9, 0.999, 1e-8
  config.optim.weight_decay = weight_decay
  # Decay on weight matrices only: no 1-D parameter and no relative position bias table.
  config.optim.wd_mask = r'.*/kernel'
  config.optim.grad_clip_norm = 5.0
  config.optim.schedule = ml_collections.ConfigDict(dict(
      name='warmup_cosine', warmup_epochs=warmup, end_value=min_lr_per_512 * batch / 512))

  config.total_epochs = epochs
  config.eval_every_epochs = 1
  config.checkpoint_every_epochs = 1
  config.log_every = 100
  return config
