"""Throughput of each task's model here and in a PyTorch peer, measured in the same run.

  python scripts/benchmark.py --task=vit --model=B/16 --batch=8 [--repeats=5]
  python scripts/benchmark.py --task=vit --model=swin_t --batch=8
  python scripts/benchmark.py --task=detr --size=800x1067 --batch=1
  python scripts/benchmark.py --task=deformable_detr --size=512x683 --batch=1
  python scripts/benchmark.py --task=segmenter --model=B/16 --size=512 --batch=1

Peers, on the same weights (their outputs are compared and the largest difference printed; for
the train steps, the relative loss difference in the first step and after one update):
  vit        timm's ViT (erf GELU, so ours runs with erf GELU too), or timm's Swin (--model
             swin_t, swin_s, swin_b; stochastic depth off on both sides); inference and train
             step (forward, backward, Adam update).
  detr       HF transformers' DETR (timm ResNet-50 backbone, frozen batch norm); inference, and
             a train step: our DETR task's loss (Hungarian matching by scipy in a host
             callback, auxiliary losses of every decoder layer) against HF's loss with `labels`
             (its own matcher), the same loss and matching weights, random boxes as targets,
             dropout 0; the recipe's AdamW (lr 1e-4, backbone 1e-5, weight decay 1e-4,
             gradients clipped to norm 0.1; stem and layer1 frozen, without gradients) on both.
  deformable_detr
             HF transformers' DeformableDetrForObjectDetection (Deformable DETR-R50, 4 levels,
             300 queries) on its pure-PyTorch attention (grid_sample: HF's path on CPU, where
             no custom kernel runs); inference, and a train step as detr's: our task's loss
             (focal class term, focal matching cost, host matching) against HF's, the
             original's matching weights (2, 5, 2) and loss weights (1, 5, 2: HF fixes the
             class term's at 1, the recipe's is 2), dropout 0; the recipe's AdamW (lr 2e-4;
             backbone, sampling offsets and reference points 2e-5; clip 0.1) on both.
  segmenter  timm's ViT as the encoder plus TorchMaskTransformer below, a torch copy of our
             decoder (the original Segmenter code cannot ship), its weights converted into ours
             by the official checkpoint's converter. Inference up to the patch-level mask
             logits (the upsampling is left out of both); a train step: pixel cross-entropy on
             the logits upsampled to the image, the recipe's Nesterov SGD (lr 1e-3, momentum
             0.9), dropout and drop path 0.

The process runs with the train loop's host-memory setting (`vit_jax.framework.host_memory`: freed memory
is reused, not mapped afresh each step), which both sides get alike.

Every timed function runs `--warmups` rounds untimed (JAX compiles in the first; a JAX train
step's host heap grows for two more: ViT-B/16's at batch 8 faulted in 430k then 165k new pages
in its second and third calls, none after, and such calls took up to 7.9 s against 4.8; torch
faulted none after its first), then all of them in turn, `--repeats` rounds (A, B, A, B, ...),
so that a shared machine's load falls on both alike; a plain 1024x1024x1024 float32 matmul in
XLA and in torch takes part in every round. JAX's weights and inputs are on the device before
the first call, as torch's are in place. Prints images/s (median over rounds, min-max beside
it), the ratio JAX / peer, and the matmul efficiency: the achieved FLOP/s as a fraction of the
same framework's matmul rate in this run, both from their best rounds (from the medians in
parentheses). Best rather than median: on a shared machine a call is only ever slowed, and
torch's short matmul call most: eight 1024^3 matmuls ran at 81-196 GFLOP/s from one call to the
next in one process; over seven runs of this script torch's median of 5 rounds was 135-184
GFLOP/s (DETR-R50's inference column 86% against JAX's 80% in a run where JAX was 14% faster),
its best round 178-184 in the three that printed it. FLOPs are XLA's cost analysis of our
model: 2 per multiply-add, the train step's counted on the whole step.
"""

import argparse
import functools
import os
import re
import statistics
import tempfile
import time
from typing import Callable, Optional

import torch  # torch and its triton before TensorFlow (vit_jax.framework.weights): see tests/conftest.py.
import torch._dynamo  # noqa: F401

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vit_jax.classification import swin_weights, vit_weights
from vit_jax.framework import host_memory, registry, weights
from vit_jax.framework.errors import UserError

TIMM_SIZES = {'Ti': 'tiny', 'S': 'small', 'B': 'base', 'L': 'large', 'H': 'huge'}
MATMUL_SIZE, MATMULS_PER_CALL = 1024, 8  # ~0.1 s per timed call on a quiet 2-core CPU.


class Contender:
  """One framework's side of a row: a function that runs (and blocks until done) and the
  FLOPs one call does."""

  def __init__(self, run: Callable[[], object], flops: float):
    self.run, self.flops = run, flops


def _jax_flops(fn, *args) -> float:
  return float(jax.jit(fn).lower(*args).cost_analysis()['flops'])


def _images(batch: int, size: tuple[int, int]) -> np.ndarray:
  return np.random.default_rng(0).uniform(-1, 1, (batch,) + size + (3,)).astype(np.float32)


def _nchw(images: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def _own_copy(state: list) -> list:
  """The train state in buffers of its own, which a step can donate (as the train loop's do:
  its outputs reuse them) without deleting weights the inference contender holds. Without the
  donation each step allocated a new state, and between the peer's steps in the glibc heap both
  share (`host_memory`) the JAX step grew the heap: ViT-B/16 by 123-426 MB, faulting in 30k-110k
  pages, in 3 of 5 rounds (5.1-5.7 against 4.9-5.0 s); with it, in 1 or 2 of 5 rounds (three
  runs)."""
  return [jax.tree.map(jnp.array, part) for part in state]


def _jax_train_step(apply: Callable, params, images, labels) -> Contender:
  """Adam on softmax cross-entropy, params and optimizer state carried between calls."""
  tx = optax.adam(1e-4)

  def step(p, s, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()
    updates, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s
  state = _own_copy([params, tx.init(params)])
  flops = _jax_flops(step, *state, images, labels)
  compiled = jax.jit(step, donate_argnums=(0, 1))  # As the train loop: the state donated.

  def run():
    state[:] = compiled(*state, images, labels)
    jax.block_until_ready(state)
  return Contender(run, flops)


def _torch_train_step(model: torch.nn.Module, images, labels, flops: float) -> Contender:
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

  def run():
    model.train()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    optimizer.zero_grad()  # Freed before the next contender runs (`_torch_optimized`).
  return Contender(run, flops)


def _torch_inference(model: torch.nn.Module, *inputs, flops: float) -> Contender:
  def run():
    model.eval()
    with torch.no_grad():
      return model(*inputs)
  return Contender(run, flops)


def _jax_optimized(loss: Callable, tx: optax.GradientTransformation, params, *batch
                   ) -> Contender:
  """`tx` on the gradient of `loss(params, *batch)`, params and optimizer state carried between
  calls; each call returns the loss it took the gradient of."""
  def step(p, s, *batch):
    value, grads = jax.value_and_grad(loss)(p, *batch)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, value
  batch = [jnp.asarray(x) for x in batch]
  state = _own_copy([params, tx.init(params)])
  flops = _jax_flops(step, *state, *batch)
  compiled = jax.jit(step, donate_argnums=(0, 1))  # As the train loop: the state donated.

  def run():
    state[0], state[1], value = compiled(*state, *batch)
    return float(value)  # Blocks until the step is done.
  return Contender(run, flops)


def _torch_optimized(model: torch.nn.Module, loss: Callable[[], torch.Tensor],
                     optimizer: torch.optim.Optimizer, flops: float,
                     clip_norm: Optional[float] = None) -> Contender:
  """The torch side of `_jax_optimized`: forward + loss, backward, optional clipping, step."""
  params = [p for group in optimizer.param_groups for p in group['params']]

  def run():
    model.train()
    value = loss()
    value.backward()
    if clip_norm:
      torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    # The gradients freed (set to None) now rather than at the next call's start, which is the
    # same work for torch: held between calls, they sat in the one glibc heap the JAX contender
    # shares (`host_memory`), and the JAX step grew the heap around them.
    optimizer.zero_grad()
    return value.item()
  return Contender(run, flops)


def _loss_differences(jax_train: Contender, peer_train: Contender) -> tuple[float, float]:
  """Relative differences of the two sides' losses in their first two steps, from the same
  weights: the first checks the loss (and the matching), the second the gradients and the
  update as well. The second is looser: a first Adam step moves every weight by about the
  learning rate, even where the gradient is float noise and its sign differs between the two."""
  first, second = ((jax_train.run(), peer_train.run()) for _ in range(2))
  return tuple(abs(a - b) / abs(b) for a, b in (first, second))


# -------------------------------------------------------------------------------- tasks


def our_model(task: str, name: str, fields: dict):
  """Our model as a config names it (config.task, config.model.name; vit_jax.framework.registry)."""
  return registry.task_class(task).MODELS[name](dict(fields, name=name))


def vit_rows(args) -> tuple[str, dict]:
  import timm
  if args.model in SWIN_MODELS:
    return swin_rows(args)
  size, _, patch = args.model.partition('/')
  if size not in TIMM_SIZES or '+' in args.model:
    raise UserError(f'--model {args.model!r}: the ViT benchmark takes a plain SIZE/PATCH '
                    f'with SIZE in {sorted(TIMM_SIZES)} (timm has no same-named hybrids)')
  image_size = args.size or (224, 224)
  # timm's numerics: erf GELU; its init (random head, so that the outputs compare something).
  model = our_model('classification', 'vit', dict(
      variant=args.model, num_classes=1000, gelu_approximate=False, weight_init='timm'))
  images = _images(args.batch, image_size)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), images[:1]))['params']
  peer = timm.create_model(f'vit_{TIMM_SIZES[size]}_patch{patch}_224',
                           pretrained=False, img_size=image_size)
  with tempfile.TemporaryDirectory() as directory:  # The same weights, as the parity tests.
    path = os.path.join(directory, 'vit.npz')
    vit_weights.write_vit_npz(path, params)
    timm.models.vision_transformer._load_weights(peer, path)
  return _classifier_rows(f'ViT-{args.model}', model, params, peer, images, args)


# --model of the Swin rows (`--task=vit`) -> (our variant, timm's model at window 7, 224 px).
SWIN_MODELS = {'swin_t': ('T', 'swin_tiny_patch4_window7_224'),
               'swin_s': ('S', 'swin_small_patch4_window7_224'),
               'swin_b': ('B', 'swin_base_patch4_window7_224')}


def swin_rows(args) -> tuple[str, dict]:
  """Our Swin against timm's on timm's random init (its weights converted into ours). Sizes
  other than 224 need each stage's map a multiple of the window 7 or no larger than it (where
  timm pads after its roll, the original backbone and ours before)."""
  import timm
  variant, timm_name = SWIN_MODELS[args.model]
  image_size = args.size or (224, 224)
  model = our_model('classification', 'swin', dict(variant=variant, num_classes=1000))
  # No stochastic depth on either side (timm's default is 0.1): the same work in a train step.
  peer = timm.create_model(timm_name, pretrained=False, img_size=image_size, drop_path_rate=0.0)
  params = swin_weights.from_torch({k: v.numpy() for k, v in peer.state_dict().items()})
  return _classifier_rows(f'Swin-{variant}', model, params, peer,
                          _images(args.batch, image_size), args)


def _classifier_rows(name: str, model, params, peer, images, args) -> tuple[str, dict]:
  """Inference and an Adam train step of `model` (`params`) and its timm `peer` (the same
  weights) on `images` with random labels."""
  import timm
  labels = np.arange(args.batch) % 1000
  apply = lambda p, x: model.apply({'params': p}, x)
  infer = jax.jit(apply)
  torch_images, torch_labels = _nchw(images), torch.from_numpy(labels)
  # Both sides' weights and inputs in place once, outside the timed calls (torch's are tensors
  # already).
  params, images, labels = jax.device_put((params, images, labels))
  forward_flops = _jax_flops(apply, params, images)
  jax_infer = Contender(lambda: infer(params, images).block_until_ready(), forward_flops)
  peer_infer = _torch_inference(peer, torch_images, flops=forward_flops)
  difference = np.abs(np.asarray(jax_infer.run()) - peer_infer.run().numpy()).max()
  jax_train = _jax_train_step(apply, params, images, labels)
  height, width = images.shape[1:3]
  title = (f'{name}, batch {args.batch}, {height}x{width}, float32; '
           f'peer timm {timm.__version__}; logits differ by at most {difference:.1e}')
  return title, {'inference': (jax_infer, peer_infer),
                 'train step': (jax_train, _torch_train_step(peer, torch_images, torch_labels,
                                                             jax_train.flops))}


# DETR's loss and matching weights (the original's defaults, configs/detr_coco.py), given to
# both sides: ours by name, HF's DetrConfig by its names.
DETR_WEIGHTS = dict(class_weight=1, bbox_weight=5, giou_weight=2)  # Ints: DetrConfig wants ints.
DETR_EOS_COEF = 0.1
# DETR-R50: timm's ResNet-50 (bottleneck blocks per stage as ours with backbone_blocks None),
# 6 encoder and 6 decoder layers. The test takes a smaller model: compiling the whole train step
# takes longer than a test may on a loaded 2-core machine.
DETR_SIZE = dict(timm_backbone='resnet50', backbone_blocks=None, layers=6)
# The recipe's optimizer (configs/detr_coco.py): AdamW, lr 1e-4 (backbone 1e-5), weight decay
# 1e-4 on every parameter, gradients clipped to norm 0.1; the stem and layer1 are frozen.
DETR_FROZEN = r'backbone/(conv1|layer1_\d+)/.*'
DETR_OPTIM = dict(name='adamw', lr=1e-4, weight_decay=1e-4, wd_mask='.*', grad_clip_norm=0.1,
                  lr_mults=((r'backbone/.*', 0.1),))


def _detr_targets(batch: int, slots: int = 5, num_classes: int = 91):
  """3-5 random boxes per image, padded to `slots`: labels [B, T], boxes [B, T, 4] (normalised
  cx, cy, w, h), mask [B, T]."""
  rng = np.random.default_rng(2)
  mask = np.arange(slots) < (3 + np.arange(batch) % 3)[:, None]
  boxes = np.concatenate([rng.uniform(0.25, 0.75, (batch, slots, 2)),
                          rng.uniform(0.1, 0.4, (batch, slots, 2))], -1).astype(np.float32)
  return rng.integers(0, num_classes, (batch, slots)), boxes, mask


def _detr_jax_train_step(model, variables, images, pixel_mask, targets, *,
                         cost_weights=DETR_WEIGHTS, loss_weights=DETR_WEIGHTS,
                         eos_coef=DETR_EOS_COEF, focal=None, optim_config=DETR_OPTIM
                         ) -> Contender:
  """Our DETR task's loss (matching by scipy in a host callback, set loss over all decoder
  layers; `focal`: sigmoid classes, Deformable DETR's) under the recipe's optimizer; only the
  trainable parameters get gradients."""
  from detr_jax import losses, matcher
  from vit_jax.framework import optim
  focal = focal or {}
  flat = weights.flatten(variables['params'])
  frozen = {k: v for k, v in flat.items() if re.fullmatch(DETR_FROZEN, k)}
  trainable = weights.unflatten({k: v for k, v in flat.items() if k not in frozen})

  def loss(trainable, images, pixel_mask, labels, boxes, box_mask):
    params = weights.unflatten({**weights.flatten(trainable), **frozen})
    outputs = model.apply({'params': params, 'frozen': variables['frozen']}, images, pixel_mask,
                          train=True)
    logits, pred_boxes = outputs['logits'], outputs['boxes']
    per_layer = lambda x: jnp.broadcast_to(x, logits.shape[:1] + x.shape)
    cost = matcher.matching_cost(logits, pred_boxes, per_layer(labels), per_layer(boxes),
                                 per_layer(box_mask), **cost_weights, **focal)
    target_query = matcher.hungarian_match(cost, box_mask)
    return losses.set_loss(logits, pred_boxes, labels, boxes, box_mask, target_query,
                           eos_coef=eos_coef, **loss_weights, **focal)[0]
  tx, _ = optim.make_optimizer(ml_collections.ConfigDict(optim_config), total_steps=1)
  return _jax_optimized(loss, tx, trainable, images, pixel_mask, *targets)


def _detr_torch_train_step(peer, images, pixel_mask, targets, flops: float,
                           optim_config=DETR_OPTIM, slower=(r'\.backbone\.',)) -> Contender:
  """HF's loss (its own Hungarian matcher, auxiliary losses) under the same optimizer as the
  original's main.py: parameters whose HF name matches a `slower` regex at lr x the recipe's
  multiplier (one for all: 0.1). HF leaves the stem and layer1 without gradients, as the
  original."""
  labels = [{'class_labels': torch.from_numpy(l[m]), 'boxes': torch.from_numpy(b[m])}
            for l, b, m in zip(*targets)]
  trainable = [(name, p) for name, p in peer.named_parameters() if p.requires_grad]
  is_slower = lambda name: any(re.search(regex, name) for regex in slower)
  lr, mult = optim_config['lr'], optim_config['lr_mults'][0][1]
  optimizer = torch.optim.AdamW(
      [{'params': [p for name, p in trainable if not is_slower(name)]},
       {'params': [p for name, p in trainable if is_slower(name)], 'lr': lr * mult}],
      lr=lr, weight_decay=optim_config['weight_decay'])
  return _torch_optimized(
      peer, lambda: peer(pixel_values=images, pixel_mask=pixel_mask, labels=labels).loss,
      optimizer, flops, clip_norm=optim_config['grad_clip_norm'])


def _detector_inference(model, variables, peer, batch: int, size: tuple[int, int]):
  """DETR-style inference on both sides: the inputs (unpadded images), the two contenders and
  the largest difference of the last layer's class logits."""
  images = _images(batch, size)
  mask = np.ones((batch, *size), np.int32)
  apply = lambda v, x, m: model.apply(v, x, m)
  infer = jax.jit(apply)
  flops = _jax_flops(apply, variables, images, mask)
  on_device = jax.device_put((variables, images, mask))  # Not copied in again each call.
  jax_infer = Contender(lambda: jax.block_until_ready(infer(*on_device)), flops)
  torch_images, torch_mask = _nchw(images), torch.from_numpy(mask).long()
  peer_infer = _torch_inference(peer, torch_images, torch_mask, flops=flops)
  difference = np.abs(np.asarray(jax_infer.run()['logits'][-1])
                      - peer_infer.run().logits.numpy()).max()
  return images, mask, torch_images, torch_mask, jax_infer, peer_infer, difference


def detr_rows(args) -> tuple[str, dict]:
  from transformers import DetrConfig, DetrForObjectDetection
  from detr_jax import pretrained
  height, width = args.size or (800, 1067)
  torch.manual_seed(0)
  # Dropout off on both sides, so that the train steps' losses compare.
  peer = DetrForObjectDetection(DetrConfig(
      use_timm_backbone=True, backbone=DETR_SIZE['timm_backbone'], use_pretrained_backbone=False,
      num_labels=91, encoder_layers=DETR_SIZE['layers'], decoder_layers=DETR_SIZE['layers'],
      dropout=0.0,
      auxiliary_loss=True,
      class_cost=DETR_WEIGHTS['class_weight'], bbox_cost=DETR_WEIGHTS['bbox_weight'],
      giou_cost=DETR_WEIGHTS['giou_weight'], bbox_loss_coefficient=DETR_WEIGHTS['bbox_weight'],
      giou_loss_coefficient=DETR_WEIGHTS['giou_weight'], eos_coefficient=DETR_EOS_COEF)).eval()
  variables = pretrained.convert_state_dict({k: v.numpy() for k, v in peer.state_dict().items()})
  model = our_model('detection', 'detr', dict(
      num_classes=91, backbone_blocks=DETR_SIZE['backbone_blocks'],
      num_encoder_layers=DETR_SIZE['layers'], num_decoder_layers=DETR_SIZE['layers'],
      dropout_rate=0.0))
  images, mask, torch_images, torch_mask, jax_infer, peer_infer, difference = (
      _detector_inference(model, variables, peer, args.batch, (height, width)))
  targets = _detr_targets(args.batch)
  jax_train = _detr_jax_train_step(model, variables, images, mask, targets)
  peer_train = _detr_torch_train_step(peer, torch_images, torch_mask, targets, jax_train.flops)
  first, second = _loss_differences(jax_train, peer_train)
  name = 'R50' if DETR_SIZE['backbone_blocks'] is None else (
      f"{DETR_SIZE['timm_backbone']} backbone, {DETR_SIZE['layers']}+{DETR_SIZE['layers']} layers")
  title = (f'DETR-{name}, batch {args.batch}, {height}x{width}, float32; peer HF transformers '
           f'DETR; class logits differ by at most {difference:.1e}; train-step loss differs by '
           f'{first:.1e} relative, after one AdamW step by {second:.1e}')
  return title, {'inference': (jax_infer, peer_infer), 'train step': (jax_train, peer_train)}


# Deformable DETR (configs/deformable_detr_coco.py), both sides: the matching cost's weights
# (class 2, L1 5, GIoU 2), focal alpha 0.25 and gamma 2; in the loss L1 5 and GIoU 2, and the
# class term at 1: HF fixes loss_ce's weight at 1 (the recipe's is 2).
DEFORMABLE_COST = dict(class_weight=2, bbox_weight=5, giou_weight=2)
DEFORMABLE_LOSS = dict(class_weight=1, bbox_weight=5, giou_weight=2)
DEFORMABLE_FOCAL = dict(focal_alpha=0.25, focal_gamma=2.0)
# Deformable DETR-R50 (4 levels, 6 + 6 layers, 300 queries); the test takes a smaller one.
DEFORMABLE_SIZE = dict(timm_backbone='resnet50', backbone_blocks=None, layers=6, queries=300)
# The recipe's optimizer: AdamW at 2e-4, the backbone and the sampling offsets and reference
# points at 2e-5 (the original's lr_backbone and lr_linear_proj_mult), weight decay 1e-4 on
# every parameter, gradients clipped to norm 0.1; the stem and layer1 are frozen.
DEFORMABLE_OPTIM = dict(name='adamw', lr=2e-4, weight_decay=1e-4, wd_mask='.*',
                        grad_clip_norm=0.1,
                        lr_mults=((r'backbone/.*', 0.1),
                                  (r'.*/?(sampling_offsets|reference_points)/.*', 0.1)))
# The same groups by HF's names.
DEFORMABLE_SLOWER = (r'\.backbone\.', r'sampling_offsets|reference_points')


def deformable_detr_rows(args) -> tuple[str, dict]:
  from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection
  from detr_jax import deformable_pretrained
  height, width = args.size or (800, 1067)
  size = DEFORMABLE_SIZE
  torch.manual_seed(0)
  # Dropout off on both sides (HF's attention and activation dropouts are 0 already).
  peer = DeformableDetrForObjectDetection(DeformableDetrConfig(
      use_timm_backbone=True, backbone=size['timm_backbone'], use_pretrained_backbone=False,
      num_labels=91, encoder_layers=size['layers'], decoder_layers=size['layers'],
      num_queries=size['queries'], dropout=0.0, auxiliary_loss=True,
      class_cost=DEFORMABLE_COST['class_weight'], bbox_cost=DEFORMABLE_COST['bbox_weight'],
      giou_cost=DEFORMABLE_COST['giou_weight'],
      bbox_loss_coefficient=DEFORMABLE_LOSS['bbox_weight'],
      giou_loss_coefficient=DEFORMABLE_LOSS['giou_weight'],
      focal_alpha=DEFORMABLE_FOCAL['focal_alpha'])).eval()
  variables = deformable_pretrained.convert_state_dict(
      {k: v.numpy() for k, v in peer.state_dict().items()})
  model = our_model('detection', 'deformable_detr', dict(
      num_classes=91, backbone_blocks=size['backbone_blocks'],
      num_encoder_layers=size['layers'], num_decoder_layers=size['layers'],
      num_queries=size['queries'], dropout_rate=0.0))
  images, mask, torch_images, torch_mask, jax_infer, peer_infer, difference = (
      _detector_inference(model, variables, peer, args.batch, (height, width)))
  targets = _detr_targets(args.batch)
  jax_train = _detr_jax_train_step(
      model, variables, images, mask, targets, cost_weights=DEFORMABLE_COST,
      loss_weights=DEFORMABLE_LOSS, eos_coef=0.0, focal=DEFORMABLE_FOCAL,
      optim_config=DEFORMABLE_OPTIM)
  peer_train = _detr_torch_train_step(peer, torch_images, torch_mask, targets, jax_train.flops,
                                      DEFORMABLE_OPTIM, DEFORMABLE_SLOWER)
  first, second = _loss_differences(jax_train, peer_train)
  name = 'R50' if size['backbone_blocks'] is None else (
      f"{size['timm_backbone']} backbone, {size['layers']}+{size['layers']} layers, "
      f"{size['queries']} queries")
  title = (f'Deformable DETR-{name}, batch {args.batch}, {height}x{width}, float32; peer HF '
           f'transformers DeformableDetrForObjectDetection with its pure-PyTorch attention '
           f'(grid_sample, its path on CPU); class logits differ by at most {difference:.1e}; '
           f'train-step loss differs by {first:.1e} relative, after one AdamW step by '
           f'{second:.1e}')
  return title, {'inference': (jax_infer, peer_infer), 'train step': (jax_train, peer_train)}


# The recipe's optimizer (configs/segmenter_recipe.py, ADE20K's lr): Nesterov SGD, momentum 0.9,
# lr 1e-3, no weight decay (the poly schedule left out: one step at a time).
SEGMENTER_OPTIM = dict(name='nesterov', momentum=0.9, lr=1e-3)


class TorchMaskTransformer(torch.nn.Module):
  """Segmenter's mask transformer in torch, named as the official decoder so that its state
  dict converts with segmenter_jax.pretrained.convert_official (`num_layers` 0: the linear
  decoder, `head`)."""

  def __init__(self, width: int, num_heads: int, num_classes: int, num_layers: int):
    super().__init__()
    import timm
    norm = functools.partial(torch.nn.LayerNorm, eps=1e-5)
    self.num_classes = num_classes
    if not num_layers:
      self.head = torch.nn.Linear(width, num_classes)
      return
    self.proj_dec = torch.nn.Linear(width, width)
    self.cls_emb = torch.nn.Parameter(0.02 * torch.randn(1, num_classes, width))
    self.blocks = torch.nn.ModuleList(  # timm's block is the original's (pre-norm, erf GELU).
        timm.models.vision_transformer.Block(width, num_heads, qkv_bias=True, norm_layer=norm)
        for _ in range(num_layers))
    self.decoder_norm = norm(width)
    self.proj_patch = torch.nn.Parameter(width**-0.5 * torch.randn(width, width))
    self.proj_classes = torch.nn.Parameter(width**-0.5 * torch.randn(width, width))
    self.mask_norm = norm(num_classes)

  def forward(self, x):
    """[B, N, D] patch tokens -> [B, N, K] mask logits."""
    if hasattr(self, 'head'):
      return self.head(x)
    x = self.proj_dec(x)
    x = torch.cat([x, self.cls_emb.expand(x.shape[0], -1, -1)], 1)
    for block in self.blocks:
      x = block(x)
    x = self.decoder_norm(x)
    patches = x[:, :-self.num_classes] @ self.proj_patch
    classes = x[:, -self.num_classes:] @ self.proj_classes
    patches = patches / patches.norm(dim=-1, keepdim=True)
    classes = classes / classes.norm(dim=-1, keepdim=True)
    return self.mask_norm(patches @ classes.transpose(1, 2))


class TorchSegmenter(torch.nn.Module):
  """timm's ViT encoder + TorchMaskTransformer: images [B, 3, H, W] (H, W multiples of the patch)
  -> patch-level mask logits [B, K, H/p, W/p]."""

  def __init__(self, encoder: torch.nn.Module, decoder: TorchMaskTransformer, patch_size: int):
    super().__init__()
    self.encoder, self.decoder, self.patch_size = encoder, decoder, patch_size

  def forward(self, images):
    masks = self.decoder(self.encoder.forward_features(images)[:, 1:])
    grid = (images.shape[2] // self.patch_size, images.shape[3] // self.patch_size)
    return masks.transpose(1, 2).reshape(masks.shape[0], -1, *grid)


def segmenter_rows(args) -> tuple[str, dict]:
  import timm
  from segmenter_jax import models as seg_models
  from segmenter_jax import pretrained
  from segmenter_jax.segmentation import pixel_cross_entropy
  from vit_jax.framework import optim
  size, num_classes = args.size or (512, 512), 150
  encoder = seg_models.decode_variant(args.model)
  width, heads, patch = encoder['hidden_size'], encoder['num_heads'], encoder['patch_size']
  decoder_layers = 2 if args.decoder == 'mask_transformer' else 0
  if args.decoder not in seg_models.DECODERS:
    raise UserError(f'unknown decoder {args.decoder!r}: use one of {seg_models.DECODERS}')
  torch.manual_seed(0)
  peer = TorchSegmenter(
      timm.models.vision_transformer.VisionTransformer(
          img_size=size, patch_size=patch, embed_dim=width, depth=encoder['num_layers'],
          num_heads=heads, mlp_ratio=encoder['mlp_dim'] / width, num_classes=0,
          norm_layer=functools.partial(torch.nn.LayerNorm, eps=seg_models.LAYER_NORM_EPSILON)),
      TorchMaskTransformer(width, heads, num_classes, decoder_layers), patch).eval()
  # The peer's weights into ours by the official checkpoint's converter (dropout and drop path
  # 0 on both sides, so that the train steps' losses compare).
  net = dict(d_model=width, n_layers=encoder['num_layers'], n_heads=heads, d_ff=encoder['mlp_dim'],
             patch_size=patch, image_size=size, n_cls=num_classes,
             decoder=dict(name=args.decoder, n_layers=decoder_layers, n_heads=heads))
  params, fields = pretrained.convert_official(peer.state_dict(), {'net_kwargs': net})
  model = our_model('segmentation', 'segmenter', fields)

  images = _images(args.batch, size)
  labels = np.random.default_rng(3).integers(0, num_classes, (args.batch,) + size)
  ours = lambda p, x: model.apply({'params': p}, x, method=seg_models.Segmenter.patch_logits)
  infer = jax.jit(ours)
  flops = _jax_flops(ours, params, images)
  on_device = jax.device_put((params, images))  # Not copied in again each call.
  jax_infer = Contender(lambda: infer(*on_device).block_until_ready(), flops)
  torch_images, torch_labels = _nchw(images), torch.from_numpy(labels)
  peer_infer = _torch_inference(peer, torch_images, flops=flops)
  difference = np.abs(np.asarray(jax_infer.run())
                      - peer_infer.run().permute(0, 2, 3, 1).numpy()).max()

  # Pixel cross-entropy on the logits upsampled to the image (bilinear, half-pixel).
  loss = lambda p, x, y: pixel_cross_entropy(model.apply({'params': p}, x, train=True), y)
  tx, _ = optim.make_optimizer(ml_collections.ConfigDict(SEGMENTER_OPTIM), total_steps=1)
  jax_train = _jax_optimized(loss, tx, params, images, labels)
  peer_loss = lambda: torch.nn.functional.cross_entropy(
      torch.nn.functional.interpolate(peer(torch_images), size=size, mode='bilinear',
                                      align_corners=False),
      torch_labels, ignore_index=255)
  optimizer = torch.optim.SGD(peer.parameters(), lr=SEGMENTER_OPTIM['lr'],
                              momentum=SEGMENTER_OPTIM['momentum'], nesterov=True)
  peer_train = _torch_optimized(peer, peer_loss, optimizer, jax_train.flops)
  first, second = _loss_differences(jax_train, peer_train)
  title = (f'Seg-{args.model} {args.decoder}, batch {args.batch}, {size[0]}x{size[1]}, '
           f'float32; peer timm {timm.__version__} encoder + a torch copy of our decoder. '
           f'Inference up to patch-level mask logits: differ by at most {difference:.1e}; '
           f'train-step loss differs by {first:.1e} relative, after one Nesterov SGD step by '
           f'{second:.1e}')
  return title, {'inference': (jax_infer, peer_infer), 'train step': (jax_train, peer_train)}


TASKS = {'vit': vit_rows, 'detr': detr_rows, 'deformable_detr': deformable_detr_rows,
         'segmenter': segmenter_rows}


# ------------------------------------------------------------------------------ timing


def matmuls() -> tuple[Contender, Contender]:
  """Dense float32 matmuls, MATMUL_SIZE cubed, in XLA and in torch, MATMULS_PER_CALL a call."""
  n, count = MATMUL_SIZE, MATMULS_PER_CALL
  a = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
  xla = jax.jit(lambda x: x @ x)
  x, t = jnp.asarray(a), torch.from_numpy(a)
  return (Contender(lambda: [xla(x).block_until_ready() for _ in range(count)], 2.0 * count * n**3),
          Contender(lambda: [t @ t for _ in range(count)], 2.0 * count * n**3))


def alternate(contenders: list[Contender], repeats: int, warmups: int) -> list[list[float]]:
  """Seconds per call of each contender: `warmups` untimed rounds, then `repeats` rounds of one
  call each, in turn."""
  for _ in range(warmups):
    for contender in contenders:
      contender.run()
  times = [[] for _ in contenders]
  for _ in range(repeats):
    for contender, spent in zip(contenders, times):
      start = time.perf_counter()
      contender.run()
      spent.append(time.perf_counter() - start)
  return times


def _size(text: str) -> tuple[int, int]:
  height, _, width = text.partition('x')
  try:
    return int(height), int(width or height)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{text!r}: use N or HxW, e.g. 512 or 800x1067') from None


def main(argv: Optional[list[str]] = None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--task', default='vit', choices=sorted(TASKS))
  parser.add_argument('--model', default='B/16',
                      help='ViT variant (vit, segmenter), e.g. B/16; or swin_t, swin_s, swin_b')
  parser.add_argument('--decoder', default='mask_transformer', help='segmenter decoder')
  parser.add_argument('--size', type=_size, default=None,
                      help='N or HxW (default: vit 224, detr and deformable_detr 800x1067, '
                           'segmenter 512)')
  parser.add_argument('--batch', type=int, default=None, help='default: vit 8, others 1')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--warmups', type=int, default=3, help='untimed rounds first')
  args = parser.parse_args(argv)
  args.batch = args.batch or (8 if args.task == 'vit' else 1)
  torch.set_num_threads(os.cpu_count())
  try:
    title, rows = TASKS[args.task](args)
  except UserError as e:
    parser.exit(2, f'error: {e}\n')
  contenders = [c for pair in rows.values() for c in pair] + list(matmuls())
  times = alternate(contenders, args.repeats, args.warmups)
  medians = [statistics.median(t) for t in times]
  rates = [c.flops / m for c, m in zip(contenders, medians)]
  best_rates = [c.flops / min(t) for c, t in zip(contenders, times)]
  xla_rate, torch_rate = rates[-2:]
  xla_best, torch_best = best_rates[-2:]
  print(title)
  print(f'JAX on {jax.devices()[0].device_kind}, torch {torch.__version__} on '
        f'{torch.get_num_threads()} threads; medians of {args.repeats} alternating rounds after '
        f'{args.warmups} untimed')
  print(f'dense {MATMUL_SIZE}^3 float32 matmul: XLA {xla_rate / 1e9:.1f} GFLOP/s, '
        f'torch {torch_rate / 1e9:.1f} GFLOP/s; best rounds {xla_best / 1e9:.1f} and '
        f'{torch_best / 1e9:.1f}')
  print(f'{"":<12}{"jax img/s":>10}{"peer img/s":>11}{"jax/peer":>9}'
        f'{"jax mm%":>9}{"peer mm%":>9} (medians)   spread (img/s, min-max: jax; peer)')
  for i, row in enumerate(rows):
    jax_times, peer_times = times[2 * i], times[2 * i + 1]
    jax_ips, peer_ips = args.batch / medians[2 * i], args.batch / medians[2 * i + 1]
    spread = '; '.join(f'{args.batch / max(t):.2f}-{args.batch / min(t):.2f}'
                       for t in (jax_times, peer_times))
    print(f'{row:<12}{jax_ips:>10.2f}{peer_ips:>11.2f}{jax_ips / peer_ips:>9.2f}'
          f'{100 * best_rates[2 * i] / xla_best:>9.0f}'
          f'{100 * best_rates[2 * i + 1] / torch_best:>9.0f}'
          f' ({100 * rates[2 * i] / xla_rate:.0f} / {100 * rates[2 * i + 1] / torch_rate:.0f})'
          f'   {spread}')


if __name__ == '__main__':
  host_memory.reuse_freed_memory_on_cpu()  # As vit_jax.framework.cli does; before JAX starts.
  main()
