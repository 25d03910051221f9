"""DETR rows of the model table: parameters and multiply-adds beside the paper's Table 1."""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from detr_jax import models
from vit_jax import model_stats

# Paper Table 1 (COCO val): trainable parameters, GFLOPs (multiply-adds) and box AP at 500
# epochs. The paper's GFLOPs are an average over COCO val images resized to 800 px on the
# shorter side, mostly smaller than 800 x 1333; we count two sizes: the largest input and a 4:3
# image at 800 (COCO's most common shape, 640 x 480, resized).
TABLE = (
    dict(model='DETR-R50', depth=50, dilation=False, paper_params=41e6, paper_gflops=86, ap=42.0),
    dict(model='DETR-DC5-R50', depth=50, dilation=True, paper_params=41e6, paper_gflops=187,
         ap=43.3),
    dict(model='DETR-R101', depth=101, dilation=False, paper_params=60e6, paper_gflops=152,
         ap=43.5),
    dict(model='DETR-DC5-R101', depth=101, dilation=True, paper_params=60e6, paper_gflops=253,
         ap=44.9),
)
SIZES = ((800, 1333), (800, 1067))
SOURCE = 'DETR paper Table 1 (params, GFLOPs, AP at 500 epochs)'


def _inputs(height: int, width: int):
  return (jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32),
          jax.ShapeDtypeStruct((1, height, width), jnp.int32))


def trainable_count(model: models.DETR) -> int:
  """Parameters the original trains: all but the frozen stem and layer1 (and the frozen
  batch-norm buffers, which are not parameters)."""
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), *_inputs(64, 64))
  flat = flax.traverse_util.flatten_dict(flax.linen.meta.unbox(variables['params']), sep='/')
  return int(sum(np.prod(v.shape) for k, v in flat.items()
                 if not k.startswith(('backbone/conv1/', 'backbone/layer1_'))))


def table_row(entry: dict) -> dict:
  model = models.DETR(num_classes=91, backbone_depth=entry['depth'], dilation=entry['dilation'])
  row = dict(model=entry['model'], params=trainable_count(model),
             all_params=model_stats.parameter_count(model, *_inputs(64, 64)),
             paper_params=entry['paper_params'], paper_gflops=entry['paper_gflops'],
             paper_ap=entry['ap'], source=SOURCE)
  for height, width in SIZES:
    row[f'gflops_{height}x{width}'] = model_stats.gflops(model, *_inputs(height, width))
  return row
