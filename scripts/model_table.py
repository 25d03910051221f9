"""Parameters and GFLOPs of every model, beside the papers' figures.

  python scripts/model_table.py [--json] [--models B/16,L/16]

GFLOPs are XLA's cost analysis of one forward pass, as multiply-adds (the papers' convention),
for one image at 224 and 384 px; parameters with a 1000-class head.
"""

import argparse
import json

import jax
import jax.numpy as jnp

from vit_jax import model_stats, models


def vit_rows(variants):
  rows = []
  for variant in variants:
    model = models.build_vit(dict(variant=variant, num_classes=1000))
    image = lambda size: jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    family = variant.rpartition('+')[2].split('/')[0]
    paper = None if '+' in variant else model_stats.VIT_PAPER_PARAMS.get(family)
    rows.append(dict(model=f'ViT-{variant}', params=model_stats.parameter_count(model, image(224)),
                     gflops=model_stats.gflops(model, image(224)),
                     gflops_384=model_stats.gflops(model, image(384)),
                     paper_params=paper, paper_gflops=None, source='ViT paper Table 1'))
  return rows


def _format(rows):
  header = (f'{"model":<16}{"params":>14}{"paper":>10}{"diff":>9}'
            f'{"GFLOPs@224":>12}{"GFLOPs@384":>12}{"paper":>8}')
  lines = [header, '-' * len(header)]
  for r in rows:
    paper = f'{r["paper_params"] / 1e6:.0f}M' if r['paper_params'] else '-'
    diff = (f'{100 * (r["params"] / r["paper_params"] - 1):+.1f}%' if r['paper_params'] else '-')
    paper_gflops = f'{r["paper_gflops"]:.0f}' if r['paper_gflops'] else '-'
    lines.append(f'{r["model"]:<16}{r["params"]:>14,}{paper:>10}{diff:>9}'
                 f'{r["gflops"]:>12.1f}{r["gflops_384"]:>12.1f}{paper_gflops:>8}')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--json', action='store_true', help='print a JSON list instead of a table')
  parser.add_argument('--models', default=','.join(model_stats.VIT_VARIANTS),
                      help='comma-separated ViT variants (default: all)')
  args = parser.parse_args()
  rows = vit_rows(args.models.split(','))
  print(json.dumps(rows, indent=1) if args.json else _format(rows))


if __name__ == '__main__':
  main()
