"""Fine-tuning a pre-trained ViT, the recipe behind the original README tables.

  python -m vit_jax.main --config=configs/vit_finetune.py:b16,cifar10 --workdir=DIR
  python -m vit_jax.main --config=configs/vit_finetune.py:r26_s32,oxford_iiit_pet,upstream=augreg
  python -m vit_jax.main --config=configs/vit_finetune.py:h14,imagenet2012,real=true --workdir=DIR

The argument is MODEL,DATASET[,upstream=i21k|augreg][,real=true]: the upstream checkpoint is the
original ImageNet-21k one (gs://vit_models/imagenet21k) or the recommended AugReg i21k one
(gs://vit_models/augreg); a model without a published file of that kind starts from
--config.init_from, which also takes a local copy when there is no GCS access. real=true
(imagenet2012 only) adds the eval 'real': ImageNet ReaL accuracy on TFDS imagenet2012_real
(final metric real_real_accuracy), as the ViT paper's ReaL column.

Recipe (vision_transformer configs/common.py; big_vision transfer.py for pets/flowers): SGD with
momentum 0.9 (bfloat16 accumulator), no weight decay, global-norm clip 1, batch 512, linear
warmup then cosine to 0, 384 px; inception crop + flip for training, a plain resize for eval;
the head starts at zero and the position embeddings are zoomed to the 384 px grid.
"""

import ml_collections

from vit_jax.framework import config_args, loop_config

# name -> (variant, original i21k file, AugReg i21k file)
MODELS = {
    'ti16': ('Ti/16', None, 'Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0'),
    's16': ('S/16', None, 'S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0'),
    's32': ('S/32', None, 'S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0'),
    'b8': ('B/8', None, 'B_8-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0'),
    'b16': ('B/16', 'ViT-B_16', 'B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0'),
    'b32': ('B/32', 'ViT-B_32', 'B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0'),
    'l16': ('L/16', 'ViT-L_16', 'L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1'),
    'l32': ('L/32', 'ViT-L_32', None),
    'h14': ('H/14', 'ViT-H_14', None),
    'r_ti16': ('R+Ti/16', None, 'R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0'),
    'r26_s32': ('R26+S/32', None, 'R26_S_32-i21k-300ep-lr_0.001-aug_medium2-wd_0.03-do_0.0-sd_0.0'),
    'r50_b16': ('R50+B/16', 'R50+ViT-B_16', None),
    'r50_l32': ('R50+L/32', None, 'R50_L_32-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0'),
}

# name -> (classes, train split, held-out minival, eval split, steps, warmup, lr)
DATASETS = {
    'cifar10': (10, 'train[:98%]', 'train[98%:]', 'test', 10_000, 500, 0.01),
    'cifar100': (100, 'train[:98%]', 'train[98%:]', 'test', 10_000, 500, 0.03),
    'imagenet2012': (1000, 'train[:99%]', 'train[99%:]', 'validation', 20_000, 500, 0.03),
    'oxford_iiit_pet': (37, 'train[:90%]', 'train[90%:]', 'test', 500, 100, 0.003),
    'oxford_flowers102': (102, 'train', 'validation', 'test', 500, 100, 0.003),
}


def get_config(arg='b16,cifar10'):
  args = config_args.parse(arg, 'configs/vit_finetune.py',
                           names={'model': MODELS, 'dataset': DATASETS},
                           options={'upstream': ('i21k', 'augreg'), 'real': False})
  if args.real and args.dataset != 'imagenet2012':
    raise ValueError(f'configs/vit_finetune.py:{arg}: real=true needs DATASET imagenet2012 '
                     '(ReaL labels exist for the ImageNet validation images only)')
  variant, original_file, augreg_file = MODELS[args.model]
  classes, train_split, minival_split, eval_split, steps, warmup, lr = DATASETS[args.dataset]

  config = loop_config.defaults()
  config.task = 'classification'
  folder, upstream_file = {'i21k': ('imagenet21k', original_file),
                           'augreg': ('augreg', augreg_file)}[args.upstream]
  if upstream_file:
    config.init_from = f'gs://vit_models/{folder}/{upstream_file}.npz'
  else:  # No published upstream file of this kind for the model: pass your own.
    config.init_from = ml_collections.config_dict.placeholder(str)
  config.posemb_resize = 'zoom'  # The original's scipy.ndimage.zoom(order=1); or 'bilinear'.

  config.input.source = 'tfds'
  config.input.dataset = args.dataset
  config.input.train_split = train_split
  config.input.eval_split = eval_split
  config.input.image_size = 384
  config.input.eval_resize = 0  # 0: resize straight to 384x384, as the original evaluates.
  config.input.augment = 'inception_crop'
  config.input.min_area = 0.05
  config.input.pad = 0
  config.input.channels = 3
  config.input.batch_size = 512
  config.input.eval_batch_size = 512
  config.input.shuffle_buffer = 50_000

  config.model.name = 'vit'
  config.model.variant = variant
  config.model.num_classes = classes
  config.model.classifier = 'token'
  config.model.representation_size = None  # pre_logits of i21k checkpoints is dropped.
  config.model.dropout_rate = 0.0

  config.loss = ml_collections.ConfigDict()
  config.loss.name = 'softmax_xent'

  config.optim.name = 'momentum'
  config.optim.lr = lr
  config.optim.momentum = 0.9
  config.optim.accumulator_dtype = 'bfloat16'
  config.optim.weight_decay = 0.0
  config.optim.grad_clip_norm = 1.0
  config.optim.accum_steps = 1  # The original used 8 to fit 8 V100s; raise it if memory is short.
  config.optim.schedule = ml_collections.ConfigDict(
      dict(name='warmup_cosine', warmup_steps=warmup, end_value=0.0))

  config.total_steps = steps
  config.log_every = 10
  config.eval_every = 1000
  config.evals = (('minival', minival_split),)  # Held-out training images, beside the test.
  if args.real:  # The validation images again, scored against their ReaL label sets.
    config.evals += (('real', 'imagenet2012_real:validation'),)
  config.checkpoint_every = 1000
  return config
