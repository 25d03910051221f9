"""Tasks by name: the one place a config's `task` is resolved, by every entry point (the three
mains, the fit report, the benchmark, the reproduction harness).

A config names its task once (`config.task`) and its model once (`config.model.name`, a key of
the task's `MODELS`). Tasks are named here by import path, so that vit_jax imports no task
package: a task's module is imported only when a config asks for it.
"""

import importlib

from vit_jax.framework import task as task_lib
from vit_jax.framework.errors import choose

TASKS = {
    'classification': 'vit_jax.classification.task:ClassificationTask',
    'detection': 'detr_jax.detection:DetectionTask',
    'panoptic': 'detr_jax.panoptic:PanopticTask',
    'segmentation': 'segmenter_jax.segmentation:SegmentationTask',
}


def task_class(name: str) -> type[task_lib.Task]:
  """The Task subclass registered as `name` (a UserError lists the names otherwise)."""
  module, _, attribute = choose('config.task', name, TASKS).partition(':')
  return getattr(importlib.import_module(module), attribute)


def make_task(config) -> task_lib.Task:
  """The task `config.task` names, built from `config`."""
  return task_class(config.task)(config)
