"""What padding costs DETR on COCO's image sizes: padded pixels per image with the fixed
1333x1333 canvas, per-batch max padding and the recipe's padding buckets, for training
(multi-scale 480..800 step 32, max 1333) and eval (800, max 1333), with the savings and the
number of batch shapes (compiles).

  python scripts/detr_padding_report.py [--annotations=instances_train2017.json]
      [--config=detr_coco.py:r50] [--images=20000] [--batch_size=64] [--window=N]
      [--processes=P]

Without --annotations the sizes are drawn from an assumed COCO mixture
(detr_jax/padding_report.py: ASSUMED_COCO_SIZES), not from COCO itself.
"""

import argparse
import os
import sys

from detr_jax import detection_input, padding_report
from vit_jax.framework import reproduce
from vit_jax.framework.errors import UserError

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--annotations', help='a COCO instances json: its images\' sizes')
  parser.add_argument('--config', default='detr_coco.py:r50',
                      help='the recipe whose sizes and buckets are reported (in configs/)')
  parser.add_argument('--images', type=int, default=20_000,
                      help='images drawn from the assumed mixture without --annotations')
  parser.add_argument('--batch_size', type=int, help='default: the config\'s')
  parser.add_argument('--window', type=int, help='default: the config\'s bucket_window')
  parser.add_argument('--processes', type=int, default=1,
                      help='hosts sharing each training batch (each regroups its own rows)')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  try:
    config = reproduce.load_config(CONFIGS, args.config).input
    buckets = detection_input.pad_buckets(config)
    if not buckets:
      raise UserError(f'{args.config} has no input.pad_buckets to report on')
    if args.annotations:
      sizes, where = padding_report.annotation_sizes(args.annotations), args.annotations
    else:
      sizes = padding_report.sample_sizes(args.images, args.seed)
      where = 'an assumed COCO mixture (not measured): ' + ', '.join(
          f'{h}x{w} {p:.0%}' for (h, w), p in padding_report.ASSUMED_COCO_SIZES)
    setting = lambda key: detection_input.setting(config, key)
    tables = padding_report.report(
        sizes, buckets, train_scales=setting('train_scales'), eval_scale=setting('eval_scale'),
        max_size=setting('max_size'), batch_size=args.batch_size or config.batch_size,
        window=args.window or setting('bucket_window'), fixed=(1333, 1333), seed=args.seed,
        processes=args.processes)
  except UserError as e:
    sys.exit(f'error: {e}')
  print(f'{len(sizes)} images (h x w) from {where}')
  print(f'buckets ({args.config}): ' + ', '.join(f'{h}x{w}' for h, w in buckets))
  for name, table in tables.items():
    print(padding_report.format_table(name, table))


if __name__ == '__main__':
  main()
