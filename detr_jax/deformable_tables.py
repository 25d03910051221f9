"""Deformable DETR's results table (Zhu et al., ICLR 2021, arXiv 2010.04159, Table 1) as the
course seeds print it (seed 004, slide "Deformable DETR results"), as rows for
vit_jax/framework/reproduce.py; beside it the fundamentalvision/Deformable-DETR README's figures
of the five released models (the released files score these: the README says they come from a
port of the authors' internal code, so they differ from the paper's a little), the two single
scale models among them (the paper's table has no AP for them).

Rows of a released model evaluate its `.pth` (the README's Google Drive links; save each under
the name below) with configs/deformable_detr_coco.py:VARIANT, DETR's rows the DETR releases with
configs/detr_coco.py (as detr-table1): images resized to short side 800 (long side at most
1333), pycocotools bbox AP (detr_jax/coco_eval.py). The 50-epoch DETR-DC5 was not released: its
rows read a run of configs/detr_coco.py:dc5_r50,epochs=50 (that config drops the lr at 2/3 of
the run; the paper does not say where its run dropped it). Parameters are counted from the model
(trainable ones, as the original's n_parameters); GFLOPs are XLA's multiply-adds at two fixed
sizes that bracket the paper's per-image average (detr_jax/model_stats.py, as
scripts/model_table.py); training GPU hours and frames/s are the paper's V100 figures only.
"""

from detr_jax import model_stats as detr_stats
from detr_jax import paper_tables as detr_tables
from vit_jax.framework.reproduce import Computed, Row, Table, Training, Unavailable, Weights

PAPER = 'Deformable DETR arXiv 2010.04159 Table 1 (seed 004, slide "Deformable DETR results")'
README = 'fundamentalvision/Deformable-DETR README.md (Main Results)'
SOURCE = (f'{PAPER} and {README}, each row\'s table, row and column named beside it')
NOT_HERE = detr_tables.NOT_HERE
HOURS = ('the paper\'s training time on V100s (GPU hours): not a figure this codebase '
         'reproduces')
FPS = ('the paper\'s V100 frames/s: scripts/benchmark.py --task=deformable_detr (or --task=detr) '
       'times ours against HF\'s model on the same weights here')
NOT_DETR_DC5_PLUS = ('not reproducible here: DETR-DC5+ (DETR-DC5 with focal loss and 300 '
                     'queries) is not a model of this codebase (the paper\'s figure only)')
# The released models: configs/deformable_detr_coco.py variant -> (the README's model row, the
# file's name, its Google Drive link in the README).
DRIVE = 'https://drive.google.com/file/d/{}/view?usp=sharing'
RELEASED = {
    'single_scale': ('Deformable DETR (single scale)',
                     'r50_deformable_detr_single_scale-checkpoint.pth',
                     DRIVE.format('1WEjQ9_FgfI5sw5OZZ4ix-OKk-IJ_-SDU')),
    'single_scale_dc5': ('Deformable DETR (single scale, DC5)',
                         'r50_deformable_detr_single_scale_dc5-checkpoint.pth',
                         DRIVE.format('1m_TgMjzH7D44fbA-c_jiBZ-xf-odxGdk')),
    'deformable': ('Deformable DETR', 'r50_deformable_detr-checkpoint.pth',
                   DRIVE.format('1nDWZWHuRwtwGden77NLM9JoWe-YisJnA')),
    'box_refine': ('+ iterative bounding box refinement',
                   'r50_deformable_detr_plus_iterative_bbox_refinement-checkpoint.pth',
                   DRIVE.format('1JYKyRYzUH7uo9eVfDaVCiaIGZb5YTCuI')),
    'two_stage': ('++ two-stage Deformable DETR',
                  'r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage-'
                  'checkpoint.pth', DRIVE.format('15I03A7hNTpwuLNdfuEmW9_taZMNVssEp')),
}

# Paper Table 1 as the seed prints it: row -> (epochs, AP, AP50, AP75, APS, APM, APL, params,
# GFLOPs, training GPU hours, inference FPS).
COLUMNS = ('AP', 'AP50', 'AP75', 'APS', 'APM', 'APL', 'params', 'GFLOPs', 'GPU hours', 'FPS')
TABLE1 = {
    'Faster R-CNN + FPN': (109, 42.0, 62.1, 45.5, 26.6, 45.4, 53.4, 42e6, 180, 380, 26),
    'DETR': (500, 42.0, 62.4, 44.2, 20.5, 45.8, 61.1, 41e6, 86, 2000, 28),
    'DETR-DC5': (500, 43.3, 63.1, 45.9, 22.5, 47.3, 61.1, 41e6, 187, 7000, 12),
    'DETR-DC5 (50 epochs)': (50, 35.3, 55.7, 36.8, 15.2, 37.5, 53.6, 41e6, 187, 700, 12),
    'DETR-DC5+': (50, 36.2, 57.0, 37.4, 16.3, 39.2, 53.9, 41e6, 187, 700, 12),
    'Deformable DETR': (50, 43.8, 62.6, 47.7, 26.4, 47.1, 58.0, 40e6, 173, 325, 19),
    '+ iterative bounding box refinement': (50, 45.4, 64.7, 49.0, 26.8, 48.3, 61.7, 40e6, 173,
                                            325, 19),
    '++ two-stage Deformable DETR': (50, 46.2, 65.2, 50.0, 28.8, 49.2, 61.7, 40e6, 173, 340, 19),
}
# Table 1 row -> how its model is had: ('weights', config, file, url) for a release,
# ('training', config, workdir) for a run.
_DETR = {'DETR': 'r50', 'DETR-DC5': 'dc5_r50'}
SOURCES_OF = {
    **{row: ('weights', f'detr_coco.py:{arg}', detr_tables.MODELS[row][1],
             detr_tables.URL + detr_tables.MODELS[row][1]) for row, arg in _DETR.items()},
    'DETR-DC5 (50 epochs)': ('training', 'detr_coco.py:dc5_r50,epochs=50', 'coco_dc5_r50_50'),
    **{name: ('weights', f'deformable_detr_coco.py:{variant}', file, url)
       for variant, (name, file, url) in RELEASED.items()
       if variant in ('deformable', 'box_refine', 'two_stage')},
}
# The README's figures of the released models: variant -> AP, APS, APM, APL, params, GFLOPs.
README_COLUMNS = ('AP', 'APS', 'APM', 'APL', 'params', 'GFLOPs')
README_FIGURES = {
    'single_scale': (39.4, 20.6, 43.0, 55.5, 34e6, 78),
    'single_scale_dc5': (41.5, 24.1, 45.3, 56.0, 34e6, 128),
    'deformable': (44.5, 27.1, 47.6, 59.6, 40e6, 173),
    'box_refine': (46.2, 28.3, 49.2, 61.5, 41e6, 173),
    'two_stage': (46.9, 29.6, 50.1, 61.6, 41e6, 173),
}
# Paper column -> key of detr_jax/coco_eval.METRICS.
METRIC_OF = detr_tables.METRIC_OF
# The two sizes scripts/model_table.py counts at (the paper's figure lies between them).
GFLOPS_SIZES = detr_stats.SIZES
GFLOPS_PROTOCOL = ('; the paper\'s is an average over COCO val images at 800 px (at most '
                   '1333): ours at 800x1333 and 800x1067 bracket it')


_COUNTS = {}  # Model config (JSON) -> detr_stats.counts: rows of one model count it once.


def gflops_at(height: int, width: int):
  """A Computed count: multiply-adds (G) of the config's model on one height x width image
  (one of GFLOPS_SIZES), as scripts/model_table.py counts them."""
  def count(config) -> float:
    key = config.model.to_json_best_effort(sort_keys=True)
    if key not in _COUNTS:
      _COUNTS[key] = detr_stats.counts(detr_tables.detector(config))
    return _COUNTS[key][f'gflops_{height}x{width}']
  return count


_GFLOPS = {size: gflops_at(*size) for size in GFLOPS_SIZES}


def _computed_rows(label: str, column: str, paper: float, config: str, source: str):
  """The params row or the GFLOPs rows (one per size) of the model `config` builds."""
  if column == 'params':
    return [Row(f'{label} params (M)', paper / 1e6, Computed(detr_tables.trainable_millions),
                percent=False, config=config, source=source)]
  return [Row(f'{label} GFLOPs at {height}x{width}', paper, Computed(_GFLOPS[height, width]),
              percent=False, config=config, source=source + GFLOPS_PROTOCOL)
          for height, width in GFLOPS_SIZES]


def _table1_rows():
  rows = []
  for label, (epochs, *figures) in TABLE1.items():
    how = SOURCES_OF.get(label)
    for column, paper in zip(COLUMNS, figures):
      paper_row = label if 'epochs' in label else f'{label} ({epochs} epochs)'
      source = f'{PAPER}, row {paper_row}, column {column}'
      name = f'{label} {column}' + (' (M)' if column == 'params' else '')
      if how is None:
        reason = NOT_DETR_DC5_PLUS if label == 'DETR-DC5+' else NOT_HERE.format(label)
        rows.append(Row(name, paper / 1e6 if column == 'params' else paper,
                        Unavailable(reason), percent=False, source=source))
      elif column in ('params', 'GFLOPs'):
        rows += _computed_rows(label, column, paper, how[1], source)
      elif column == 'GPU hours':
        rows.append(Row(name, paper, Unavailable(HOURS), percent=False, source=source))
      elif column == 'FPS':
        rows.append(Row(name, paper, Unavailable(FPS), percent=False, source=source))
      elif how[0] == 'weights':
        _, config, file, url = how
        rows.append(Row(name, paper, Weights(file, url), METRIC_OF[column], config=config,
                        source=source))
      else:
        _, config, workdir = how
        rows.append(Row(name, paper, Training(workdir), METRIC_OF[column], config=config,
                        source=source))
  return rows


def _readme_rows():
  """The README's figures of the five released models, their files evaluated (rows of one
  file share one evaluation with its Table 1 rows)."""
  rows = []
  for variant, figures in README_FIGURES.items():
    model, file, url = RELEASED[variant]
    config = f'deformable_detr_coco.py:{variant}'
    for column, paper in zip(README_COLUMNS, figures):
      label = f'{model} (README)'
      source = f'{README}, row {model}, column {column}'
      if column in ('params', 'GFLOPs'):
        rows += _computed_rows(label, column, paper, config, source)
      else:
        rows.append(Row(f'{label} {column}', paper, Weights(file, url), METRIC_OF[column],
                        config=config, source=source))
  return rows


TABLES = {
    'deformable-detr': Table(
        'deformable-detr', 'Deformable DETR Table 1 (the seeds\' results table) and the README\'s '
        'released models: COCO val2017 box AP %, params in millions, GFLOPs',
        tuple(_table1_rows() + _readme_rows()), 'detr_jax.main', SOURCE),
}
