"""The Swin paper's ImageNet results (Liu et al., ICCV 2021, arXiv 2103.14030) as rows for
vit_jax/framework/reproduce.py, and its model sizes for scripts/model_table.py.

What was published: every model of the table as an official `.pth` (github.com/SwinTransformer/
storage releases), which swin_weights.load_swin converts and loads. Scoring them needs the
original's input scaling (ImageNet mean / std), which the classification input does not offer
yet, so those cells stay empty with that reason; the ImageNet-1k rows also read runs of
configs/swin_imagenet.py. ImageNet-22k is not a public TFDS dataset, so its rows have no run.
"""

from vit_jax.framework.reproduce import SPEED_METRIC, Row, Speed, Table, Training, Unavailable

SOURCE = ('Swin paper Table 1(a)/(b) as printed in the course seeds: 004 (first arXiv version: '
          'params, FLOPs, V100 throughput, top-1) and 001 (the final version\'s 22K figures, '
          'B-384 86.4 and L-384 87.3, where the first version printed 86.0 and 86.4); '
          'reference/swin.md §5')
RELEASES = 'https://github.com/SwinTransformer/storage/releases'
NOT_SCORED = (f'released weights ({RELEASES}) load via swin_weights.load_swin, but scoring them '
              'needs ImageNet mean/std inputs, which the classification input lacks')
NO_22K = 'not reproducible here: ImageNet-22k is not a public TFDS dataset'

# Model -> (its configs/swin_imagenet.py argument, whether that recipe runs here (ImageNet-1k)
# or needs ImageNet-22k, paper params (M), paper GFLOPs, paper V100 images/s, paper top-1 %,
# the original's flops() in GMACs with a 1000-class head (reference/swin.md §2, measured)).
TABLE1 = {
    'Swin-T': ('T', True, 29, 4.5, 755.2, 81.3, 4.494),
    'Swin-S': ('S', True, 50, 8.7, 436.9, 83.0, 8.747),
    'Swin-B': ('B', True, 88, 15.4, 278.1, 83.3, 15.438),
    'Swin-B 384': ('B,recipe=ft1k,size=384', True, 88, 47.0, 84.7, 84.2, 47.105),
    '22K Swin-B': ('B,recipe=ft22k', False, 88, 15.4, 278.1, 85.2, 15.438),
    '22K Swin-B 384': ('B,recipe=ft22k,size=384', False, 88, 47.0, 84.7, 86.4, 47.105),
    '22K Swin-L 384': ('L,recipe=ft22k,size=384', False, 197, 103.9, 42.1, 87.3, 103.952),
}
# model_table.py's rows: model variant (swin.decode_variant) -> Table 1 row.
MODEL_TABLE = {'T': 'Swin-T', 'S': 'Swin-S', 'B': 'Swin-B', 'B-384': 'Swin-B 384',
               'L-384': '22K Swin-L 384'}


def _workdir(arg: str) -> str:
  """'B,recipe=ft1k,size=384' -> 'swin_b_ft1k_384'."""
  return 'swin_' + '_'.join(part.rpartition('=')[2].lower() for part in arg.split(','))


def _rows():
  rows = []
  for name, (arg, runs_here, _, _, images_per_second, top1, _) in TABLE1.items():
    config = f'swin_imagenet.py:{arg}'
    how = Training(_workdir(arg)) if runs_here else Unavailable(f'{NO_22K}; {NOT_SCORED}')
    rows.append(Row(f'{name} top-1', top1, how, config=config))
    rows.append(Row(f'{name} images/s (paper: V100)', images_per_second, Speed(batch=8),
                    SPEED_METRIC, config=config, percent=False))
  return tuple(rows)


TABLES = {
    'swin-table1': Table('swin-table1', 'Swin Table 1: ImageNet top-1 % and throughput',
                         _rows(), 'vit_jax.main', SOURCE),
}
