"""AugReg (Steiner et al. 2021, "How to train your ViT"): ViT on ImageNet-1k from scratch, as
big_vision's configs/vit_i1k.py (reference/deit.md §5, vit.md §3.2).

  python -m vit_jax.main --config=configs/vit_augreg_i1k.py:B/16 --workdir=workdirs/augreg_b16
  python -m vit_jax.main --config=configs/vit_augreg_i1k.py:S/32,aug=light2 --workdir=W

VARIANT is Ti/16, S/32, S/16, B/32, B/16 or L/16; aug= one of the paper's levels (mixup alpha,
RandAugment (layers, magnitude)): none (0, off), light1 (0, (2, 0)), light2 (0.2, (2, 10)),
medium1 (0.2, (2, 15)), medium2 (0.5, (2, 15)), strong1 (0.5, (2, 20)), strong2 (0.8, (2, 20));
by default big_vision's choice per variant (Ti/16 light1, S/32 medium1, the rest medium2).

Adam with big_vision's weight decay: 1e-4 decoupled and not multiplied by the lr (optim.py
wd_times_lr=False; the AugReg checkpoints' "wd_0.1" = 0.1 x lr), sigmoid cross-entropy with
the head bias at -6.9 (~ -ln 1000), a pre-logits layer, class token. No dropout or stochastic
depth, as the config (the paper's grid adds 0.1 of either: --config.model.dropout_rate=0.1,
--config.model.drop_path_rate=0.1, the checkpoints' do_0.1 / sd_0.1).

Differences: RandAugment is big_vision's ops on the same parameters (big_vision_randaugment.py),
drawn from per-example seeds; mixup draws one lambda per group of mix_group examples (big_vision:
one per step for the whole batch) and pairs each example with the group reversed (big_vision:
rolled by one, lambda folded to >= 1/2; either way every image is once the larger and once the
smaller part of a mix), so the batches do not depend on the process count.
"""

import ml_collections

from vit_jax.framework import config_args, loop_config

# big_vision's MIXUP_DEF (Beta alpha) and RANDAUG_DEF.
AUG_LEVELS = {
    'none': (0.0, ''),
    'light1': (0.0, 'randaug(2,0)'),  # Not nothing: magnitude 0 still posterizes, inverts...
    'light2': (0.2, 'randaug(2,10)'),
    'medium1': (0.2, 'randaug(2,15)'),
    'medium2': (0.5, 'randaug(2,15)'),
    'strong1': (0.5, 'randaug(2,20)'),
    'strong2': (0.8, 'randaug(2,20)'),
}
DEFAULT_AUG = {'Ti/16': 'light1', 'S/32': 'medium1', 'S/16': 'medium2', 'B/32': 'medium2',
               'B/16': 'medium2', 'L/16': 'medium2'}
WIDTHS = {'Ti': 192, 'S': 384, 'B': 768, 'L': 1024}  # rep_size=True: the pre-logits width.


def get_config(arg: str = 'B/16'):
  args = config_args.parse(arg, 'configs/vit_augreg_i1k.py', names={'variant': DEFAULT_AUG},
                           options={'aug': ('default',) + tuple(AUG_LEVELS)})
  aug = DEFAULT_AUG[args.variant] if args.aug == 'default' else args.aug
  mixup_alpha, randaugment = AUG_LEVELS[aug]
  config = loop_config.defaults()
  config.task = 'classification'

  config.input.source = 'tfds'
  config.input.dataset = 'imagenet2012'
  config.input.train_split = 'train[:99%]'
  config.input.eval_split = 'train[99%:]'  # minival, big_vision's model selection.
  config.evals = (('val', 'validation'), ('real', 'imagenet2012_real:validation'),
                  ('v2', 'imagenet_v2:test'))
  config.input.image_size = 224
  config.input.augment = 'inception_crop'  # Bilinear, then the flip.
  config.input.min_area = 0.05
  config.input.randaugment = randaugment
  config.input.normalization = 'vit'  # value_range(-1, 1).
  config.input.eval_resize = 256  # resize_small(256), central_crop(224).
  config.input.mixup_alpha = mixup_alpha  # Mixup only, no CutMix.
  config.input.cutmix_alpha = 0.0
  config.input.mix_group = 128  # Divides a host's share of 4096 on up to 32 hosts.
  config.input.batch_size = 4096
  config.input.eval_batch_size = 4096
  config.input.shuffle_buffer = 250_000  # Per host.
  config.prefetch_batches = 4  # big_vision's prefetch_to_device.

  config.model = ml_collections.ConfigDict()
  config.model.name = 'vit'
  config.model.variant = args.variant
  config.model.num_classes = 1000
  config.model.classifier = 'token'  # pool_type='tok'.
  config.model.representation_size = WIDTHS[args.variant.split('/')[0]]
  config.model.head_bias_init = -6.9
  config.model.dropout_rate = 0.0
  config.model.drop_path_rate = 0.0
  config.model.remat = 'none'
  config.model.scan = False

  config.loss = ml_collections.ConfigDict()
  config.loss.name = 'sigmoid_xent'
  config.loss.label_smoothing = 0.0

  config.optim.name = 'adamw'  # scale_by_adam + big_vision's decay, below.
  config.optim.lr = 1e-3
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.mu_dtype = 'bfloat16'
  config.optim.weight_decay = 1e-4
  config.optim.wd_times_lr = False  # Absolute: update = -s_t (lr adam + 1e-4 param).
  config.optim.wd_mask = r'.*/kernel'
  config.optim.grad_clip_norm = 1.0
  config.optim.schedule = ml_collections.ConfigDict(
      dict(name='warmup_cosine', warmup_steps=10_000, end_value=0.0))

  config.total_epochs = 300
  config.log_every = 50
  config.eval_every = 2500
  config.checkpoint_every = 1000
  return config
