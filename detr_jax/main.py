"""Train DETR: python -m detr_jax.main --config=configs/detr_shapes.py --workdir=DIR

`config.task` picks the task: detection (the default; boxes, COCO AP) or panoptic (boxes and
masks, PQ; configs/detr_panoptic*.py).
"""

from detr_jax.detection import DetectionTask
from detr_jax.panoptic import PanopticTask
from vit_jax.framework import cli
from vit_jax.framework.errors import choose

TASKS = {'detection': DetectionTask, 'panoptic': PanopticTask}


def make_task(config):
  return choose('config.task', config.get('task', 'detection'), TASKS)(config)


if __name__ == '__main__':
  cli.run(make_task)
