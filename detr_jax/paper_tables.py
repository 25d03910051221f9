"""The DETR paper's tables (Carion et al., ECCV 2020, arXiv 2005.12872v3) as rows for
vit_jax/framework/reproduce.py: Table 1 (COCO val2017 box AP of the released models beside
Faster R-CNN), Tables 2-4 (the ablations: encoder size, positional encodings, losses) and
Table 5 (panoptic quality and mask AP of the released panoptic models).

Where the figures were read (`Row.source` names table, row and column): arXiv 2005.12872v3 and
the facebookresearch/detr README (model zoo). The README repeats Table 1's AP and Table 5's PQ
and AP ("segm AP"); its box AP of the panoptic models (38.8 / 40.2 / 40.1) is in no paper
table and is kept as the README's.

Table 1 rows evaluate the released weights (dl.fbaipublicfiles.com/detr) with
configs/detr_coco.py: images resized to short side 800 (long side at most 1333), all 100
queries kept, pycocotools bbox AP (detr_jax/coco_eval.py). Table 5 rows evaluate the released
panoptic models with configs/detr_panoptic.py (stage=masks): the original's post-process and
panopticapi's PQ (detr_jax/panoptic_quality.py) and mask AP on the things classes
(detr_jax/mask_ap.py). The ablation rows (300 epochs) read training runs. Parameters are
counted from the model (trainable ones, as the paper); FPS is a V100 figure of the paper only.
"""

from detr_jax import detection, model_stats
from vit_jax.framework.reproduce import Computed, Row, Table, Training, Unavailable, Weights

PAPER = 'DETR arXiv 2005.12872v3'
README = 'facebookresearch/detr README.md'
SOURCE = (f'{PAPER} Tables 1-5 and {README} (model zoo), each row\'s table, row and column '
          'named beside it')
URL = 'https://dl.fbaipublicfiles.com/detr/'
NOT_HERE = 'not reproducible here: {} is not a model of this codebase (the paper\'s figure only)'
FPS_ONLY = ('the paper\'s V100 frames/s (torchscript); images_per_second times single-window '
            'models, not DETR\'s padded batches: scripts/benchmark.py times DETR here')
# Model -> (configs/detr_coco.py backbone, released file).
MODELS = {'DETR': ('r50', 'detr-r50-e632da11.pth'),
          'DETR-DC5': ('dc5_r50', 'detr-r50-dc5-f0fb7ef5.pth'),
          'DETR-R101': ('r101', 'detr-r101-2c7b67e5.pth'),
          'DETR-DC5-R101': ('dc5_r101', 'detr-r101-dc5-a2e86def.pth')}
# Table 1: model -> GFLOPS, FPS, #params, AP, AP50, AP75, AP_S, AP_M, AP_L.
TABLE1_COLUMNS = ('GFLOPS', 'FPS', '#params', 'AP', 'AP50', 'AP75', 'APS', 'APM', 'APL')
TABLE1 = {'Faster RCNN-DC5': (320, 16, 166e6, 39.0, 60.5, 42.3, 21.4, 43.5, 52.5),
          'Faster RCNN-FPN': (180, 26, 42e6, 40.2, 61.0, 43.8, 24.2, 43.5, 52.0),
          'Faster RCNN-R101-FPN': (246, 20, 60e6, 42.0, 62.5, 45.9, 25.2, 45.6, 54.6),
          'Faster RCNN-DC5+': (320, 16, 166e6, 41.1, 61.4, 44.3, 22.9, 45.9, 55.0),
          'Faster RCNN-FPN+': (180, 26, 42e6, 42.0, 62.1, 45.5, 26.6, 45.4, 53.4),
          'Faster RCNN-R101-FPN+': (246, 20, 60e6, 44.0, 63.9, 47.8, 27.2, 48.1, 56.0),
          'DETR': (86, 28, 41e6, 42.0, 62.4, 44.2, 20.5, 45.8, 61.1),
          'DETR-DC5': (187, 12, 41e6, 43.3, 63.1, 45.9, 22.5, 47.3, 61.1),
          'DETR-R101': (152, 20, 60e6, 43.5, 63.8, 46.4, 21.9, 48.0, 61.8),
          'DETR-DC5-R101': (253, 10, 60e6, 44.9, 64.7, 47.7, 23.7, 49.5, 62.3)}
# Paper column -> key of detr_jax/coco_eval.METRICS.
METRIC_OF = {'AP': 'AP', 'AP50': 'AP50', 'AP75': 'AP75', 'APS': 'AP_small',
             'APM': 'AP_medium', 'APL': 'AP_large'}
METRICS = tuple(METRIC_OF.values())
GFLOPS_NOTE = ('the paper\'s average over the first 100 COCO val2017 images (Detectron2 '
               'flop_count_operators): scripts/model_table.py counts ours at fixed sizes')


def _source(table, row: str, column: str) -> str:
  return f'{PAPER} Table {table}, row {row}, column {column}'


def detector(config):
  """The DETR or Deformable DETR `config` builds (config.model.name)."""
  return detection.DetectionTask.MODELS[config.model.name](config.model)


def trainable_millions(config) -> float:
  """Trainable parameters (as the papers count them: all but the frozen stem and layer1) of
  the detector `config` builds, in millions."""
  return model_stats.trainable_count(detector(config)) / 1e6


def _params_row(name: str, paper: float, arg: str, source: str) -> Row:
  return Row(f'{name} #params (M)', paper / 1e6, Computed(trainable_millions), percent=False,
             config=f'detr_coco.py:{arg}', source=source)


def _table1_rows():
  rows = []
  for model, figures in TABLE1.items():
    for column, paper in zip(TABLE1_COLUMNS, figures):
      source = _source(1, model, 'GFLOPS/FPS' if column in ('GFLOPS', 'FPS') else column)
      name = f'{model} {column}'
      if model not in MODELS:
        rows.append(Row(name, paper, Unavailable(NOT_HERE.format(model)),
                        percent=False, source=source))
        continue
      backbone, file = MODELS[model]
      if column == 'GFLOPS':
        rows.append(Row(name, paper, Unavailable(GFLOPS_NOTE), percent=False, source=source))
      elif column == 'FPS':
        rows.append(Row(name, paper, Unavailable(FPS_ONLY), percent=False, source=source))
      elif column == '#params':
        rows.append(_params_row(model, paper, backbone, source))
      else:
        rows.append(Row(name, paper, Weights(file, URL + file), METRIC_OF[column],
                        config=f'detr_coco.py:{backbone}', source=source))
  return tuple(rows)


_ABLATION = 'r50,epochs=300'
# Table 2 (encoder size): #layers -> (GFLOPS, FPS, #params, AP, AP50, APS, APM, APL).
TABLE2_COLUMNS = ('GFLOPS', 'FPS', '#params', 'AP', 'AP50', 'APS', 'APM', 'APL')
TABLE2 = {0: (76, 28, 33.4e6, 36.7, 57.4, 16.8, 39.6, 54.2),
          3: (81, 25, 37.4e6, 40.1, 60.6, 18.5, 43.8, 58.6),
          6: (86, 23, 41.3e6, 40.6, 61.6, 19.9, 44.3, 60.2),
          12: (95, 20, 49.2e6, 41.6, 62.1, 19.8, 44.9, 61.9)}
# Table 3 (positional encodings): configs/detr_coco.py arguments -> (paper's row, AP, AP50).
TABLE3 = {'spatial_pos=none,output_pos=learned_input': ('none / none / learned at input', 32.8,
                                                        55.2),
          'spatial_pos=sine_input,output_pos=learned_input': (
              'sine at input / sine at input / learned at input', 39.2, 60.0),
          'spatial_pos=learned_attention': (
              'learned at attn. / learned at attn. / learned at attn.', 39.6, 60.7),
          'spatial_pos=sine_attention_decoder': ('none / sine at attn. / learned at attn.', 39.3,
                                                 60.3),
          '': ('sine at attn. / sine at attn. / learned at attn. (baseline)', 40.6, 61.6)}
# Table 4 (loss components): argument -> (paper's row, AP, AP50, APS, APM, APL).
TABLE4 = {'loss=class_l1': ('class + l1', 35.8, 57.3, 13.7, 39.8, 57.9),
          'loss=class_giou': ('class + GIoU', 39.9, 61.6, 19.9, 43.2, 57.9),
          '': ('class + l1 + GIoU (baseline)', 40.6, 61.6, 19.9, 44.3, 60.2)}


def _run_rows(table: int, label: str, arg: str, paper_row: str, columns, figures):
  """Rows of one ablation run (configs/detr_coco.py:r50,epochs=300[,arg]) for `columns`."""
  config = f'{_ABLATION},{arg}' if arg else _ABLATION
  workdir = 'coco_r50_300' + ''.join(f'_{part.split("=")[1]}' for part in arg.split(',') if part)
  rows = []
  for column, paper in zip(columns, figures):
    name, source = f'{label} {column}', _source(table, paper_row, column)
    if column == 'GFLOPS':
      rows.append(Row(name, paper, Unavailable(GFLOPS_NOTE), percent=False, source=source))
    elif column == 'FPS':
      rows.append(Row(name, paper, Unavailable(FPS_ONLY), percent=False, source=source))
    elif column == '#params':
      rows.append(_params_row(label, paper, config, source))
    else:
      rows.append(Row(name, paper, Training(workdir), METRIC_OF[column],
                      config=f'detr_coco.py:{config}', source=source))
  return rows


def _ablation_rows(table: int):
  rows = []
  if table == 2:
    for layers, figures in TABLE2.items():
      arg = f'enc_layers={layers}' if layers != 6 else ''
      rows += _run_rows(2, f'enc_layers={layers}', arg, str(layers), TABLE2_COLUMNS, figures)
  else:
    ablation = TABLE3 if table == 3 else TABLE4
    columns = ('AP', 'AP50') if table == 3 else ('AP', 'AP50', 'APS', 'APM', 'APL')
    for arg, (paper_row, *figures) in ablation.items():
      rows += _run_rows(table, arg or 'baseline', arg, paper_row, columns, figures)
  return tuple(rows)


# Table 5: model -> PQ, SQ, RQ, PQ^th, SQ^th, RQ^th, PQ^st, SQ^st, RQ^st, AP (mask AP, things).
TABLE5_COLUMNS = ('PQ', 'SQ', 'RQ', 'PQth', 'SQth', 'RQth', 'PQst', 'SQst', 'RQst', 'AP')
PANOPTIC_METRIC_OF = {'PQ': 'PQ', 'SQ': 'SQ', 'RQ': 'RQ', 'PQth': 'PQ_th', 'SQth': 'SQ_th',
                      'RQth': 'RQ_th', 'PQst': 'PQ_st', 'SQst': 'SQ_st', 'RQst': 'RQ_st',
                      'AP': 'mask_AP'}
TABLE5 = {
    'PanopticFPN++ R50': (42.4, 79.3, 51.6, 49.2, 82.4, 58.8, 32.3, 74.8, 40.6, 37.7),
    'UPSnet R50': (42.5, 78.0, 52.5, 48.6, 79.4, 59.6, 33.4, 75.9, 41.7, 34.3),
    'UPSnet-M R50': (43.0, 79.1, 52.8, 48.9, 79.7, 59.7, 34.1, 78.2, 42.3, 34.3),
    'PanopticFPN++ R101': (44.1, 79.5, 53.3, 51.0, 83.2, 60.6, 33.6, 74.0, 42.1, 39.7),
    'DETR R50': (43.4, 79.3, 53.8, 48.2, 79.8, 59.5, 36.3, 78.5, 45.3, 31.1),
    'DETR-DC5 R50': (44.6, 79.8, 55.0, 49.4, 80.5, 60.6, 37.3, 78.7, 46.5, 31.9),
    'DETR-R101 R101': (45.1, 79.9, 55.5, 50.5, 80.9, 61.7, 37.0, 78.5, 46.0, 33.0),
}
# Released panoptic models: Table 5 row -> (configs/detr_panoptic.py backbone, file, the
# README's box AP of the same model).
PANOPTIC = {'DETR R50': ('r50', 'detr-r50-panoptic-00ce5173.pth', 38.8),
            'DETR-DC5 R50': ('dc5_r50', 'detr-r50-dc5-panoptic-da08f1b1.pth', 40.2),
            'DETR-R101 R101': ('r101', 'detr-r101-panoptic-40021d53.pth', 40.1)}
BOX_AP_OF_PANOPTIC = ('the README\'s box AP of the panoptic model is scored on COCO instances '
                      'with its 250-class head; the panoptic eval here scores PQ and mask AP')


def _panoptic_rows():
  rows = []
  for model, figures in TABLE5.items():
    for column, paper in zip(TABLE5_COLUMNS, figures):
      name, source = f'{model} {column}', _source(5, model, column)
      if column == 'AP':
        name, source = f'{model} mask AP', source + ' (mask AP, things)'
      if model in PANOPTIC and column in ('PQ', 'AP'):  # The README repeats these two.
        source += f'; README: {"PQ" if column == "PQ" else "segm AP"}'
      if model not in PANOPTIC:
        rows.append(Row(name, paper, Unavailable(NOT_HERE.format(model)), source=source))
        continue
      backbone, file, _ = PANOPTIC[model]
      rows.append(Row(name, paper, Weights(file, URL + file), PANOPTIC_METRIC_OF[column],
                      config=f'detr_panoptic.py:{backbone},stage=masks', source=source))
  for model, (_, _, box_ap) in PANOPTIC.items():
    rows.append(Row(f'{model} box AP', box_ap, Unavailable(BOX_AP_OF_PANOPTIC),
                    source=f'{README}, COCO panoptic val5k models, row {model}, column box AP'))
  return tuple(rows)


def _table(name, title, rows):
  return Table(name, title, rows, 'detr_jax.main', SOURCE)


TABLES = {
    'detr-table1': _table('detr-table1', 'DETR Table 1: COCO val2017 box AP % of the released '
                          'models beside Faster R-CNN; #params in millions', _table1_rows()),
    'detr-table2': _table('detr-table2', 'DETR Table 2: encoder size (R50, 300 epochs), box AP %',
                          _ablation_rows(2)),
    'detr-table3': _table('detr-table3', 'DETR Table 3: positional encodings (R50, 300 epochs), '
                          'box AP %', _ablation_rows(3)),
    'detr-table4': _table('detr-table4', 'DETR Table 4: loss components (R50, 300 epochs), box '
                          'AP %', _ablation_rows(4)),
    'detr-table5': _table('detr-table5', 'DETR Table 5: COCO val2017 panoptic quality % and '
                          'mask AP % of the released panoptic models', _panoptic_rows()),
}
