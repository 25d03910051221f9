"""Reproduce a paper's table: the paper's figure, ours and the difference, row by row.

  python scripts/reproduce.py vit-table2 --weights_dir=W --data_dir=~/tensorflow_datasets
  python scripts/reproduce.py segmenter-table6 --weights_dir=W --data_dir=ADEChallengeData2016
  python scripts/reproduce.py detr-table1 --weights_dir=W --data_dir=~/tensorflow_datasets
  python scripts/reproduce.py deformable-detr --weights_dir=W --data_dir=~/tensorflow_datasets
  python scripts/reproduce.py vit-table5 --workdirs=RUNS --out=tables/

Rows with released weights are evaluated when the weights are under --weights_dir (the
published file, or its .npz conversion) and the row's data is present (--data_dir becomes
config.input.data_dir); rows that need training read RUNS/<workdir>/final_metrics.json; images/s
rows are timed on this device with --speed. Every row that cannot be filled says why in one line.
Writes OUT/<table>.json and OUT/<table>.md. `--list` prints the tables.
"""

import argparse
import os
import sys

from detr_jax import deformable_tables
from detr_jax import paper_tables as detr_tables
from segmenter_jax import paper_tables as segmenter_tables
from vit_jax.classification import deit_tables
from vit_jax.classification import paper_tables as vit_tables
from vit_jax.classification import swin_tables
from vit_jax.framework import reproduce
from vit_jax.framework.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLES = {**vit_tables.TABLES, **deit_tables.TABLES, **swin_tables.TABLES,
          **segmenter_tables.TABLES, **detr_tables.TABLES, **deformable_tables.TABLES}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('table', nargs='?', help=f'one of {", ".join(TABLES)}')
  parser.add_argument('--list', action='store_true', help='list the tables and exit')
  parser.add_argument('--weights_dir', help='folder holding the released weights')
  parser.add_argument('--data_dir', help='config.input.data_dir of every row (TFDS or folder)')
  parser.add_argument('--workdirs', help='folder holding the training runs of the rows')
  parser.add_argument('--out', default='reproduce', help='where the JSON and Markdown go')
  parser.add_argument('--speed', action='store_true', help='time the images/s rows here')
  parser.add_argument('--configs_dir', default=os.path.join(ROOT, 'configs'))
  args = parser.parse_args(argv)
  if args.list:
    for name, table in TABLES.items():
      print(f'{name:18} {table.title}')
    return 0
  if args.table not in TABLES:
    print(f'error: unknown table {args.table!r}: use one of {", ".join(TABLES)}', file=sys.stderr)
    return 2
  table = TABLES[args.table]
  sources = reproduce.Sources(
      configs_dir=args.configs_dir, weights_dir=args.weights_dir,
      data_dir=os.path.expanduser(args.data_dir) if args.data_dir else None,
      workdirs=args.workdirs, speed=args.speed)
  try:
    results = reproduce.fill(table, sources)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(reproduce.as_text(table, results))
  json_path, markdown_path = reproduce.write(table, results, args.out)
  print(f'\nWrote {json_path} and {markdown_path}.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
