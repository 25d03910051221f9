"""DeiT (Touvron et al. 2021): ViT trained on ImageNet-1k alone (reference/deit.md §3).

  python -m vit_jax.main --config=configs/deit.py:B --workdir=workdirs/deit_b
  python -m vit_jax.main --config=configs/deit.py:B,distilled=true \
      --config.teacher.init_from=TEACHER --workdir=workdirs/deit_b_distilled
  python -m vit_jax.main --config=configs/deit.py:B,finetune_384=true \
      --config.init_from=deit_base_patch16_224-b5f2ef4d.pth --workdir=workdirs/deit_b_384

VARIANT is Ti, S or B. distilled=true adds the distillation token and trains it with hard
distillation from `teacher` (the paper's is RegNetY-16GF, not in this zoo: any model of the
classification zoo with its weights serves, e.g. a ViT or DeiT .npz/.pth). distillation=
none|soft|hard overrides the kind; soft or hard without the token is the paper's ablation (the
class head learns from the teacher; soft at the paper's tau 3, lambda 0.1). finetune_384=true is
the 384-pixel fine-tune (30 epochs, lr 5e-6 at batch 512, wd 1e-8) from a 224 checkpoint.

The input is DeiT's (reference/deit.md §3.1, §4): bicubic RandomResizedCrop, flip, RandAugment
rand-m9-mstd0.5-inc1, ImageNet mean/std, random erasing 0.25, Mixup 0.8 / CutMix 1.0 (switch
0.5) on groups of 64 with the smoothing 0.1 in the targets, 3 repeats; eval crop ratio 0.875.
RandAugment's warps resample bicubically as timm's (config.input.interpolation). Difference: an
epoch is the whole split (DeiT floors it to a multiple of 256).
"""

import ml_collections

from vit_jax.framework import config_args, loop_config

VARIANTS = {'Ti': 'Ti/16', 'S': 'S/16', 'B': 'B/16'}


def get_config(arg: str = 'B'):
  args = config_args.parse(arg, 'configs/deit.py', names={'variant': VARIANTS},
                           options={'distilled': False, 'finetune_384': False,
                                    'distillation': ('auto', 'none', 'soft', 'hard')})
  # auto: hard with the distillation token, none without (the paper's DeiT and DeiT-distilled).
  distillation = args.distillation
  if distillation == 'auto':
    distillation = 'hard' if args.distilled else 'none'
  config = loop_config.defaults()
  config.task = 'classification'

  size = 384 if args.finetune_384 else 224
  config.input.source = 'tfds'
  config.input.dataset = 'imagenet2012'
  config.input.train_split = 'train'
  config.input.eval_split = 'validation'
  config.input.image_size = size
  config.input.augment = 'random_resized_crop'  # Then the flip.
  config.input.min_area = 0.08  # RandomResizedCrop scale (0.08, 1).
  config.input.interpolation = 'bicubic'
  config.input.randaugment = 'rand-m9-mstd0.5-inc1'
  config.input.normalization = 'deit'  # ImageNet mean and std.
  config.input.random_erasing = 0.25  # Pixel mode, one box.
  config.input.mixup_alpha = 0.8
  config.input.cutmix_alpha = 1.0
  config.input.mix_prob = 1.0
  config.input.mix_switch_prob = 0.5
  config.input.mix_group = 32 if args.finetune_384 else 64  # DeiT-B's per-GPU batch.
  config.input.repeats = 3  # RASampler.
  config.input.eval_crop_ratio = 0.875  # Short side to 256 / 438, then the centre crop.
  config.input.batch_size = 512 if args.finetune_384 else 1024
  config.input.eval_batch_size = 1024
  config.input.shuffle_buffer = 250_000

  config.model = ml_collections.ConfigDict()
  config.model.name = 'deit'
  config.model.variant = VARIANTS[args.variant]
  config.model.num_classes = 1000
  config.model.distilled = args.distilled
  config.model.drop_path_rate = 0.1  # Same for Ti, S and B.
  config.model.remat = 'none'
  config.model.scan = False

  config.loss = ml_collections.ConfigDict()
  config.loss.name = 'softmax_xent'
  config.loss.label_smoothing = 0.1

  if distillation != 'none':
    config.distillation = distillation
    # Hard: DeiT's code defaults; soft: the paper's "usual distillation" (tau 3, lambda 0.1).
    config.distillation_alpha = 0.1 if distillation == 'soft' else 0.5
    config.distillation_tau = 3.0 if distillation == 'soft' else 1.0
    config.teacher = ml_collections.ConfigDict()
    config.teacher.model = ml_collections.ConfigDict(
        dict(name='deit', variant='B/16', num_classes=1000))  # Replace with your teacher's.
    config.teacher.init_from = ml_collections.config_dict.placeholder(str)

  config.optim.name = 'adamw'
  config.optim.lr = 5e-4 * config.input.batch_size / 512  # 1e-3 at 1024.
  config.optim.weight_decay = 0.05  # Not on biases, norms, tokens or position embeddings.
  config.optim.wd_mask = r'.*/kernel'
  config.optim.schedule = ml_collections.ConfigDict(
      dict(name='warmup_cosine', warmup_epochs=5, end_value=1e-5))  # Per step, not per epoch.
  config.total_epochs = 300
  config.eval_every_epochs = 10
  config.checkpoint_every_epochs = 1

  if args.finetune_384:
    config.init_from = ml_collections.config_dict.placeholder(str)  # A 224 DeiT .pth or .npz.
    config.posemb_resize = 'bilinear'  # DeiT: torch bicubic (Keys -0.75); closest we have.
    config.optim.lr = 5e-6 * config.input.batch_size / 512
    config.optim.weight_decay = 1e-8
    config.optim.schedule = ml_collections.ConfigDict(
        dict(name='warmup_cosine', warmup_epochs=5, end_value=5e-6))
    config.total_epochs = 30
  return config
