"""The ViT paper's tables (Dosovitskiy et al., ICLR 2021, arXiv 2010.11929) as rows for
vit_jax/framework/reproduce.py: Table 2 (comparison with the state of the art) and Table 5 (top-1 per
pre-training dataset and model).

What was published: the ImageNet-21k pre-trained models and their ImageNet fine-tunes at 384 px
(gs://vit_models/imagenet21k and imagenet21k+imagenet2012). So ImageNet and ReaL rows of
ImageNet-21k models evaluate released weights; the other transfer rows fine-tune with
configs/vit_finetune.py (VTAB with configs/vit_vtab.py) and read the run's final metrics;
JFT-300M and ImageNet-1k pre-trained models were never released.
"""

from vit_jax.classification.task import ClassificationTask, REAL_DATASET
from vit_jax.framework.reproduce import Row, Table, Training, Unavailable, Weights

SOURCE = ('ViT paper (arXiv 2010.11929v2) Tables 2 and 5, transcribed by hand: check a figure '
          'against the PDF before quoting a difference')
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


def _i21k_row(name: str, model: str, benchmark: str, paper: float) -> Row:
  """A row of an ImageNet-21k pre-trained model: released weights for ImageNet / ReaL of the
  released fine-tunes, otherwise a fine-tuning run of configs/vit_finetune.py."""
  short, file = MODELS[model]
  dataset, metric = BENCHMARKS[benchmark]
  if dataset == 'imagenet2012' and model in RELEASED_IMAGENET:
    path = f'imagenet21k+imagenet2012/{file}.npz'
    return Row(name, paper, Weights(path, GCS + path), metric,
               config=f'vit_finetune.py:{short},{dataset}',
               protocol=REAL_PROTOCOL if metric == 'real_accuracy' else ())
  if metric == 'real_accuracy':  # The run's extra eval 'real' scores the ReaL sets.
    return Row(name, paper, Training(f'{short}_{dataset}'), 'real_real_accuracy',
               config=f'vit_finetune.py:{short},{dataset},real=true')
  real = ',real=true' if dataset == 'imagenet2012' else ''
  return Row(name, paper, Training(f'{short}_{dataset}'), metric,
             config=f'vit_finetune.py:{short},{dataset}{real}')


def _vtab_row(name: str, paper: float) -> Row:
  runs = tuple((f'vit_vtab.py:l16,{task}', f'vtab_l16_{task}') for task in VTAB_TASKS)
  return Row(name, paper, Training(runs=runs), 'accuracy')


# Table 2: columns Ours-JFT (ViT-H/14), Ours-JFT (ViT-L/16), Ours-I21k (ViT-L/16).
TABLE2_PAPER = {
    'ImageNet': (88.55, 87.76, 85.30),
    'ImageNet ReaL': (90.72, 90.54, 88.62),
    'CIFAR-10': (99.50, 99.42, 99.15),
    'CIFAR-100': (94.55, 93.90, 93.25),
    'Oxford-IIIT Pets': (97.56, 97.32, 94.67),
    'Oxford Flowers-102': (99.68, 99.74, 99.61),
    'VTAB (19 tasks)': (77.63, 76.28, 72.72),
}


def _table2_rows():
  rows = []
  for benchmark, (jft_h14, jft_l16, i21k_l16) in TABLE2_PAPER.items():
    rows.append(Row(f'JFT ViT-H/14 {benchmark}', jft_h14, Unavailable(NOT_RELEASED_JFT)))
    rows.append(Row(f'JFT ViT-L/16 {benchmark}', jft_l16, Unavailable(NOT_RELEASED_JFT)))
    name = f'I21k ViT-L/16 {benchmark}'
    rows.append(_vtab_row(name, i21k_l16) if benchmark.startswith('VTAB')
                else _i21k_row(name, 'ViT-L/16', benchmark, i21k_l16))
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
        if upstream == 'ImageNet-21k':
          rows.append(_i21k_row(name, model, benchmark, paper))
        else:
          reason = NOT_RELEASED_JFT if upstream == 'JFT-300M' else NOT_RELEASED_I1K
          rows.append(Row(name, paper, Unavailable(reason)))
  return tuple(rows)


TABLES = {
    'vit-table2': Table('vit-table2', 'ViT Table 2: comparison with the state of the art '
                        '(top-1 %, VTAB mean %)', _table2_rows(), ClassificationTask,
                        'vit_jax.main', SOURCE),
    'vit-table5': Table('vit-table5', 'ViT Table 5: top-1 % by pre-training dataset and model',
                        _table5_rows(), ClassificationTask, 'vit_jax.main', SOURCE),
}
