"""Does a config's train step fit a TPU slice? The TPU compiler's verdict, without a TPU.

  python scripts/fit_report.py --config=configs/vit_b16_i21k.py --topology=v5e-64 [--json]
  python scripts/fit_report.py --config=configs/detr_coco.py:r50 --topology=v4-32 --num_slices=2

Any config: the task and model it names (vit_jax/framework/registry.py); any --config.key=value
override applies. Needs the tpu extra (pip install -e ".[tpu]"). See vit_jax/framework/fit_report.py.
"""

from vit_jax.framework import fit_report

if __name__ == '__main__':
  fit_report.run()
