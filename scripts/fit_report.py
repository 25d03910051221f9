"""Does a config's train step fit a TPU slice? The TPU compiler's verdict, without a TPU.

  python scripts/fit_report.py --config=configs/vit_b16_i21k.py --topology=v5e-64 [--json]
  python scripts/fit_report.py --config=configs/detr_coco.py:r50 --topology=v4-32 --num_slices=2

Any of the three tasks, picked by config.model.name; any --config.key=value override applies.
Needs the tpu extra (pip install -e ".[tpu]"). See vit_jax/framework/fit_report.py.
"""

from detr_jax import detection_input
from detr_jax.detection import DetectionTask
from segmenter_jax import segmentation_input
from segmenter_jax.segmentation import SegmentationTask
from vit_jax.classification import input as classification_input
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import fit_report
from vit_jax.framework.errors import choose

# config.model.name -> (task, its training example's shapes from the config).
TASKS = {'vit': (ClassificationTask, classification_input.train_example_spec),
         'detr': (DetectionTask, detection_input.train_example_spec),
         'segmenter': (SegmentationTask, segmentation_input.train_example_spec)}


def make_task(config):
  task, example_spec = choose('config.model.name', config.model.name, TASKS)
  return task(config), example_spec(config.input)


if __name__ == '__main__':
  fit_report.run(make_task)
