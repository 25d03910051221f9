"""Segmenter inference throughput: images/s of the jitted forward pass at one window.

  python scripts/segmenter_benchmark.py --variant=B/16 --decoder=mask_transformer --size=512

Random weights (speed does not depend on them), float32, batch `--batch`, median of `--repeats`
timed runs after one warm-up run (which includes compilation). At --size equal to the crop, an
image is one sliding window: this is the per-window cost of the eval protocol.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segmenter_jax import models
from vit_jax import model_stats


def throughput(variant: str, decoder: str, size: int, batch: int, repeats: int,
               num_classes: int = 150) -> float:
  """Images per second of model.apply on [batch, size, size, 3]."""
  model = models.build_segmenter(dict(variant=variant, decoder=decoder, num_classes=num_classes,
                                      image_size=size))
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)),
                       jnp.float32)
  params = nn.meta.unbox(jax.jit(lambda r: model.init(r, images, train=False))(
      jax.random.PRNGKey(0)))['params']
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))
  return batch / model_stats.median_seconds(
      lambda: forward(params, images).block_until_ready(), repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--variant', default='B/16', help='e.g. Ti/16, S/16, B/16, L/16, B/8')
  parser.add_argument('--decoder', default='mask_transformer',
                      choices=models.DECODERS)
  parser.add_argument('--size', type=int, default=512)
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  rate = throughput(args.variant, args.decoder, args.size, args.batch, args.repeats)
  print(f'Seg-{args.variant} {args.decoder}, {args.size}x{args.size}, batch {args.batch}, '
        f'float32 on {jax.devices()[0].device_kind}: {rate:.2f} images/s')


if __name__ == '__main__':
  main()
