"""Throughput of each task's model here and in a PyTorch peer, measured in the same run.

  python scripts/benchmark.py --task=vit --model=B/16 --batch=8 [--repeats=5]
  python scripts/benchmark.py --task=detr --size=800x1067 --batch=1
  python scripts/benchmark.py --task=segmenter --model=B/16 --size=512 --batch=1

Peers, on the same weights (their outputs are compared and the largest difference printed):
  vit        timm's ViT (erf GELU, so ours runs with erf GELU too); inference and train step
             (forward, backward, Adam update).
  detr       HF transformers' DETR (timm ResNet-50 backbone); inference.
  segmenter  timm's ViT as the encoder, then our decoder: the original Segmenter code cannot
             ship, so the peer swaps in timm for the part that costs. Inference up to the
             patch-level mask logits (the upsampling is left out of both).

Every timed function runs once to warm up (JAX compiles there), then all of them in turn,
`--repeats` rounds (A, B, A, B, ...), so that a shared machine's load falls on both alike; a
plain 1024x1024x1024 float32 matmul in XLA and in torch takes part in every round. Prints
images/s (median over rounds, min-max beside it), the ratio JAX / peer, and the achieved FLOP/s
as a fraction of the same framework's matmul rate in this run. FLOPs are XLA's cost analysis of
our model: 2 per multiply-add, the train step's counted on the whole step.
"""

import argparse
import os
import statistics
import tempfile
import time
from typing import Callable, Optional

import torch  # torch and its triton before TensorFlow (vit_jax.weights): see tests/conftest.py.
import torch._dynamo  # noqa: F401

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import models, weights
from vit_jax.errors import UserError

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


def _jax_train_step(apply: Callable, params, images, labels) -> Contender:
  """Adam on softmax cross-entropy, params and optimizer state carried between calls."""
  tx = optax.adam(1e-4)

  def step(p, s, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()
    updates, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s
  state = [params, tx.init(params)]
  flops = _jax_flops(step, *state, images, labels)
  compiled = jax.jit(step)

  def run():
    state[:] = compiled(*state, images, labels)
    jax.block_until_ready(state)
  return Contender(run, flops)


def _torch_train_step(model: torch.nn.Module, images, labels, flops: float) -> Contender:
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

  def run():
    model.train()
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
  return Contender(run, flops)


def _torch_inference(model: torch.nn.Module, *inputs, flops: float) -> Contender:
  def run():
    model.eval()
    with torch.no_grad():
      return model(*inputs)
  return Contender(run, flops)


# -------------------------------------------------------------------------------- tasks


def vit_rows(args) -> tuple[str, dict]:
  import timm
  size, _, patch = args.model.partition('/')
  if size not in TIMM_SIZES or '+' in args.model:
    raise UserError(f'--model {args.model!r}: the ViT benchmark takes a plain SIZE/PATCH '
                    f'with SIZE in {sorted(TIMM_SIZES)} (timm has no same-named hybrids)')
  image_size = args.size or (224, 224)
  # timm's numerics: erf GELU; its init (random head, so that the outputs compare something).
  model = models.build_vit(dict(variant=args.model, num_classes=1000, gelu_approximate=False,
                                weight_init='timm'))
  images = _images(args.batch, image_size)
  labels = np.arange(args.batch) % 1000
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), images[:1]))['params']
  peer = timm.create_model(f'vit_{TIMM_SIZES[size]}_patch{patch}_224',
                           pretrained=False, img_size=image_size)
  with tempfile.TemporaryDirectory() as directory:  # The same weights, as the parity tests.
    path = os.path.join(directory, 'vit.npz')
    weights.write_vit_npz(path, params)
    timm.models.vision_transformer._load_weights(peer, path)

  apply = lambda p, x: model.apply({'params': p}, x)
  infer = jax.jit(apply)
  torch_images, torch_labels = _nchw(images), torch.from_numpy(labels)
  # Both sides' inputs made once, outside the timed calls (torch's are tensors already).
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  forward_flops = _jax_flops(apply, params, images)
  jax_infer = Contender(lambda: infer(params, images).block_until_ready(), forward_flops)
  peer_infer = _torch_inference(peer, torch_images, flops=forward_flops)
  difference = np.abs(np.asarray(jax_infer.run()) - peer_infer.run().numpy()).max()
  jax_train = _jax_train_step(apply, params, images, labels)
  title = (f'ViT-{args.model}, batch {args.batch}, {image_size[0]}x{image_size[1]}, float32; '
           f'peer timm {timm.__version__}; logits differ by at most {difference:.1e}')
  return title, {'inference': (jax_infer, peer_infer),
                 'train step': (jax_train, _torch_train_step(peer, torch_images, torch_labels,
                                                             jax_train.flops))}


def detr_rows(args) -> tuple[str, dict]:
  from transformers import DetrConfig, DetrForObjectDetection
  from detr_jax import models as detr_models, pretrained
  height, width = args.size or (800, 1067)
  torch.manual_seed(0)
  peer = DetrForObjectDetection(DetrConfig(
      use_timm_backbone=True, backbone='resnet50', use_pretrained_backbone=False,
      num_labels=91)).eval()
  variables = pretrained.convert_state_dict({k: v.numpy() for k, v in peer.state_dict().items()})
  model = detr_models.DETR(num_classes=91)
  images = _images(args.batch, (height, width))
  mask = np.ones((args.batch, height, width), np.int32)
  apply = lambda v, x, m: model.apply(v, x, m)
  infer = jax.jit(apply)
  flops = _jax_flops(apply, variables, images, mask)
  jax_infer = Contender(lambda: jax.block_until_ready(infer(variables, images, mask)), flops)
  peer_infer = _torch_inference(peer, _nchw(images), torch.from_numpy(mask).long(), flops=flops)
  difference = np.abs(np.asarray(jax_infer.run()['logits'][-1])
                      - peer_infer.run().logits.numpy()).max()
  title = (f'DETR-R50, batch {args.batch}, {height}x{width}, float32; peer HF transformers '
           f'DETR; class logits differ by at most {difference:.1e}')
  return title, {'inference': (jax_infer, peer_infer)}


def segmenter_rows(args) -> tuple[str, dict]:
  import functools
  import timm
  from segmenter_jax import models as seg_models, pretrained
  size = args.size or (512, 512)
  model = seg_models.build_segmenter(dict(variant=args.model, decoder=args.decoder,
                                          num_classes=150, image_size=size))
  encoder = model.encoder
  peer = timm.models.vision_transformer.VisionTransformer(
      img_size=size, patch_size=encoder.patch_size, embed_dim=encoder.hidden_size,
      depth=encoder.num_layers, num_heads=encoder.num_heads, mlp_ratio=encoder.mlp_dim / encoder.hidden_size,
      num_classes=0, norm_layer=functools.partial(torch.nn.LayerNorm,
                                                  eps=seg_models.LAYER_NORM_EPSILON)).eval()
  images = _images(args.batch, size)
  fresh = nn.meta.unbox(jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(0), images[:1]))['params']
  params = pretrained.init_encoder_from_timm(
      fresh, {k: v.numpy() for k, v in peer.state_dict().items()}, encoder.num_heads)
  ours = lambda p, x: model.apply({'params': p}, x, method=seg_models.Segmenter.patch_logits)
  decode = jax.jit(lambda p, tokens: model.apply(
      {'params': p}, tokens, method=lambda m, t: m.decoder(t, train=False)))
  grid = (size[0] // encoder.patch_size, size[1] // encoder.patch_size)
  torch_images = _nchw(images)

  def peer_run():
    with torch.no_grad():
      tokens = peer.forward_features(torch_images)[:, 1:].numpy()
    return decode(params, tokens).block_until_ready().reshape((args.batch,) + grid + (-1,))
  infer = jax.jit(ours)
  flops = _jax_flops(ours, params, images)
  jax_infer = Contender(lambda: infer(params, images).block_until_ready(), flops)
  peer_infer = Contender(peer_run, flops)
  difference = np.abs(np.asarray(jax_infer.run()) - np.asarray(peer_infer.run())).max()
  title = (f'Seg-{args.model} {args.decoder}, batch {args.batch}, {size[0]}x{size[1]}, '
           f'float32, up to patch-level mask logits; peer timm {timm.__version__} encoder + '
           f'our decoder; logits differ by at most {difference:.1e}')
  return title, {'inference': (jax_infer, peer_infer)}


TASKS = {'vit': vit_rows, 'detr': detr_rows, 'segmenter': segmenter_rows}


# ------------------------------------------------------------------------------ timing


def matmuls() -> tuple[Contender, Contender]:
  """Dense float32 matmuls, MATMUL_SIZE cubed, in XLA and in torch, MATMULS_PER_CALL a call."""
  n, count = MATMUL_SIZE, MATMULS_PER_CALL
  a = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
  xla = jax.jit(lambda x: x @ x)
  x, t = jnp.asarray(a), torch.from_numpy(a)
  return (Contender(lambda: [xla(x).block_until_ready() for _ in range(count)], 2.0 * count * n**3),
          Contender(lambda: [t @ t for _ in range(count)], 2.0 * count * n**3))


def alternate(contenders: list[Contender], repeats: int) -> list[list[float]]:
  """Seconds per call of each contender: one warm-up call each, then `repeats` rounds of one
  call each, in turn."""
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
  parser.add_argument('--model', default='B/16', help='ViT variant (vit, segmenter), e.g. B/16')
  parser.add_argument('--decoder', default='mask_transformer', help='segmenter decoder')
  parser.add_argument('--size', type=_size, default=None,
                      help='N or HxW (default: vit 224, detr 800x1067, segmenter 512)')
  parser.add_argument('--batch', type=int, default=None, help='default: vit 8, others 1')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args(argv)
  args.batch = args.batch or (8 if args.task == 'vit' else 1)
  torch.set_num_threads(os.cpu_count())
  try:
    title, rows = TASKS[args.task](args)
  except UserError as e:
    parser.exit(2, f'error: {e}\n')
  contenders = [c for pair in rows.values() for c in pair] + list(matmuls())
  times = alternate(contenders, args.repeats)
  medians = [statistics.median(t) for t in times]
  rates = [c.flops / m for c, m in zip(contenders, medians)]
  xla_rate, torch_rate = rates[-2:]
  print(title)
  print(f'JAX on {jax.devices()[0].device_kind}, torch {torch.__version__} on '
        f'{torch.get_num_threads()} threads; medians of {args.repeats} alternating rounds')
  print(f'dense {MATMUL_SIZE}^3 float32 matmul: XLA {xla_rate / 1e9:.1f} GFLOP/s, '
        f'torch {torch_rate / 1e9:.1f} GFLOP/s')
  print(f'{"":<12}{"jax img/s":>10}{"peer img/s":>11}{"jax/peer":>9}'
        f'{"jax mm%":>9}{"peer mm%":>9}   spread (img/s, min-max: jax; peer)')
  for i, row in enumerate(rows):
    jax_times, peer_times = times[2 * i], times[2 * i + 1]
    jax_ips, peer_ips = args.batch / medians[2 * i], args.batch / medians[2 * i + 1]
    spread = '; '.join(f'{args.batch / max(t):.2f}-{args.batch / min(t):.2f}'
                       for t in (jax_times, peer_times))
    print(f'{row:<12}{jax_ips:>10.2f}{peer_ips:>11.2f}{jax_ips / peer_ips:>9.2f}'
          f'{100 * rates[2 * i] / xla_rate:>9.0f}{100 * rates[2 * i + 1] / torch_rate:>9.0f}'
          f'   {spread}')


if __name__ == '__main__':
  main()
