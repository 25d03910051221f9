"""The DeiT paper's tables (Touvron et al., ICML 2021, arXiv 2012.12877) as printed in the course
seeds, as rows for vit_jax/framework/reproduce.py: the model sizes, the distillation ablation,
the teacher ablation and the transfer / throughput table.

What was published: the eight models of the DeiT README (reference/deit.md §1.6), 300-epoch
models except `deit_base_distilled_patch16_384` (1000 epochs, 85.2). Rows of a released model
evaluate its `.pth` with configs/deit.py (DeiT's eval: resize to size / 0.875, centre crop,
ImageNet mean / std); the ablation's single-head rows evaluate the distilled releases with
`model.distilled_eval`. Models that were not released (soft or hard distillation without the
token, the 300-epoch distilled 384 fine-tune, DeiT-B students of a DeiT-B teacher) read runs of
configs/deit.py; RegNetY teachers and the other papers' models are not models of this codebase.
"""

import jax
import jax.numpy as jnp

from vit_jax.framework import model_stats, registry
from vit_jax.framework.reproduce import SPEED_METRIC, Computed, Row, Speed, Table, Training
from vit_jax.framework.reproduce import Unavailable, Weights

SOURCE = ('DeiT (arXiv 2012.12877) tables as printed in the course seed 004 (slides "DeiT '
          'ablation study", "DeiT results"; reference/deit.md §1.1, §2.3)')
URL = 'https://dl.fbaipublicfiles.com/deit/'
# deit.RELEASES name -> (its configs/deit.py argument, its release file under URL).
RELEASED = {
    'DeiT-Ti': ('Ti', 'deit_tiny_patch16_224-a1311bcf.pth'),
    'DeiT-S': ('S', 'deit_small_patch16_224-cd65a155.pth'),
    'DeiT-B': ('B', 'deit_base_patch16_224-b5f2ef4d.pth'),
    'DeiT-B-384': ('B,finetune_384=true', 'deit_base_patch16_384-8de9b5d1.pth'),
    'DeiT-Ti-distilled': ('Ti,distilled=true', 'deit_tiny_distilled_patch16_224-b40b3cf7.pth'),
    'DeiT-S-distilled': ('S,distilled=true', 'deit_small_distilled_patch16_224-649709d9.pth'),
    'DeiT-B-distilled': ('B,distilled=true', 'deit_base_distilled_patch16_224-df68dfff.pth'),
    'DeiT-B-384-distilled': ('B,distilled=true,finetune_384=true',
                             'deit_base_distilled_patch16_384-d0272ac0.pth'),
}
NOT_HERE = 'not reproducible here: {} is not a model of this codebase (the paper\'s figure only)'
NOT_RELEASED_384 = ('not released: the 300-epoch DeiT-B-distilled 384 fine-tune (the release is '
                    'the 1000-epoch model); train configs/deit.py:B,distilled=true,'
                    'finetune_384=true and evaluate it with --config.model.distilled_eval={}')
NO_TRANSFER = ('not reproducible here yet: no DeiT transfer config (reference/deit.md §3.4 has '
               'the recipes)')


def _workdir(arg: str) -> str:
  """'B,distilled=true,finetune_384=true' -> 'deit_b_distilled_384'."""
  words = {'distilled=true': 'distilled', 'finetune_384=true': '384'}
  parts = [words.get(part, part.rpartition('=')[2]) for part in arg.split(',')]
  return 'deit_' + '_'.join(parts).lower()


def _released(name: str, release: str, paper: float, source: str, head: str = '') -> Row:
  """A row evaluating `release` (deit.RELEASES) with its config, distilled ones with `head`."""
  arg, file = RELEASED[release]
  protocol = (('model.distilled_eval', head),) if head else ()
  return Row(name, paper, Weights(file, URL + file), config=f'deit.py:{arg}', protocol=protocol,
             source=source)


def _trained(name: str, arg: str, paper: float, source: str, workdir: str = '') -> Row:
  return Row(name, paper, Training(workdir or _workdir(arg)), config=f'deit.py:{arg}',
             source=source)


def parameters_millions(config) -> float:
  """The config's model's parameter count in millions (the paper's #params)."""
  model = registry.make_task(config).model
  size = config.input.image_size
  image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return model_stats.parameter_count(model, image, train=False) / 1e6


# Model sizes: model -> (configs/deit.py argument, the paper's #params in millions).
VARIANTS = {'DeiT-Ti': ('Ti', 5), 'DeiT-S': ('S', 22), 'DeiT-B': ('B', 86)}


def _variant_rows():
  return tuple(Row(f'{name} params (M)', paper, Computed(parameters_millions),
                   config=f'deit.py:{arg}', percent=False,
                   source='seed 004, DeiT variants table (#params)')
               for name, (arg, paper) in VARIANTS.items())


# Distillation ablation (300 epochs): method -> top-1 of Ti 224, S 224, B 224, B 384.
ABLATION_SIZES = ('Ti', 'S', 'B', 'B-384')
ABLATION = {
    'no distillation': (72.2, 79.8, 81.8, 83.1),
    'usual distillation (soft)': (72.2, 79.8, 81.8, 83.2),
    'hard distillation': (74.3, 80.9, 83.0, 84.0),
    'distilled: class embedding': (73.9, 80.9, 83.0, 84.2),
    'distilled: distil. embedding': (74.6, 81.1, 83.1, 84.4),
    'distilled: class+distillation': (74.5, 81.2, 83.4, 84.5),
}
# Ablation method -> the configs/deit.py options of its run, or the head its release is read with.
_RUN_OPTIONS = {'usual distillation (soft)': 'distillation=soft',
                'hard distillation': 'distillation=hard'}
_HEADS = {'distilled: class embedding': 'head', 'distilled: distil. embedding': 'head_dist',
          'distilled: class+distillation': 'mean'}


def _size_arg(size: str) -> str:
  return 'B,finetune_384=true' if size == 'B-384' else size


def _ablation_rows():
  rows = []
  for method, figures in ABLATION.items():
    for size, paper in zip(ABLATION_SIZES, figures):
      name = f'DeiT-{size} {method}'
      source = f'seed 004, DeiT ablation study, row {method}, column {size}'
      if method == 'no distillation':
        rows.append(_released(name, f'DeiT-{size}', paper, source))
      elif method in _RUN_OPTIONS:
        rows.append(_trained(name, f'{_size_arg(size)},{_RUN_OPTIONS[method]}', paper, source))
      elif size != 'B-384':
        rows.append(_released(name, f'DeiT-{size}-distilled', paper, source, _HEADS[method]))
      elif method == 'distilled: class+distillation':
        rows.append(_trained(name, 'B,distilled=true,finetune_384=true', paper, source))
      else:
        rows.append(Row(name, paper, Unavailable(NOT_RELEASED_384.format(_HEADS[method])),
                        source=source))
  return tuple(rows)


# Teacher ablation: teacher -> (its top-1, DeiT-B-distilled student at 224, after 384 fine-tune).
TEACHERS = {
    'DeiT-B': (81.8, 81.9, 83.1),
    'RegNetY-4GF': (80.0, 82.7, 83.6),
    'RegNetY-8GF': (81.7, 82.7, 83.8),
    'RegNetY-12GF': (82.4, 83.1, 84.1),
    'RegNetY-16GF': (82.9, 83.1, 84.2),
}
# The DeiT-B teacher's students: configs/deit.py's default teacher (deit B/16) given the
# released DeiT-B as --config.teacher.init_from.
_DEIT_TEACHER_RUNS = {'224': ('B,distilled=true', 'deit_b_distilled_teacher_deit_b'),
                      '384': ('B,distilled=true,finetune_384=true',
                              'deit_b_distilled_384_teacher_deit_b')}


def _teacher_rows():
  rows = []
  for teacher, (accuracy, student, student_384) in TEACHERS.items():
    source = f'seed 004, DeiT results (teachers), row {teacher}'
    if teacher == 'DeiT-B':
      rows.append(_released('teacher DeiT-B top-1', 'DeiT-B', accuracy, f'{source}, column acc.'))
      for size, paper in (('224', student), ('384', student_384)):
        arg, workdir = _DEIT_TEACHER_RUNS[size]
        rows.append(_trained(f'student DeiT-B-distilled {size} (teacher DeiT-B) top-1', arg,
                             paper, f'{source}, column student {size}', workdir))
      continue
    reason = Unavailable(NOT_HERE.format(f'the teacher {teacher}'))
    rows.append(Row(f'teacher {teacher} top-1', accuracy, reason,
                    source=f'{source}, column acc.'))
    for size, paper in (('224', student), ('384', student_384)):
      rows.append(Row(f'student DeiT-B-distilled {size} (teacher {teacher}) top-1', paper,
                      reason, source=f'{source}, column student {size}'))
  return tuple(rows)


TRANSFER_COLUMNS = ('ImageNet', 'CIFAR-10', 'CIFAR-100', 'Flowers', 'Cars', 'iNat-18',
                    'iNat-19', 'im/sec')
# Transfer and throughput (images/s on the paper's V100): model -> the columns, None for "-".
TRANSFER = {
    'Grafit ResNet-50': (79.6, None, None, 98.2, 92.5, 69.8, 75.9, 1226.1),
    'Grafit RegNetY-8GF': (None, None, None, 99.0, 94.0, 76.8, 80.0, 591.6),
    'ResNet-152': (None, None, None, None, None, 69.1, None, 526.3),
    'EfficientNet-B7': (84.3, 98.9, 91.7, 98.8, 94.7, None, None, 55.1),
    'ViT-B/32': (73.4, 97.8, 86.3, 85.4, None, None, None, 394.5),
    'ViT-B/16': (77.9, 98.1, 87.1, 89.5, None, None, None, 85.9),
    'ViT-L/32': (71.2, 97.9, 87.1, 86.4, None, None, None, 124.1),
    'ViT-L/16': (76.5, 97.9, 86.4, 89.7, None, None, None, 27.3),
    'DeiT-B': (81.8, 99.1, 90.8, 98.4, 92.1, 73.2, 77.7, 292.3),
    'DeiT-B-384': (83.1, 99.1, 90.8, 98.5, 93.3, 79.5, 81.4, 85.9),
    'DeiT-B-distilled': (83.4, 99.1, 91.3, 98.8, 92.9, 73.7, 78.4, 290.9),
    'DeiT-B-384-distilled': (84.4, 99.2, 91.4, 98.9, 93.9, 80.1, 83.0, 85.9),
}
NOT_RELEASED_VIT_I1K = ('not reproducible here: the ImageNet-1k trained ViTs were not '
                        'published (see vit-table5)')


def _transfer_rows():
  rows = []
  for model, figures in TRANSFER.items():
    for column, paper in zip(TRANSFER_COLUMNS, figures):
      if paper is None:
        continue
      name = f'{model} {column}'
      source = f'seed 004, DeiT results (transfer), row {model}, column {column}'
      if not model.startswith('DeiT'):
        reason = NOT_RELEASED_VIT_I1K if model.startswith('ViT') else NOT_HERE.format(model)
        rows.append(Row(name, paper, Unavailable(reason), percent=column != 'im/sec',
                        source=source))
      elif column == 'im/sec':
        rows.append(Row(f'{model} images/s (paper: V100)', paper, Speed(batch=8),
                        SPEED_METRIC, config=f'deit.py:{RELEASED[model][0]}', percent=False,
                        source=source))
      elif column != 'ImageNet':
        rows.append(Row(name, paper, Unavailable(NO_TRANSFER), source=source))
      elif model == 'DeiT-B-384-distilled':  # 84.4: the 300-epoch model, not the release.
        rows.append(_trained(f'{model} top-1', 'B,distilled=true,finetune_384=true', paper,
                             source))
      else:
        rows.append(_released(f'{model} top-1', model, paper, source))
  return tuple(rows)


TABLES = {
    'deit-variants': Table('deit-variants', 'DeiT variants: parameters (millions)',
                           _variant_rows(), 'vit_jax.main', SOURCE),
    'deit-distillation': Table('deit-distillation', 'DeiT distillation ablation: ImageNet '
                               'top-1 %', _ablation_rows(), 'vit_jax.main', SOURCE),
    'deit-teachers': Table('deit-teachers', 'DeiT teacher ablation: teacher and DeiT-B-distilled '
                           'student top-1 %', _teacher_rows(), 'vit_jax.main', SOURCE),
    'deit-transfer': Table('deit-transfer', 'DeiT transfer and throughput: top-1 % and images/s',
                           _transfer_rows(), 'vit_jax.main', SOURCE),
}
