"""Parameters and GFLOPs of every model, beside the papers' figures.

  python scripts/model_table.py [--json] [--models B/16,L/16] [--deit DeiT-B,DeiT-B-distilled]
                                [--segmenter Seg-B-Mask/16] [--detr DETR-R50]
                                [--detr_ablations 'DETR-R50 enc_layers=0']
                                [--deformable_detr 'Deformable DETR']

GFLOPs are XLA's cost analysis of one forward pass, as multiply-adds (the papers' convention),
for one image at 224 and 384 px; parameters with a 1000-class head. DeiT rows: the README's
eight models at their own resolution, beside the README's rounded counts and top-1. Segmenter rows (ADE20K, 150
classes, mask transformer): multiply-adds at 512 x 512 with and without the final bilinear
upsampling, parameters without and with the official checkpoints' unused ImageNet head, beside
the README's parameter counts (no GFLOPs are published). DETR rows (COCO,
91 classes): trainable parameters as the paper counts them, multiply-adds at 800 x 1333 and at a
4:3 image of 800 px, beside the paper's Table 1; then the paper's ablations (Tables 2-4), each
built from its configs/detr_coco.py variant. Deformable DETR rows: the same counts for its five
released models (configs/deformable_detr_coco.py), beside its paper's Table 1 (40M, 173G).
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp

from detr_jax import model_stats as detr_stats
from detr_jax import deformable_models
from detr_jax import models as detr_models
from detr_jax import panoptic_model
from segmenter_jax import model_stats as segmenter_stats
from vit_jax.classification import swin, swin_tables
from vit_jax.classification import deit, vit
from vit_jax.framework import config_args, model_stats

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def vit_rows(variants):
  rows = []
  for variant in variants:
    model = vit.build_vit(dict(variant=variant, num_classes=1000))
    image = lambda size: jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    family = variant.rpartition('+')[2].split('/')[0]
    paper = None if '+' in variant else model_stats.VIT_PAPER_PARAMS.get(family)
    variables = model_stats.variable_shapes(model, image(224))  # Traced once for both.
    rows.append(dict(model=f'ViT-{variant}',
                     params=model_stats.parameter_count(model, variables=variables),
                     gflops=model_stats.gflops(model, image(224), variables=variables),
                     gflops_384=model_stats.gflops(model, image(384)),
                     paper_params=paper, paper_gflops=None, source='ViT paper Table 1'))
  return rows


def deit_rows(names):
  rows = []
  for name in names:
    release = deit.RELEASES.get(name)
    if release is None:
      raise SystemExit(f'error: unknown DeiT rows {name!r}: use {sorted(deit.RELEASES)}')
    model = deit.build_deit(release.model_config())
    image = jax.ShapeDtypeStruct((1, release.image_size, release.image_size, 3), jnp.float32)
    variables = model_stats.variable_shapes(model, image)
    rows.append(dict(model=name, timm_name=release.timm_name, image_size=release.image_size,
                     params=model_stats.parameter_count(model, variables=variables),
                     gflops=model_stats.gflops(model, image, variables=variables),
                     paper_params=release.readme_params, paper_top1=release.readme_top1,
                     source='DeiT README'))
  return rows


def _format_deit(rows):
  header = (f'{"model":<22}{"timm":<34}{"size":>5}{"params":>13}{"README":>8}'
            f'{"GFLOPs":>8}{"top-1":>7}')
  lines = [header, '-' * len(header)]
  for r in rows:
    lines.append(f'{r["model"]:<22}{r["timm_name"]:<34}{r["image_size"]:>5}{r["params"]:>13,}'
                 f'{r["paper_params"] / 1e6:>7.0f}M{r["gflops"]:>8.1f}{r["paper_top1"]:>7.1f}')
  return '\n'.join(lines + [f'({rows[0]["source"]})'] if rows else [])


def swin_rows(variants):
  """Swin rows at their own resolution, beside the paper's rounded figures and the original
  code's flops() (reference/swin.md §2)."""
  rows = []
  for variant in variants:
    if variant not in swin_tables.MODEL_TABLE:
      raise SystemExit(f'error: unknown Swin rows {variant!r}: use {sorted(swin_tables.MODEL_TABLE)}')
    name = swin_tables.MODEL_TABLE[variant]
    _, _, paper_params, paper_gflops, _, _, original_gflops = swin_tables.TABLE1[name]
    size = 384 if variant.endswith('-384') else 224
    model = swin.build_swin(dict(variant=variant, num_classes=1000))
    image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = model_stats.variable_shapes(model, image)
    rows.append(dict(model=f'Swin-{variant}', image_size=size,
                     params=model_stats.parameter_count(model, variables=variables),
                     gflops=model_stats.gflops(model, image, variables=variables),
                     paper_params=paper_params * 1e6,
                     paper_gflops=paper_gflops, original_gflops=original_gflops,
                     source=f'{name}: {swin_tables.SOURCE}'))
  return rows


def _format_swin(rows):
  header = (f'{"model":<12}{"size":>5}{"params":>14}{"paper":>7}{"GFLOPs":>8}{"paper":>7}'
            f'{"flops()":>9}{"diff":>7}')
  lines = [header, '-' * len(header)]
  for r in rows:
    diff = 100 * (r['gflops'] / r['original_gflops'] - 1)
    lines.append(f'{r["model"]:<12}{r["image_size"]:>5}{r["params"]:>14,}'
                 f'{r["paper_params"] / 1e6:>6.0f}M{r["gflops"]:>8.2f}{r["paper_gflops"]:>7.1f}'
                 f'{r["original_gflops"]:>9.3f}{diff:>+6.1f}%')
  note = ('(GFLOPs: XLA multiply-adds; flops(): the original code\'s count, which leaves out '
          'softmax, GELU and the adds; paper: Swin Table 1)')
  return '\n'.join(lines + [note]) if rows else ''


def _entries(table, names, what):
  """The entries of `table` named `names` (their 'model'), in that order."""
  by_name = {entry['model']: entry for entry in table}
  unknown = [n for n in names if n not in by_name]
  if unknown:
    raise SystemExit(f'error: unknown {what} rows {unknown}: use {sorted(by_name)}')
  return [by_name[name] for name in names]


def _model_config(config_file, arg):
  """configs/<config_file>'s get_config(arg).model."""
  module = config_args.import_beside(os.path.join(CONFIGS, config_file), config_file[:-3])
  return module.get_config(arg).model


def segmenter_rows(names):
  return [segmenter_stats.table_row(e) for e in _entries(segmenter_stats.TABLE, names,
                                                          'Segmenter')]


def detr_rows(names, table=detr_stats.TABLE, counted=None):
  """Rows of `table` named `names`, each model built from its configs/detr_coco.py variant;
  rows with the same model (the loss ablations) are counted once, and so are models already in
  `counted` (repr of the model: its counts), which this fills."""
  rows, counted = [], {} if counted is None else counted
  for entry in _entries(table, names, 'DETR'):
    model = detr_models.build_detr(_model_config('detr_coco.py', entry['config']))
    if repr(model) not in counted:
      counted[repr(model)] = detr_stats.counts(model)
    rows.append(detr_stats.table_row(entry, counted[repr(model)]))
  return rows


def deformable_rows(names):
  """Rows of Deformable DETR's released models named `names`, each built from its
  configs/deformable_detr_coco.py variant."""
  return [detr_stats.table_row(entry, detr_stats.counts(deformable_models.build_deformable_detr(
      _model_config('deformable_detr_coco.py', entry['config']))), 'deformable_detr_coco.py',
      detr_stats.DEFORMABLE_SOURCE)
          for entry in _entries(detr_stats.DEFORMABLE, names, 'Deformable DETR')]


def panoptic_rows(names):
  """Rows of the panoptic models named `names`, each built from configs/detr_panoptic.py."""
  return [detr_stats.panoptic_row(entry, panoptic_model.build_detr_panoptic(
      _model_config('detr_panoptic.py', entry['config'])))
          for entry in _entries(detr_stats.PANOPTIC, names, 'DETR panoptic')]


def _format_panoptic(rows):
  width = max([16] + [len(r['model']) + 2 for r in rows])
  header = (f'{"model":<{width}}{"params":>14}{"mask head":>12}{"GFLOPs@800x1333":>17}'
            f'{"@800x1067":>11}{"PQ":>7}{"mask AP":>9}{"box AP":>8}')
  lines = [header, '-' * len(header)]
  for r in rows:
    lines.append(f'{r["model"]:<{width}}{r["params"]:>14,}{r["mask_head_params"]:>12,}'
                 f'{r["gflops_800x1333"]:>17.1f}{r["gflops_800x1067"]:>11.1f}'
                 f'{r["paper_pq"]:>7.1f}{r["paper_mask_ap"]:>9.1f}{r["readme_box_ap"]:>8.1f}')
  return '\n'.join(lines + [f'({rows[0]["source"]})'] if rows else [])


def _format_detr(rows):
  if not rows:
    return ''
  width = max([16] + [len(r['model']) + 2 for r in rows])
  header = (f'{"model":<{width}}{"params":>14}{"paper":>8}{"diff":>8}{"GFLOPs@800x1333":>17}'
            f'{"@800x1067":>11}{"paper":>8}{"AP":>7}')
  lines = [header, '-' * len(header)]
  for r in rows:
    paper, ap = r['paper_params'], r['paper_ap']
    paper_text = f'{paper / 1e6:.1f}M' if paper else '-'
    diff = f'{100 * (r["params"] / paper - 1):+.1f}%' if paper else '-'
    lines.append(f'{r["model"]:<{width}}{r["params"]:>14,}{paper_text:>8}{diff:>8}'
                 f'{r["gflops_800x1333"]:>17.1f}{r["gflops_800x1067"]:>11.1f}'
                 f'{r["paper_gflops"] or "-":>8}{f"{ap:.1f}" if ap else "-":>7}')
  sources = dict.fromkeys(r['source'] for r in rows)  # In order, once each.
  notes = [f'({source})' for source in sources] + [f'(GFLOPs: {rows[0]["gflops_note"]})']
  return '\n'.join(lines + notes)


def _format_segmenter(rows):
  header = (f'{"model":<16}{"params":>14}{"+ head":>14}{"paper":>8}{"diff":>8}'
            f'{"GMACs@512":>11}{"w/o upsample":>14}{"as FLOPs":>10}')
  lines = [header, '-' * len(header)]
  for r in rows:
    diff = 100 * (r['params_with_unused_head'] / r['paper_params'] - 1)
    lines.append(f'{r["model"]:<16}{r["params"]:>14,}{r["params_with_unused_head"]:>14,}'
                 f'{r["paper_params"] / 1e6:>7.0f}M{diff:>+7.1f}%{r["gmacs_512"]:>11.1f}'
                 f'{r["gmacs_512_before_upsampling"]:>14.1f}'
                 f'{2 * r["gmacs_512_before_upsampling"]:>10.1f}')
  return '\n'.join(lines + [f'({rows[0]["source"]})'] if rows else [])


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
                      help='comma-separated ViT variants (default: all; empty: none)')
  parser.add_argument('--deit', default=','.join(deit.RELEASES),
                      help='comma-separated DeiT rows (default: all; empty: none)')
  parser.add_argument('--segmenter', default=','.join(e['model'] for e in segmenter_stats.TABLE),
                      help='comma-separated Segmenter rows (default: all; empty: none)')
  parser.add_argument('--detr', default=','.join(e['model'] for e in detr_stats.TABLE),
                      help='comma-separated DETR rows (default: all; empty: none)')
  parser.add_argument('--detr_ablations',
                      default=';'.join(e['model'] for e in detr_stats.ABLATIONS),
                      help='semicolon-separated DETR ablation rows (default: all; empty: none)')
  parser.add_argument('--deformable_detr',
                      default=','.join(e['model'] for e in detr_stats.DEFORMABLE),
                      help='comma-separated Deformable DETR rows (default: all; empty: none)')
  parser.add_argument('--swin', default=','.join(swin_tables.MODEL_TABLE),
                      help='comma-separated Swin variants (default: all; empty: none)')
  parser.add_argument('--detr_panoptic', default=','.join(e['model'] for e in detr_stats.PANOPTIC),
                      help='comma-separated DETR panoptic rows (default: all; empty: none)')
  args = parser.parse_args()
  rows = vit_rows([m for m in args.models.split(',') if m])
  deit_table = deit_rows([m for m in args.deit.split(',') if m])
  seg_rows = segmenter_rows([m for m in args.segmenter.split(',') if m])
  counted = {}  # DETR-R50 is also the ablations' baseline.
  detr_table = detr_rows([m for m in args.detr.split(',') if m], counted=counted)
  ablations = detr_rows([m for m in args.detr_ablations.split(';') if m], detr_stats.ABLATIONS,
                        counted)
  panoptic = panoptic_rows([m for m in args.detr_panoptic.split(',') if m])
  deformable = deformable_rows([m for m in args.deformable_detr.split(',') if m])
  swin_table = swin_rows([m for m in args.swin.split(',') if m])
  if args.json:
    print(json.dumps(rows + deit_table + seg_rows + detr_table + ablations + panoptic + deformable
                     + swin_table, indent=1))
  else:
    print('\n\n'.join(table for table in (_format(rows) if rows else '',
                                           _format_deit(deit_table),
                                           _format_segmenter(seg_rows),
                                           _format_detr(detr_table),
                                           _format_detr(ablations),
                                           _format_panoptic(panoptic),
                                           _format_detr(deformable),
                                           _format_swin(swin_table)) if table))


if __name__ == '__main__':
  main()
