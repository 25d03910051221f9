"""Every key the train loop reads, with its one default: a recipe config starts from `defaults()`
and sets only what its paper's table says (and what it deliberately changes); `--config.KEY=VALUE`
reaches every key here whether or not the recipe mentions it.

Configs are data loaded by path (config_flags): this module needs nothing but ml_collections.
"""

import ml_collections

_placeholder = ml_collections.config_dict.placeholder


def defaults() -> ml_collections.ConfigDict:
  """The loop's keys; `task`, the model's name and fields, the input's source, splits and batch
  sizes, and the optimizer's `name`, `lr` and `schedule` are the recipe's to set."""
  config = ml_collections.ConfigDict()
  config.task = _placeholder(str)  # A name in vit_jax.framework.registry.TASKS.
  config.seed = 0

  # The input keys every task reads (the task's own keys are the recipe's).
  config.input = ml_collections.ConfigDict()
  config.input.source = _placeholder(str)  # tfds, folder, or the task's offline source.
  config.input.data_dir = _placeholder(str)  # TFDS data_dir, or the folder / COCO root.
  config.input.on_bad_image = 'skip'  # Folders: 'stop' names the files that do not decode.
  config.input.train_split = 'train'
  config.input.eval_split = _placeholder(str)
  config.input.batch_size = _placeholder(int)  # Global, over all hosts and devices.
  config.input.eval_batch_size = _placeholder(int)
  config.input.repeats = 1  # Repeated augmentation: each example this many times an epoch.

  # The model keys every model takes (the rest are its builder's fields, the recipe's to set).
  config.model = ml_collections.ConfigDict()
  config.model.name = _placeholder(str)  # A key of the task's MODELS.
  config.model.dtype = 'float32'  # 'bfloat16': mixed precision (params stay float32).
  # What a block keeps for the backward pass ('none', 'full' or a jax.checkpoint_policies name,
  # vit_jax.layers.remat); scan: the repeated blocks under nn.scan (compiled once, any depth).
  config.model.remat = 'none'
  config.model.scan = False
  # The attention implementation (vit_jax.layers.attention_kernels): 'auto' (the backend's best:
  # cuDNN on GPU for bfloat16, Pallas flash on TPU, the reference on CPU), 'xla' (the
  # reference), 'pallas_flash' or 'cudnn'.
  config.model.attention = 'auto'
  # The dropout on the attention weights alone; None: the model's original (DETR's, Deformable
  # DETR's decoder self-attention and Segmenter's: their dropout_rate, decoder_dropout_rate in
  # Segmenter's decoder; ViT and DeiT: 0; Swin has none). Training with it runs the reference
  # attention (no kernel draws dropout): 0 keeps the FFN and residual dropout and the kernel.
  config.model.attention_dropout_rate = _placeholder(float)

  # Durations: each in steps or in epochs (vit_jax.framework.durations), one of the pair.
  config.total_steps = _placeholder(int)
  config.total_epochs = _placeholder(float)
  config.eval_every = _placeholder(int)
  config.eval_every_epochs = _placeholder(float)
  config.checkpoint_every = _placeholder(int)
  config.checkpoint_every_epochs = _placeholder(float)
  config.evals = ()  # More eval splits beside input.eval_split: (('minival', 'train[98%:]'),).

  config.log_every = 100
  config.keep_checkpoints = 2
  config.init_from = _placeholder(str)  # Pretrained weights a new run starts from.
  config.prefetch_batches = 2  # Batches on the devices ahead of the step (0 or 1: none).
  config.draw_examples = 4  # Eval examples drawn to TensorBoard at each eval (0: none).
  config.profile = False  # A profile of a few steps after the first, for TensorBoard.

  # Devices: mesh axes (-1: the rest), and logical axis -> mesh axis rules (sharding.py).
  config.mesh = (('data', -1), ('model', 1))
  config.sharding_rules = (('batch', 'data'),)

  config.optim = ml_collections.ConfigDict()
  config.optim.name = _placeholder(str)  # sgd, momentum, nesterov, adam, adamw (optim.py).
  config.optim.lr = _placeholder(float)
  config.optim.schedule = ml_collections.ConfigDict(dict(name='constant'))
  config.optim.weight_decay = 0.0
  config.optim.wd_mask = r'.*/kernel'  # Regex of the parameters that decay.
  config.optim.wd_times_lr = True  # adamw's decay x lr_t; False: big_vision's (optim.py).
  config.optim.grad_clip_norm = _placeholder(float)  # None: no clipping.
  config.optim.lr_mults = ()  # ((regex, multiplier), ...); 0 freezes.
  config.optim.accum_steps = 1  # Micro-batches per step, gradients summed before one update.
  config.optim.b1 = 0.9  # Adam's.
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  config.optim.momentum = 0.9  # momentum's and nesterov's.
  config.optim.mu_dtype = _placeholder(str)  # Adam's first moment; None: the params'.
  config.optim.accumulator_dtype = _placeholder(str)  # Momentum's; None: the params'.
  return config
