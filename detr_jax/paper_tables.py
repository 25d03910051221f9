"""The DETR paper's tables (Carion et al., ECCV 2020, arXiv 2005.12872) as rows for
vit_jax/framework/reproduce.py: Table 1 (COCO val2017 box AP of the four released models, 500 epochs) and
the panoptic table (PQ of the three released panoptic models).

Each Table 1 row evaluates the released weights (dl.fbaipublicfiles.com/detr) with
configs/detr_coco.py: images resized to short side 800 (long side at most 1333), all 100
queries kept, pycocotools bbox AP (detr_jax/coco_eval.py). A panoptic row evaluates the
released panoptic model with configs/detr_panoptic.py (stage=masks) and detr_jax/panoptic.py's
PQ (panopticapi's arithmetic) on COCO panoptic val2017.
"""

from detr_jax.detection import DetectionTask
from detr_jax.panoptic import PanopticTask
from vit_jax.framework.reproduce import Row, Table, Weights

SOURCE = ('DETR paper (arXiv 2005.12872) Table 1 and its panoptic table, transcribed by hand '
          '(AP and AP50 also in the README / hubconf.py): check a figure against the PDF')
URL = 'https://dl.fbaipublicfiles.com/detr/'
# Model -> (configs/detr_coco.py backbone, released file).
MODELS = {'DETR': ('r50', 'detr-r50-e632da11.pth'),
          'DETR-DC5': ('dc5_r50', 'detr-r50-dc5-f0fb7ef5.pth'),
          'DETR-R101': ('r101', 'detr-r101-2c7b67e5.pth'),
          'DETR-DC5-R101': ('dc5_r101', 'detr-r101-dc5-a2e86def.pth')}
# Table 1: model -> AP, AP50, AP75, AP_S, AP_M, AP_L (the keys of detr_jax/coco_eval.METRICS).
TABLE1 = {'DETR': (42.0, 62.4, 44.2, 20.5, 45.8, 61.1),
          'DETR-DC5': (43.3, 63.1, 45.9, 22.5, 47.3, 61.1),
          'DETR-R101': (43.5, 63.8, 46.4, 21.9, 48.0, 61.8),
          'DETR-DC5-R101': (44.9, 64.7, 47.7, 23.7, 49.5, 62.3)}
METRICS = ('AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large')
# Panoptic table: model -> (configs/detr_panoptic.py backbone, released file, PQ).
PANOPTIC = {'DETR': ('r50', 'detr-r50-panoptic-00ce5173.pth', 43.4),
            'DETR-DC5': ('dc5_r50', 'detr-r50-dc5-panoptic-da08f1b1.pth', 44.6),
            'DETR-R101': ('r101', 'detr-r101-panoptic-40021d53.pth', 45.1)}


def _table1_rows():
  rows = []
  for model, figures in TABLE1.items():
    backbone, file = MODELS[model]
    for metric, paper in zip(METRICS, figures):
      rows.append(Row(f'{model} {metric}', paper, Weights(file, URL + file), metric,
                      config=f'detr_coco.py:{backbone}'))
  return tuple(rows)


def _panoptic_rows():
  return tuple(Row(f'{model} PQ', paper, Weights(file, URL + file), 'PQ',
                   config=f'detr_panoptic.py:{backbone},stage=masks', make_task=PanopticTask)
               for model, (backbone, file, paper) in PANOPTIC.items())


TABLES = {
    'detr-table1': Table('detr-table1', 'DETR Table 1: COCO val2017 box AP % of the released '
                         'models', _table1_rows(), DetectionTask, 'detr_jax.main', SOURCE),
    'detr-panoptic': Table('detr-panoptic', 'DETR panoptic: COCO val2017 PQ % of the released '
                           'panoptic models', _panoptic_rows(), DetectionTask, 'detr_jax.main',
                           SOURCE),
}
