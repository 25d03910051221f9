"""The ViT paper's tables (Dosovitskiy et al., ICLR 2021, arXiv 2010.11929v2) as rows for
vit_jax/framework/reproduce.py: Table 2 (comparison with the state of the art), Table 5 (top-1 per
pre-training dataset and model) and Table 6 (the scaling study: JFT-300M models with their
pre-training compute in exaFLOPs).

Every figure was read from arXiv 2010.11929v2 (the ICLR camera-ready); each row names its table,
row and column (`Row.source`). Table 2's "88.4/88.5*" for Noisy Student is kept as 88.4 (the
footnote's 88.5 is Touvron et al.'s). Table 6's exaFLOPs are computed here (`pretraining_exaflops`).

What was published: the ImageNet-21k pre-trained models and their ImageNet fine-tunes at 384 px
(gs://vit_models/imagenet21k and imagenet21k+imagenet2012). So ImageNet and ReaL rows of
ImageNet-21k models evaluate released weights; the other transfer rows fine-tune with
configs/vit_finetune.py (VTAB with configs/vit_vtab.py) and read the run's final metrics;
JFT-300M and ImageNet-1k pre-trained models were never released.
"""

import jax
import jax.numpy as jnp

from vit_jax.classification import vit
from vit_jax.classification.task import REAL_DATASET
from vit_jax.framework import model_stats
from vit_jax.framework.reproduce import Computed, Row, Table, Training, Unavailable, Weights

PAPER = 'ViT arXiv 2010.11929v2'
SOURCE = (f'{PAPER} (ICLR 2021 camera-ready) Tables 2, 5 and 6, each row\'s table, row and '
          'column named beside it')
GCS = 'gs://vit_models/'
# Model -> (name in configs/vit_finetune.py, file name in gs://vit_models/...).
MODELS = {'ViT-B/16': ('b16', 'ViT-B_16'), 'ViT-B/32': ('b32', 'ViT-B_32'),
          'ViT-L/16': ('l16', 'ViT-L_16'), 'ViT-L/32': ('l32', 'ViT-L_32'),
          'ViT-H/14': ('h14', 'ViT-H_14')}
# Released ImageNet fine-tunes of the ImageNet-21k models (at 384 px; no ViT-H/14).
RELEASED_IMAGENET = ('ViT-B/16', 'ViT-B/32', 'ViT-L/16', 'ViT-L/32')
# Benchmark -> (TFDS dataset in the fine-tuning config, metric).
BENCHMARKS = {
    'ImageNet': ('imagenet2012', 'accuracy'),
    'ImageNet ReaL': ('imagenet2012', 'real_accuracy'),
    'CIFAR-10': ('cifar10', 'accuracy'),
    'CIFAR-100': ('cifar100', 'accuracy'),
    'Oxford-IIIT Pets': ('oxford_iiit_pet', 'accuracy'),
    'Oxford Flowers-102': ('oxford_flowers102', 'accuracy'),
}
# The 19 VTAB-1k tasks of configs/vit_vtab.py (a test keeps the two lists equal).
VTAB_TASKS = ('caltech101', 'cifar100', 'dtd', 'oxford_flowers102', 'oxford_iiit_pet', 'sun397',
              'svhn', 'patch_camelyon', 'eurosat', 'resisc45', 'diabetic_retinopathy',
              'clevr_count', 'clevr_distance', 'dmlab', 'dsprites_location',
              'dsprites_orientation', 'kitti_distance', 'smallnorb_azimuth',
              'smallnorb_elevation')
# ReaL evaluates the ImageNet model on imagenet2012_real's validation images (same images).
REAL_PROTOCOL = (('input.dataset', REAL_DATASET), ('input.eval_split', 'validation'))
NOT_RELEASED_JFT = 'not reproducible: JFT-300M is private and its models were not published'
NOT_RELEASED_I1K = ('not reproducible here: the ImageNet-1k pre-trained ViTs were not '
                    'published and there is no ImageNet-1k pre-training config')
NOT_HERE = 'not reproducible here: {} is not a model of this codebase (the paper\'s figure only)'
PAPER_ONLY_DAYS = ('the paper\'s own measurement (TPUv3 cores x days of its pre-training run); '
                   'nothing here to compare')


def _source(table: str, row: str, column: str) -> str:
  return f'{PAPER} Table {table}, row {row}, column {column}'


def _i21k_row(name: str, model: str, benchmark: str, paper: float, source: str) -> Row:
  """A row of an ImageNet-21k pre-trained model: released weights for ImageNet / ReaL of the
  released fine-tunes, otherwise a fine-tuning run of configs/vit_finetune.py."""
  short, file = MODELS[model]
  dataset, metric = BENCHMARKS[benchmark]
  if dataset == 'imagenet2012' and model in RELEASED_IMAGENET:
    path = f'imagenet21k+imagenet2012/{file}.npz'
    return Row(name, paper, Weights(path, GCS + path), metric,
               config=f'vit_finetune.py:{short},{dataset}',
               protocol=REAL_PROTOCOL if metric == 'real_accuracy' else (), source=source)
  if metric == 'real_accuracy':  # The run's extra eval 'real' scores the ReaL sets.
    return Row(name, paper, Training(f'{short}_{dataset}'), 'real_real_accuracy',
               config=f'vit_finetune.py:{short},{dataset},real=true', source=source)
  real = ',real=true' if dataset == 'imagenet2012' else ''
  return Row(name, paper, Training(f'{short}_{dataset}'), metric,
             config=f'vit_finetune.py:{short},{dataset}{real}', source=source)


def _vtab_row(name: str, paper: float, source: str) -> Row:
  runs = tuple((f'vit_vtab.py:l16,{task}', f'vtab_l16_{task}') for task in VTAB_TASKS)
  return Row(name, paper, Training(runs=runs), 'accuracy', source=source)


# Table 2: row -> columns Ours-JFT (ViT-H/14), Ours-JFT (ViT-L/16), Ours-I21k (ViT-L/16),
# BiT-L (ResNet152x4), Noisy Student (EfficientNet-L2); None where the paper prints "-". The
# last row is TPUv3-core-days (printed 2.5k ... 12.3k).
TABLE2_COLUMNS = ('Ours-JFT (ViT-H/14)', 'Ours-JFT (ViT-L/16)', 'Ours-I21k (ViT-L/16)',
                  'BiT-L (ResNet152x4)', 'Noisy Student (EfficientNet-L2)')
TABLE2_PAPER = {
    'ImageNet': (88.55, 87.76, 85.30, 87.54, 88.4),
    'ImageNet ReaL': (90.72, 90.54, 88.62, 90.54, 90.55),
    'CIFAR-10': (99.50, 99.42, 99.15, 99.37, None),
    'CIFAR-100': (94.55, 93.90, 93.25, 93.51, None),
    'Oxford-IIIT Pets': (97.56, 97.32, 94.67, 96.62, None),
    'Oxford Flowers-102': (99.68, 99.74, 99.61, 99.63, None),
    'VTAB (19 tasks)': (77.63, 76.28, 72.72, 76.29, None),
    'TPUv3-core-days': (2500., 680., 230., 9900., 12300.),
}


def _table2_rows():
  rows = []
  for benchmark, figures in TABLE2_PAPER.items():
    for column, paper in zip(TABLE2_COLUMNS, figures):
      if paper is None:
        continue
      source = _source(2, benchmark, column)
      short = column.replace('Ours-', '').replace(' (', ' ').rstrip(')')
      name = f'{short} {benchmark}'
      if benchmark == 'TPUv3-core-days':
        rows.append(Row(name, paper, Unavailable(PAPER_ONLY_DAYS), percent=False, source=source))
      elif column == 'Ours-I21k (ViT-L/16)':
        rows.append(_vtab_row(name, paper, source) if benchmark.startswith('VTAB')
                    else _i21k_row(name, 'ViT-L/16', benchmark, paper, source))
      elif column.startswith('Ours-JFT'):
        rows.append(Row(name, paper, Unavailable(NOT_RELEASED_JFT), source=source))
      else:
        rows.append(Row(name, paper, Unavailable(NOT_HERE.format(column)), source=source))
  return tuple(rows)


# Table 5: pre-training dataset -> benchmark -> (B/16, B/32, L/16, L/32, H/14); None: no entry.
TABLE5_PAPER = {
    'ImageNet': {
        'CIFAR-10': (98.13, 97.77, 97.86, 97.94, None),
        'CIFAR-100': (87.13, 86.31, 86.35, 87.07, None),
        'ImageNet': (77.91, 73.38, 76.53, 71.16, None),
        'ImageNet ReaL': (83.57, 79.56, 82.19, 77.83, None),
        'Oxford Flowers-102': (89.49, 85.43, 89.66, 86.36, None),
        'Oxford-IIIT Pets': (93.81, 92.04, 93.64, 91.35, None),
    },
    'ImageNet-21k': {
        'CIFAR-10': (98.95, 98.79, 99.16, 99.13, 99.27),
        'CIFAR-100': (91.67, 91.97, 93.44, 93.04, 93.82),
        'ImageNet': (83.97, 81.28, 85.15, 80.99, 85.13),
        'ImageNet ReaL': (88.35, 86.63, 88.40, 85.65, 88.70),
        'Oxford Flowers-102': (99.38, 99.11, 99.61, 99.19, 99.51),
        'Oxford-IIIT Pets': (94.43, 93.02, 94.73, 93.09, 94.82),
    },
    'JFT-300M': {
        'CIFAR-10': (99.00, 98.61, 99.38, 99.19, 99.50),
        'CIFAR-100': (91.87, 90.49, 94.04, 92.52, 94.55),
        'ImageNet': (84.15, 80.73, 87.12, 84.37, 88.04),
        'ImageNet ReaL': (88.85, 86.27, 89.99, 88.28, 90.33),
        'Oxford Flowers-102': (99.56, 99.27, 99.56, 99.45, 99.68),
        'Oxford-IIIT Pets': (95.80, 93.40, 97.11, 95.83, 97.56),
    },
}


def _table5_rows():
  rows = []
  for upstream, benchmarks in TABLE5_PAPER.items():
    for benchmark, figures in benchmarks.items():
      for model, paper in zip(MODELS, figures):
        if paper is None:
          continue
        name = f'{upstream} {model} {benchmark}'
        source = _source(5, f'{upstream} / {benchmark}', model)
        if upstream == 'ImageNet-21k':
          rows.append(_i21k_row(name, model, benchmark, paper, source))
        else:
          reason = NOT_RELEASED_JFT if upstream == 'JFT-300M' else NOT_RELEASED_I1K
          rows.append(Row(name, paper, Unavailable(reason), source=source))
  return tuple(rows)


# Table 6: JFT-300M models (pre-training epochs) -> ImageNet, ImageNet ReaL, CIFAR-10,
# CIFAR-100, Pets, Flowers (top-1 %) and the pre-training compute in exaFLOPs. Hybrids: the
# number is the ResNet's total stride (R50x1+ViT-B/16: stage 4 removed, stage 3 extended).
TABLE6_COLUMNS = ('ImageNet', 'ImageNet ReaL', 'CIFAR-10', 'CIFAR-100', 'Oxford-IIIT Pets',
                  'Oxford Flowers-102', 'exaFLOPs')
TABLE6_PAPER = {
    ('ViT-B/32', 7): (80.73, 86.27, 98.61, 90.49, 93.40, 99.27, 55),
    ('ViT-B/16', 7): (84.15, 88.85, 99.00, 91.87, 95.80, 99.56, 224),
    ('ViT-L/32', 7): (84.37, 88.28, 99.19, 92.52, 95.83, 99.45, 196),
    ('ViT-L/16', 7): (86.30, 89.43, 99.38, 93.46, 96.81, 99.66, 783),
    ('ViT-L/16', 14): (87.12, 89.99, 99.38, 94.04, 97.11, 99.56, 1567),
    ('ViT-H/14', 14): (88.08, 90.36, 99.50, 94.71, 97.11, 99.71, 4262),
    ('ResNet50x1', 7): (77.54, 84.56, 97.67, 86.07, 91.11, 94.26, 50),
    ('ResNet50x2', 7): (82.12, 87.94, 98.29, 89.20, 93.43, 97.02, 199),
    ('ResNet101x1', 7): (80.67, 87.07, 98.48, 89.17, 94.08, 95.95, 96),
    ('ResNet152x1', 7): (81.88, 87.96, 98.82, 90.22, 94.17, 96.94, 141),
    ('ResNet152x2', 7): (84.97, 89.69, 99.06, 92.05, 95.37, 98.62, 563),
    ('ResNet152x2', 14): (85.56, 89.89, 99.24, 91.92, 95.75, 98.75, 1126),
    ('ResNet200x3', 14): (87.22, 90.15, 99.34, 93.53, 96.32, 99.04, 3306),
    ('R50x1+ViT-B/32', 7): (84.90, 89.15, 99.01, 92.24, 95.75, 99.46, 106),
    ('R50x1+ViT-B/16', 7): (85.58, 89.65, 99.14, 92.63, 96.65, 99.40, 274),
    ('R50x1+ViT-L/32', 7): (85.68, 89.04, 99.24, 92.93, 96.97, 99.43, 246),
    ('R50x1+ViT-L/16', 7): (86.60, 89.72, 99.18, 93.64, 97.03, 99.40, 859),
    ('R50x1+ViT-L/16', 14): (87.12, 89.76, 99.31, 93.89, 97.36, 99.11, 1668),
}
# Table 6 model -> vit.build_vit variant (None: this codebase builds no such model).
TABLE6_VARIANTS = {'ViT-B/32': 'B/32', 'ViT-B/16': 'B/16', 'ViT-L/32': 'L/32',
                   'ViT-L/16': 'L/16', 'ViT-H/14': 'H/14', 'R50x1+ViT-B/16': 'R50+B/16',
                   'R50x1+ViT-L/32': 'R50+L/32'}
JFT_IMAGES = 303e6  # Section 4.1: "JFT ... with 18k classes and 303M high-resolution images".
JFT_CLASSES = 18_000
PRETRAIN_SIZE = 224  # Pre-training resolution.


def pretraining_exaflops(variant: str, epochs: int) -> float:
  """Pre-training compute as the paper's exaFLOPs: the forward pass's multiply-adds at 224 px
  (XLA's count, JFT head) x 2 FLOPs each x 3 (forward + backward) x images seen (epochs x 303M).
  """
  model = vit.build_vit(dict(variant=variant, num_classes=JFT_CLASSES))
  image = jax.ShapeDtypeStruct((1, PRETRAIN_SIZE, PRETRAIN_SIZE, 3), jnp.float32)
  multiply_adds = model_stats.gflops(model, image) * 1e9
  return 3 * 2 * multiply_adds * epochs * JFT_IMAGES / 1e18


def _table6_rows():
  rows = []
  for (model, epochs), figures in TABLE6_PAPER.items():
    for column, paper in zip(TABLE6_COLUMNS, figures):
      name = f'{model} {epochs} epochs {column}'
      source = _source(6, f'{model} {epochs} epochs', column)
      variant = TABLE6_VARIANTS.get(model)
      if column != 'exaFLOPs':
        how = Unavailable(NOT_RELEASED_JFT)
      elif variant:
        how = Computed(lambda _, variant=variant, epochs=epochs: pretraining_exaflops(variant,
                                                                                     epochs))
      elif model.startswith('ResNet'):
        how = Unavailable(NOT_HERE.format(f'BiT {model}'))
      else:
        how = Unavailable(NOT_HERE.format(model))
      rows.append(Row(name, paper, how, percent=column != 'exaFLOPs', source=source))
  return tuple(rows)


TABLES = {
    'vit-table2': Table('vit-table2', 'ViT Table 2: comparison with the state of the art '
                        '(top-1 %, VTAB mean %)', _table2_rows(), 'vit_jax.main', SOURCE),
    'vit-table5': Table('vit-table5', 'ViT Table 5: top-1 % by pre-training dataset and model',
                        _table5_rows(), 'vit_jax.main', SOURCE),
    'vit-table6': Table('vit-table6', 'ViT Table 6: JFT-300M scaling study, top-1 % and '
                        'pre-training exaFLOPs', _table6_rows(), 'vit_jax.main', SOURCE),
}
