"""The Segmenter paper's ADE20K tables (Strudel et al., ICCV 2021, arXiv 2105.05633v3) as rows
for vit_jax/framework/reproduce.py: Table 3 (backbones and patch sizes, mIoU and images/s), Table 4 (mIoU
by object size), Table 5 (Seg-S/16 trained on 4k ... 20k images) and Table 6 (single- and
multi-scale mIoU of the released models).

Released (rstrudel/segmenter README, each checkpoint.pth with its variant.yml): Seg-T-Mask/16,
Seg-S-Mask/16, Seg-B-Mask/16, Seg-B/8, Seg-L-Mask/16 (640), Seg-B†/16 and Seg-B†-Mask/16. Rows of
other models train with configs/segmenter_ade20k.py and read the run's final metrics.

Eval protocol of released weights: segm/eval/miou.py's, sliding windows of the crop size with
stride crop - 32; multi-scale adds scales 0.5 ... 1.75 and flips (12 views, probabilities
averaged).
"""

from segmenter_jax import metrics
from segmenter_jax.segmentation import SegmentationTask
from vit_jax.framework.reproduce import Row, Speed, Table, Training, Unavailable, Weights

SOURCE = ('Segmenter paper (arXiv 2105.05633v3) as quoted by third-party write-ups (mIoU of '
          'Tables 3-5) and the released models\' README (Table 6 rows); "-": the figure is not '
          'recorded here, read it from the PDF. Paper images/s are V100 figures; ours are timed '
          'on this device (vit_jax.framework.reproduce.images_per_second)')
URL = 'https://www.rocq.inria.fr/cluster-willow/rstrudel/segmenter/checkpoints/ade20k/'
# Released model -> (folder of its checkpoint.pth and variant.yml, config variant, crop).
RELEASED = {
    'Seg-T-Mask/16': ('seg_tiny_mask', 't16_mask', 512),
    'Seg-S-Mask/16': ('seg_small_mask', 's16_mask', 512),
    'Seg-B-Mask/16': ('seg_base_mask', 'b16_mask', 512),
    'Seg-B/8': ('seg_base_patch8', 'b8_linear', 512),
    'Seg-L-Mask/16': ('seg_large_mask_640', 'l16_mask', 640),
    'Seg-B†/16': ('seg_base_deit_linear', 'deit_b16_linear', 512),
    'Seg-B†-Mask/16': ('seg_base_deit_mask', 'deit_b16_mask', 512),
}
MULTI_SCALE = (('input.eval_scales', (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)),
               ('input.eval_flip', True))


class ObjectSizeTask(SegmentationTask):
  """Segmenter scored by mIoU per object size (metrics.OBJECT_SIZES): the eval step returns
  the label maps, the host finds the objects."""

  def eval_outputs(self, variables, batch):
    return {'prediction': self.predict(variables, batch), 'label': batch['label']}

  def evaluator(self, split):
    return metrics.MeanIoUByObjectSize(self.num_classes)


def _released(name: str, label: str, paper, metric: str = 'miou', multi_scale: bool = False,
              make_task=None) -> Row:
  folder, variant, crop = RELEASED[name]
  protocol = (('input.eval_stride', crop - 32),) + (MULTI_SCALE if multi_scale else ())
  return Row(f'{name} {label}'.strip(), paper,
             Weights(f'{folder}/checkpoint.pth', f'{URL}{folder}/checkpoint.pth'), metric,
             config=f'segmenter_ade20k.py:{variant}', protocol=protocol, make_task=make_task)


def _trained(name: str, variant: str, paper, workdir: str) -> Row:
  return Row(name, paper, Training(workdir), 'miou', config=f'segmenter_ade20k.py:{variant}')


def _speed(name: str, variant: str) -> Row:
  return Row(f'{name} images/s', None, Speed(batch=8), 'images_per_second',
             config=f'segmenter_ade20k.py:{variant}', percent=False)


# Table 3: linear decoder, ADE20K val, single scale. Model -> (config variant, paper mIoU).
TABLE3 = {
    'Seg-S/32': ('s32_linear', None),
    'Seg-S/16': ('s16_linear', 45.37),
    'Seg-B/32': ('b32_linear', 43.07),
    'Seg-B/16': ('b16_linear', 48.06),
    'Seg-B/8': ('b8_linear', 49.54),
    'Seg-L/16': ('l16_linear', 50.71),
    'Seg-B†/16': ('deit_b16_linear', 47.10),
}


def _table3_rows():
  rows = []
  for name, (variant, paper) in TABLE3.items():
    if name in RELEASED:
      rows.append(_released(name, 'mIoU', paper, multi_scale=False))
    else:
      rows.append(_trained(f'{name} mIoU', variant, paper, f'ade20k_{variant}'))
    rows.append(_speed(name, variant))
  return tuple(rows)


# Table 4: object sizes. Only Seg-L-Mask/16's and DeepLab's large-object figures are recorded.
TABLE4 = {'Seg-B/8': (None, None, None), 'Seg-B†/16': (None, None, None),
          'Seg-B†-Mask/16': (None, None, None), 'Seg-L-Mask/16': (None, None, 57.06)}


def _table4_rows():
  rows = []
  for name, figures in TABLE4.items():
    for size, paper in zip(metrics.OBJECT_SIZES, figures):
      rows.append(_released(name, f'mIoU {size}', paper, f'miou_{size}',
                            make_task=ObjectSizeTask))
  for size, paper in zip(metrics.OBJECT_SIZES, (None, None, 50.67)):
    rows.append(Row(f'DeepLabv3+ ResNeSt-101 mIoU {size}', paper,
                    Unavailable('not reproducible here: a convolutional baseline, not a model '
                                'of this codebase')))
  return tuple(rows)


# Table 5: Seg-S/16 (linear) trained on subsets of the 20,210 ADE20K training images.
TABLE5 = {4000: 38.31, 8000: 41.87, 12000: None, 16000: None, 20210: 45.37}


def _table5_rows():
  rows = []
  for images, paper in TABLE5.items():
    if images == 20210:  # Every image: Table 3's Seg-S/16 run.
      rows.append(_trained(f'Seg-S/16 {images} images', 's16_linear', paper,
                           'ade20k_s16_linear'))
    else:
      rows.append(_trained(f'Seg-S/16 {images} images', f's16_linear,train_subset={images}',
                           paper, f'ade20k_s16_linear_{images}'))
  return tuple(rows)


# Table 6: released models, (single-scale, multi-scale) mIoU as their README gives them.
TABLE6 = {'Seg-T-Mask/16': (38.1, 38.8), 'Seg-S-Mask/16': (45.3, 46.9),
          'Seg-B-Mask/16': (48.5, 50.0), 'Seg-B/8': (49.5, 50.5),
          'Seg-L-Mask/16': (51.8, 53.6), 'Seg-B†/16': (47.1, 48.1),
          'Seg-B†-Mask/16': (48.7, 50.1)}


def _table6_rows():
  rows = []
  for name, (single, multi) in TABLE6.items():
    rows.append(_released(name, 'single-scale', single))
    rows.append(_released(name, 'multi-scale', multi, multi_scale=True))
  return tuple(rows)


def _table(name: str, title: str, rows) -> Table:
  return Table(name, title, rows, SegmentationTask, 'segmenter_jax.main', SOURCE)


TABLES = {
    'segmenter-table3': _table('segmenter-table3', 'Segmenter Table 3: backbones and patch '
                               'sizes, ADE20K val mIoU % (single scale) and images/s',
                               _table3_rows()),
    'segmenter-table4': _table('segmenter-table4', 'Segmenter Table 4: ADE20K val mIoU % by '
                               'object size', _table4_rows()),
    'segmenter-table5': _table('segmenter-table5', 'Segmenter Table 5: Seg-S/16 trained on '
                               'part of ADE20K, val mIoU %', _table5_rows()),
    'segmenter-table6': _table('segmenter-table6', 'Segmenter Table 6: released models, ADE20K '
                               'val mIoU % single- and multi-scale', _table6_rows()),
}
