"""DETR rows of the model table: parameters and multiply-adds beside the paper's Tables 1 and 2,
and the box AP of every ablation row (Tables 2-4), each row a configs/detr_coco.py variant; and
Deformable DETR's released models (configs/deformable_detr_coco.py) beside its paper's Table 1."""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from detr_jax import models
from vit_jax.framework import model_stats

# Paper Table 1 (COCO val): trainable parameters, GFLOPs (multiply-adds) and box AP at 500
# epochs; `config` is the configs/detr_coco.py argument that builds the model.
TABLE = (
    dict(model='DETR-R50', config='r50', paper_params=41e6, paper_gflops=86, ap=42.0),
    dict(model='DETR-DC5-R50', config='dc5_r50', paper_params=41e6, paper_gflops=187, ap=43.3),
    dict(model='DETR-R101', config='r101', paper_params=60e6, paper_gflops=152, ap=43.5),
    dict(model='DETR-DC5-R101', config='dc5_r101', paper_params=60e6, paper_gflops=253,
         ap=44.9),
)
SOURCE = 'DETR arXiv 2005.12872v3 Table 1 (#params, GFLOPS, AP at 500 epochs)'
# Deformable DETR (COCO val, R50, 50 epochs): paper Table 1's params, GFLOPs and AP; the single
# scale rows from the repository's README (the paper's table lists them without AP). `config`:
# the configs/deformable_detr_coco.py argument.
DEFORMABLE = (
    dict(model='Deformable DETR single scale', config='single_scale', paper_params=34e6,
         paper_gflops=78, ap=39.4),
    dict(model='Deformable DETR single scale DC5', config='single_scale_dc5', paper_params=34e6,
         paper_gflops=128, ap=41.5),
    dict(model='Deformable DETR', config='deformable', paper_params=40e6, paper_gflops=173,
         ap=43.8),
    dict(model='+ iterative box refinement', config='box_refine', paper_params=40e6,
         paper_gflops=173, ap=45.4),
    dict(model='++ two-stage', config='two_stage', paper_params=40e6, paper_gflops=173, ap=46.2),
)
DEFORMABLE_SOURCE = ('Deformable DETR paper Table 1 (params, GFLOPs, AP at 50 epochs; single '
                     'scale: the README\'s AP)')
# The ablations, all R50 trained 300 epochs (AP 40.6 for the baseline, the enc_layers=6 row).
# Only Table 2 gives parameters and GFLOPs; the other rows' models differ from the baseline in
# a few additions at most (learned_attention: 2 x 50 x 128 embeddings more).
_ABLATION = 'r50,epochs=300'
ABLATIONS = (
    # Table 2, encoder size: #layers 0 / 3 / 6 / 12.
    dict(model='DETR-R50 enc_layers=0', config=f'{_ABLATION},enc_layers=0', paper_params=33.4e6,
         paper_gflops=76, ap=36.7, source='DETR arXiv 2005.12872v3 Table 2 (encoder size)'),
    dict(model='DETR-R50 enc_layers=3', config=f'{_ABLATION},enc_layers=3', paper_params=37.4e6,
         paper_gflops=81, ap=40.1, source='DETR arXiv 2005.12872v3 Table 2 (encoder size)'),
    dict(model='DETR-R50 enc_layers=6', config=_ABLATION, paper_params=41.3e6, paper_gflops=86,
         ap=40.6, source='DETR arXiv 2005.12872v3 Tables 2-4 (the baseline)'),
    dict(model='DETR-R50 enc_layers=12', config=f'{_ABLATION},enc_layers=12',
         paper_params=49.2e6, paper_gflops=95, ap=41.6, source='DETR arXiv 2005.12872v3 Table 2 (encoder size)'),
    # Table 3, positional encodings: spatial (encoder / decoder), output.
    dict(model='DETR-R50 spatial_pos=none,output_pos=learned_input',  # none / none, at input
         config=f'{_ABLATION},spatial_pos=none,output_pos=learned_input', ap=32.8,
         source='DETR arXiv 2005.12872v3 Table 3 (positional encodings)'),
    dict(model='DETR-R50 spatial_pos=sine_input,output_pos=learned_input',  # sine at input
         config=f'{_ABLATION},spatial_pos=sine_input,output_pos=learned_input', ap=39.2,
         source='DETR arXiv 2005.12872v3 Table 3 (positional encodings)'),
    dict(model='DETR-R50 spatial_pos=learned_attention',  # learned at attn. (all three)
         config=f'{_ABLATION},spatial_pos=learned_attention', ap=39.6,
         source='DETR arXiv 2005.12872v3 Table 3 (positional encodings)'),
    dict(model='DETR-R50 spatial_pos=sine_attention_decoder',  # none / sine at attn.
         config=f'{_ABLATION},spatial_pos=sine_attention_decoder', ap=39.3,
         source='DETR arXiv 2005.12872v3 Table 3 (positional encodings)'),
    # Table 4, loss components (the matching keeps all three costs).
    dict(model='DETR-R50 loss=class_l1', config=f'{_ABLATION},loss=class_l1', ap=35.8,
         source='DETR arXiv 2005.12872v3 Table 4 (loss components)'),
    dict(model='DETR-R50 loss=class_giou', config=f'{_ABLATION},loss=class_giou', ap=39.9,
         source='DETR arXiv 2005.12872v3 Table 4 (loss components)'),
    # Section 3.2: the paper reports no AP without auxiliary losses.
    dict(model='DETR-R50 aux_loss=False', config=f'{_ABLATION},aux_loss=False', ap=None,
         source='DETR arXiv 2005.12872v3 section 3.2 (auxiliary decoding losses; no AP given)'),
)
# The paper's GFLOPs are Detectron2's flop_count_operators (one per multiply-add, bmm added)
# averaged over the first 100 COCO val2017 images at the eval size (800 px shorter side, at most
# 1333; detr issue #110). Those images' sizes are not at hand, so we count two fixed inputs that
# bracket the average: the largest (800 x 1333) and a 4:3 image at 800 (800 x 1067: COCO's most
# common shape, 640 x 480, resized); a test checks that every paper figure lies between them.
SIZES = ((800, 1333), (800, 1067))
GFLOPS_NOTE = ('paper: multiply-adds averaged over the first 100 COCO val2017 images at 800 px '
               '(at most 1333); ours at 800x1333 and 800x1067, which bracket it')


def _inputs(height: int, width: int):
  return (jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32),
          jax.ShapeDtypeStruct((1, height, width), jnp.int32))


# The input that parameters are created for (they do not depend on it): two-stage Deformable
# DETR keeps 300 of its tokens, which 128 x 128 has (340).
_PARAM_INPUT = (128, 128)


def _variables(model) -> dict:
  """The model's variable shapes; one trace serves every count and input size."""
  return model_stats.variable_shapes(model, *_inputs(*_PARAM_INPUT))


def _param_shapes(variables) -> dict:
  return flax.traverse_util.flatten_dict(flax.linen.meta.unbox(variables['params']), sep='/')


def trainable_count(model: models.DETR, prefix: str = '', variables=None) -> int:
  """Parameters the original trains: all but the frozen stem and layer1 (and the frozen
  batch-norm buffers, which are not parameters); `prefix`: where the box model sits;
  `variables`: `_variables(model)` if already traced."""
  frozen = (f'{prefix}backbone/conv1/', f'{prefix}backbone/layer1_')
  shapes = _param_shapes(_variables(model) if variables is None else variables)
  return int(sum(np.prod(v.shape) for k, v in shapes.items() if not k.startswith(frozen)))


# The released panoptic models: PQ and mask AP (things) from the paper's Table 5 (arXiv
# 2005.12872v3; the README repeats both, as "PQ" and "segm AP"), box AP from the README alone
# (no paper table has it). Neither gives parameters or GFLOPs. `config`: the
# configs/detr_panoptic.py argument (stage 2, the whole model; 250 classes).
PANOPTIC = (
    dict(model='DETR-R50 panoptic', config='r50,stage=masks', pq=43.4, mask_ap=31.1,
         readme_box_ap=38.8),
    dict(model='DETR-DC5-R50 panoptic', config='dc5_r50,stage=masks', pq=44.6, mask_ap=31.9,
         readme_box_ap=40.2),
    dict(model='DETR-R101 panoptic', config='r101,stage=masks', pq=45.1, mask_ap=33.0,
         readme_box_ap=40.1),
)
PANOPTIC_SOURCE = ('PQ and mask AP: DETR arXiv 2005.12872v3 Table 5, columns PQ and AP; box AP: '
                   'facebookresearch/detr README (panoptic model zoo); no parameters or GFLOPs '
                   'given')


def panoptic_row(entry: dict, model) -> dict:
  """A PANOPTIC entry and its `panoptic_model.DETRPanoptic`: parameters trained over both stages
  (all but the frozen stem and layer1), the mask head's alone (stage 2), and multiply-adds
  (the masks of all 100 queries at stride 4 included)."""
  variables = _variables(model)
  shapes = _param_shapes(variables)
  row = dict(model=entry['model'], config=f'configs/detr_panoptic.py:{entry["config"]}',
             params=trainable_count(model, prefix='detr/', variables=variables),
             mask_head_params=int(sum(np.prod(v.shape) for k, v in shapes.items()
                                      if not k.startswith('detr/'))),
             all_params=int(sum(np.prod(v.shape) for v in shapes.values())),
             paper_params=None, paper_gflops=None, paper_pq=entry['pq'],
             paper_mask_ap=entry['mask_ap'], readme_box_ap=entry['readme_box_ap'],
             source=PANOPTIC_SOURCE, gflops_note=GFLOPS_NOTE)
  for height, width in SIZES:
    row[f'gflops_{height}x{width}'] = model_stats.gflops(model, *_inputs(height, width),
                                                         variables=variables)
  return row


def counts(model: models.DETR) -> dict:
  """Trainable and all parameters, and multiply-adds at each of SIZES."""
  variables = _variables(model)
  result = dict(params=trainable_count(model, variables=variables),
                all_params=model_stats.parameter_count(model, variables=variables))
  for height, width in SIZES:
    result[f'gflops_{height}x{width}'] = model_stats.gflops(model, *_inputs(height, width),
                                                            variables=variables)
  return result


def table_row(entry: dict, model_counts: dict, config_file: str = 'detr_coco.py',
              source: str = SOURCE) -> dict:
  """`entry` of TABLE, ABLATIONS or DEFORMABLE with the `counts` of the model its config (in
  configs/`config_file`) builds, beside the paper's figures (None where the paper gives none)."""
  return dict(model=entry['model'], config=f'configs/{config_file}:{entry["config"]}',
              **model_counts, paper_params=entry.get('paper_params'),
              paper_gflops=entry.get('paper_gflops'), paper_ap=entry['ap'],
              source=entry.get('source', source), gflops_note=GFLOPS_NOTE)
