"""Deformable DETR weights from the released `.pth` files (and HF transformers'
DeformableDetrForObjectDetection), by rename tables onto deformable_models.DeformableDETR.

Official names -> ours: `transformer.` is dropped; `input_proj.N.{0,1}` (conv, GroupNorm) ->
`input_proj_N/{conv,norm}`; the heads by variant: without refinement the 6 saved copies of the
one shared head -> `class_embed`, `bbox_embed`; with it `class_embed.N` -> `class_embed_N` and
`bbox_embed.N` -> `decoder/layers_N/bbox_embed` (its alias `transformer.decoder.bbox_embed.N`
is the same tensor), two-stage's encoder heads (index = decoder layers) -> `class_embed_L`,
`bbox_embed_L`. The rest is DETR's conversion (detr_jax/pretrained.py: OIHW -> HWIO, [out, in]
-> [in, out], fused in_proj split into query/key/value, frozen batch norm) and a bare
torchvision ResNet gives the backbone alone.
"""

import re

import numpy as np

from detr_jax import pretrained
from vit_jax.framework import weights
from vit_jax.framework.errors import UserError

Variables = pretrained.Variables

# The encoder's and decoder's repeated layers (vit_jax.framework.weights.stack_layers).
LAYERS = r'(?:encoder|decoder)/layers'

# HF transformers' names -> the official ones: HF's conversion table, reversed.
_HF_TO_OFFICIAL = [
    (r'^model\.backbone\.(conv_encoder\.)?model\.', 'backbone.0.body.'),
    (r'^model\.input_proj\.', 'input_proj.'),
    (r'^model\.query_position_embeddings\.', 'query_embed.'),
    (r'^model\.(level_embed|encoder|decoder|reference_points|enc_output|enc_output_norm|'
     r'pos_trans|pos_trans_norm)\b', r'transformer.\1'),
    (r'(encoder\.layers\.\d+)\.self_attn_layer_norm\.', r'\1.norm1.'),
    (r'(encoder\.layers\.\d+)\.final_layer_norm\.', r'\1.norm2.'),
    (r'(decoder\.layers\.\d+)\.self_attn_layer_norm\.', r'\1.norm2.'),
    (r'(decoder\.layers\.\d+)\.encoder_attn_layer_norm\.', r'\1.norm1.'),
    (r'(decoder\.layers\.\d+)\.final_layer_norm\.', r'\1.norm3.'),
    (r'\.encoder_attn\.', '.cross_attn.'),
    (r'\.(mlp\.)?fc(\d)\.', r'.linear\2.'),
    (r'\.o_proj\.', '.out_proj.'),
]


def _official_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """HF's layout -> the official one (which is kept as it is)."""
  state = {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')}
  if not any(k.startswith('model.') for k in state):
    return state
  return pretrained.official_from_hf(state, _HF_TO_OFFICIAL)


def _our_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Official names -> ours, dotted (pretrained.convert_state_dict takes them from there)."""
  refine = any(k.startswith('transformer.decoder.bbox_embed.') for k in state)
  decoder_layers = len({m[1] for k in state
                        for m in [re.match(r'transformer\.decoder\.layers\.(\d+)\.', k)] if m})
  renamed = {}
  for key, value in state.items():
    if re.match(r'transformer\.decoder\.(bbox|class)_embed\.', key):
      continue  # Aliases of the top-level heads.
    key = re.sub(r'^transformer\.', '', key)
    key = re.sub(r'^input_proj\.(\d+)\.0\.', r'input_proj_\1.conv.', key)
    key = re.sub(r'^input_proj\.(\d+)\.1\.', r'input_proj_\1.norm.', key)
    head = re.match(r'^(class|bbox)_embed\.(\d+)\.(.*)$', key)
    if head:
      kind, index, rest = head[1], int(head[2]), head[3]
      if not refine:  # One shared head saved once per decoder layer.
        if index:
          continue
        key = f'{kind}_embed.{rest}'
      elif kind == 'bbox' and index < decoder_layers:
        key = f'decoder.layers.{index}.bbox_embed.{rest}'
      else:
        key = f'{kind}_embed_{index}.{rest}'
    renamed[key] = value
  return renamed


def is_deformable(state: dict[str, np.ndarray]) -> bool:
  """Whether a state dict (official or HF) is a Deformable DETR's: it has sampling offsets."""
  return any('.sampling_offsets.' in k for k in state)


def convert_state_dict(state: dict[str, np.ndarray], num_heads: int = 8) -> Variables:
  """An official or HF Deformable DETR state dict (or a torchvision ResNet's) -> {'params':
  ..., 'frozen': ...} of DeformableDETR."""
  state = _our_names(_official_names(state))
  level_embed = state.pop('level_embed', None)
  variables = pretrained.convert_state_dict(state, num_heads)
  if level_embed is not None:
    variables['params']['level_embed'] = level_embed
  return variables


def load_variables(path: str, num_heads: int = 8) -> Variables:
  """A `.pth` (official or HF Deformable DETR, or torchvision ResNet) or our converted `.npz`."""
  if path.endswith('.npz'):
    return weights.unflatten(weights.read_npz(path))
  try:
    return convert_state_dict(weights.read_pth(path), num_heads)
  except UserError as e:
    raise UserError(str(e).replace('in DETR', 'in Deformable DETR')) from e


def fit_variables(fresh: Variables, loaded: Variables, source: str = 'the checkpoint'
                  ) -> Variables:
  """Fresh variables with every tensor of the checkpoint (named `source` in messages) in its
  place: class heads of another size (your own classes) stay fresh; a backbone-only checkpoint
  leaves everything else fresh; scanned and per-layer layouts load into each other."""
  optional = [r'params/class_embed(_\d+)?/.*']
  if all(k.split('/')[1] == 'backbone' for k in weights.flatten(loaded)):
    optional.append(r'params/(?!backbone/).*')
  return weights.fill(fresh, loaded, optional=optional, source=source, layers=LAYERS,
                      fix='check config.model (backbone_depth, num_feature_levels, '
                      'with_box_refine, two_stage, num_queries, layer counts)')
