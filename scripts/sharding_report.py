"""Bytes per device of params and Adam state under DP, FSDP and FSDP + TP, from shapes only.

  python scripts/sharding_report.py [--models L/16,H/14,DETR-R50] [--devices 8,64,256]

Models: ViT variants (L/16, R50+B/16, ...) and DETR-R50 / DETR-R101.

Layouts come from the same logical axis names and rules the train loop uses; no device memory is
touched, so meshes of any size can be asked about.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax import models as detr_models
from vit_jax.classification import vit
from vit_jax.framework import sharding

TENSOR_PARALLEL = 4  # The 'model' axis of the FSDP + TP meshes.
STRATEGIES = {
    'data parallel': lambda n: ({'data': n, 'model': 1}, (('batch', 'data'),)),
    'FSDP': lambda n: ({'data': n, 'model': 1},
                      (('batch', 'data'), ('embed', 'data'), ('conv_out', 'data'))),
    'FSDP + TP': lambda n: ({'data': n // TENSOR_PARALLEL, 'model': TENSOR_PARALLEL},
                           (('batch', 'data'), ('embed', 'data'), ('conv_out', 'data'),
                            ('mlp', 'model'), ('heads', 'model'), ('classes', 'model'))),
}
DETR = 'DETR-R'


def abstract_variables(name: str, image_size: int = 224):
  """(Boxed) variable shapes of a ViT variant ('L/16') or of DETR ('DETR-R50')."""
  rng = jax.random.PRNGKey(0)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  if name.startswith(DETR):
    model = detr_models.build_detr(dict(num_classes=91, backbone_depth=int(name[len(DETR):])))
    return jax.eval_shape(model.init, rng, images, jax.ShapeDtypeStruct(images.shape[:3], bool))
  return jax.eval_shape(vit.build_vit(dict(variant=name, num_classes=1000)).init, rng, images)


def report(name: str, devices: int, strategy: str) -> dict:
  """Per-device MiB of params and of Adam's two moments for one model, mesh size and strategy."""
  boxed = abstract_variables(name)
  params = nn.meta.unbox(boxed)['params']
  axis_sizes, rules = STRATEGIES[strategy](devices)
  specs = nn.logical_to_mesh(nn.get_partition_spec(boxed)['params'], rules)
  param_bytes = sharding.bytes_per_device(params, specs, axis_sizes)
  mib = 2**20
  return dict(model=name if name.startswith(DETR) else f'ViT-{name}', strategy=strategy,
              devices=devices, params_mib=param_bytes / mib, adam_mib=2 * param_bytes / mib,
              total_mib=3 * param_bytes / mib)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='L/16,H/14,DETR-R50')
  parser.add_argument('--devices', default='8,64,256')
  args = parser.parse_args()
  print(f'{"model":<10}{"strategy":<15}{"devices":>8}{"params MiB":>12}{"Adam MiB":>11}'
        f'{"total MiB":>11}   (float32, per device)')
  for name in args.models.split(','):
    for strategy in STRATEGIES:
      for devices in map(int, args.devices.split(',')):
        r = report(name, devices, strategy)
        print(f'{r["model"]:<10}{strategy:<15}{devices:>8}{r["params_mib"]:>12.1f}'
              f'{r["adam_mib"]:>11.1f}{r["total_mib"]:>11.1f}')


if __name__ == '__main__':
  main()
