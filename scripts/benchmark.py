"""ViT throughput here and in timm, measured in the same run on the same machine.

  python scripts/benchmark.py --model=B/16 --batch=8 [--repeats=3]

Prints images/s for inference and for a training step (forward, backward, Adam update) in JAX
(this codebase) and in timm (PyTorch), and the ratio JAX / timm. Both in float32, median of
`--repeats` timed runs after one warm-up run (which includes JAX's compilation).
"""

import argparse
import os

import torch  # Before TensorFlow-linked imports: see tests/conftest.py.
import timm

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import model_stats, models

TIMM_SIZES = {'Ti': 'tiny', 'S': 'small', 'B': 'base', 'L': 'large', 'H': 'huge'}


def jax_throughput(variant, batch, repeats, image_size=224):
  model = models.build_vit(dict(variant=variant, num_classes=1000))
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (batch, image_size, image_size, 3)),
                       jnp.float32)
  labels = jnp.arange(batch) % 1000
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), images[:1]))['params']
  tx = optax.adam(1e-4)
  opt_state = tx.init(params)
  infer = jax.jit(lambda p, x: model.apply({'params': p}, x))

  @jax.jit
  def train_step(p, s, x, y):
    def loss_fn(p):
      logits = model.apply({'params': p}, x, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = jax.grad(loss_fn)(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  inference = model_stats.median_seconds(lambda: infer(params, images).block_until_ready(), repeats)
  state = [params, opt_state]

  def step():
    state[0], state[1] = train_step(state[0], state[1], images, labels)
    jax.block_until_ready(state[0])
  return batch / inference, batch / model_stats.median_seconds(step, repeats)


def timm_throughput(variant, batch, repeats, image_size=224):
  size, _, patch = variant.partition('/')
  model = timm.create_model(f'vit_{TIMM_SIZES[size]}_patch{patch}_{image_size}',
                            pretrained=False)
  images = torch.from_numpy(np.random.default_rng(0).uniform(
      -1, 1, (batch, 3, image_size, image_size)).astype(np.float32))
  labels = torch.arange(batch) % 1000
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

  def infer():
    model.eval()
    with torch.no_grad():
      model(images)

  def step():
    model.train()
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
  return batch / model_stats.median_seconds(infer, repeats), batch / model_stats.median_seconds(step, repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='B/16', help='plain ViT variant, e.g. Ti/16, B/16')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  jax_infer, jax_train = jax_throughput(args.model, args.batch, args.repeats)
  timm_infer, timm_train = timm_throughput(args.model, args.batch, args.repeats)
  device = jax.devices()[0].device_kind
  print(f'ViT-{args.model}, batch {args.batch}, float32, JAX on {device}, '
        f'torch on {torch.get_num_threads()} CPU threads')
  print(f'{"":<12}{"jax img/s":>12}{"timm img/s":>12}{"jax/timm":>10}')
  print(f'{"inference":<12}{jax_infer:>12.2f}{timm_infer:>12.2f}{jax_infer / timm_infer:>10.2f}')
  print(f'{"train step":<12}{jax_train:>12.2f}{timm_train:>12.2f}{jax_train / timm_train:>10.2f}')


if __name__ == '__main__':
  main()
