"""DETR weights from the official `.pth` files (and HF transformers' and torchvision's), and
starting a run from them.

The official state dict (`torch.load(f)['model']`) maps onto our tree by a rename table:
`transformer.encoder.layers.0.self_attn.in_proj_weight` [768, 256] splits into
`params/transformer/encoder/layers_0/self_attn/{query,key,value}/kernel` [256, 8, 32]; convs go
OIHW -> HWIO, linears [out, in] -> [in, out]; frozen batch-norm weight/bias/running_mean/
running_var become `frozen/.../{scale,bias,mean,var}`. HF's `DetrForObjectDetection` keys (timm
backbone) are first renamed to the official ones, and a bare torchvision ResNet state dict gives
the backbone alone (the way a COCO run starts from ImageNet weights). Files are read, and the
converted variables fitted into a model, by `vit_jax.framework.weights`. Files keep one entry per layer
(`layers_{i}`); a model with `scan=True` stacks them on loading (DETR_LAYERS).

Panoptic checkpoints (`detr-r50-panoptic-00ce5173.pth`, the DC5 and R101 ones, HF's
`DetrForSegmentation`) keep the box model under `detr.` and add `bbox_attention.*` and
`mask_head.*` (GroupNorms `gn1..gn5`): the same table puts them under `detr/`, `bbox_attention/`
and `mask_head/` of `panoptic_model.DETRPanoptic`.
"""

import re
from typing import Any

import flax
import numpy as np

from vit_jax.framework import weights
from vit_jax.framework.errors import UserError

Variables = dict[str, Any]

# The transformer's repeated layers (vit_jax.framework.weights.stack_layers): `transformer/encoder/
# layers_{i}` per layer, `transformer/encoder/layers` stacked under model.scan; the same in the
# decoder. The box head's `bbox_embed/layers_{i}` are not a stack.
DETR_LAYERS = r'transformer/(?:encoder|decoder)/layers'

# HF transformers' DETR names -> the official ones (HF's conversion table, reversed); both the
# 4.x layout (`conv_encoder.model`, `fc1`, `out_proj`) and the 5.x one (`backbone.model`,
# `mlp.fc1`, `o_proj`).
_HF_TO_OFFICIAL = [
    (r'^model\.backbone\.(conv_encoder\.)?model\.', 'backbone.0.body.'),
    (r'^model\.input_projection\.', 'input_proj.'),
    (r'^model\.query_position_embeddings\.', 'query_embed.'),
    (r'^model\.(encoder|decoder)\.layers\.', r'transformer.\1.layers.'),
    (r'^model\.decoder\.layernorm\.', 'transformer.decoder.norm.'),
    (r'^class_labels_classifier\.', 'class_embed.'),
    (r'^bbox_predictor\.', 'bbox_embed.'),
    (r'\.encoder_attn_layer_norm\.', '.norm2.'),
    (r'\.encoder_attn\.', '.multihead_attn.'),
    (r'\.self_attn_layer_norm\.', '.norm1.'),
    (r'(encoder\.layers\.\d+)\.final_layer_norm\.', r'\1.norm2.'),
    (r'(decoder\.layers\.\d+)\.final_layer_norm\.', r'\1.norm3.'),
    (r'\.(mlp\.)?fc(\d)\.', r'.linear\2.'),
    (r'\.o_proj\.', '.out_proj.'),
]
# HF 5.x's DetrForSegmentation head names -> the official ones (HF 4.x kept the official ones).
_HF_SEGMENTATION_TO_OFFICIAL = [
    (r'^bbox_attention\.(q|k)_proj\.', r'bbox_attention.\1_linear.'),
    (r'^mask_head\.conv(\d)\.conv\.', r'mask_head.lay\1.'),
    (r'^mask_head\.conv(\d)\.norm\.', r'mask_head.gn\1.'),
    (r'^mask_head\.fpn_stages\.(\d)\.fpn_adapter\.',
     lambda m: f'mask_head.adapter{int(m[1]) + 1}.'),
    (r'^mask_head\.fpn_stages\.(\d)\.refine\.conv\.', lambda m: f'mask_head.lay{int(m[1]) + 3}.'),
    (r'^mask_head\.fpn_stages\.(\d)\.refine\.norm\.', lambda m: f'mask_head.gn{int(m[1]) + 3}.'),
    (r'^mask_head\.output_conv\.', 'mask_head.out_lay.'),
]
_HF_QKV = re.compile(r'^(.*)\.(q|k|v)_proj\.(weight|bias)$')
_BN_LEAVES = {'weight': 'scale', 'bias': 'bias', 'running_mean': 'mean', 'running_var': 'var'}


def _official_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """HF or torchvision layouts -> the official DETR key layout (the official one is kept).
  Batch-norm step counters go: frozen batch norm has none (the original drops them too)."""
  state = {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')}
  if any(k.startswith('detr.model.') for k in state):  # HF's DetrForSegmentation.
    box = _official_names({k[len('detr.'):]: v for k, v in state.items() if k.startswith('detr.')})
    heads = {k: v for k, v in state.items() if not k.startswith('detr.')}
    for pattern, replacement in _HF_SEGMENTATION_TO_OFFICIAL:
      heads = {re.sub(pattern, replacement, k): v for k, v in heads.items()}
    return {**{f'detr.{k}': v for k, v in box.items()}, **heads}
  if any(k.startswith('model.') for k in state):  # HF transformers.
    return official_from_hf(state, _HF_TO_OFFICIAL)
  if 'conv1.weight' in state and 'layer1.0.conv1.weight' in state:  # torchvision ResNet.
    return {f'backbone.0.body.{k}': v for k, v in state.items() if not k.startswith('fc.')}
  return state


def official_from_hf(state: dict[str, np.ndarray], table) -> dict[str, np.ndarray]:
  """HF transformers' keys renamed by `table` ((pattern, replacement) pairs, applied in order),
  and HF's separate q/k/v projections fused back into the official `in_proj_{weight,bias}`."""
  renamed, fused = {}, {}
  for key, value in state.items():
    for pattern, replacement in table:
      key = re.sub(pattern, replacement, key)
    qkv = _HF_QKV.match(key)
    if qkv:
      fused.setdefault(f'{qkv[1]}.in_proj_{qkv[3]}', {})[qkv[2]] = value
    else:
      renamed[key] = value
  for key, parts in fused.items():
    renamed[key] = np.concatenate([parts['q'], parts['k'], parts['v']])
  return renamed


def _path(key: str) -> list[str]:
  """'a.layers.0.b' -> ['a', 'layers_0', 'b'] (numbered children get Flax names)."""
  return re.sub(r'\.(\d+)(?=\.|$)', r'_\1', key).split('.')


def convert_state_dict(state: dict[str, np.ndarray], num_heads: int = 8) -> Variables:
  """An official (or HF / torchvision) DETR or panoptic DETR state dict -> {'params': ...,
  'frozen': ...}; a panoptic model's box model (`detr.*`) goes under 'detr'."""
  state = _official_names(state)
  flat: dict[tuple[str, ...], np.ndarray] = {}
  bn_modules = {k.rsplit('.', 1)[0] for k in state if k.endswith('.running_mean')}
  unused = []
  for full_key, value in state.items():
    scope, key = (('detr',), full_key[len('detr.'):]) if full_key.startswith('detr.') else \
        ((), full_key)
    module, leaf = key.rsplit('.', 1)
    if key.startswith('backbone.0.body.'):
      path = _path(module[len('backbone.0.body.'):])
      if full_key.rsplit('.', 1)[0] in bn_modules and leaf in _BN_LEAVES:
        flat[('frozen', *scope, 'backbone', *path, _BN_LEAVES[leaf])] = value
      elif leaf == 'weight' and value.ndim == 4:
        flat[('params', *scope, 'backbone', *path, 'kernel')] = value.transpose(2, 3, 1, 0)
      else:
        unused.append(full_key)
      continue
    path = [*scope, *_path(module)]
    if leaf.startswith('in_proj_'):
      for name, part in weights.split_torch_qkv(value, num_heads).items():
        flat[('params', *path, *name.split('/'))] = part
    elif path[-1] == 'out_proj' and leaf == 'weight':
      flat[('params', *path, 'kernel')] = weights.torch_out_projection(value, num_heads)
    elif key == 'query_embed.weight':
      flat[('params', *scope, 'query_embed')] = value
    elif leaf == 'weight' and value.ndim == 4:
      flat[('params', *path, 'kernel')] = value.transpose(2, 3, 1, 0)
    elif leaf == 'weight' and value.ndim == 2:
      flat[('params', *path, 'kernel')] = value.T
    elif leaf == 'weight' and ('norm' in path[-1] or re.fullmatch(r'gn\d+', path[-1])):
      flat[('params', *path, 'scale')] = value  # LayerNorm, or the mask head's GroupNorm.
    elif leaf == 'bias':
      flat[('params', *path, 'bias')] = value
    else:
      unused.append(full_key)
  if unused:
    raise UserError(f'{len(unused)} tensors of the checkpoint have no place in DETR '
                    f'({weights.first_names(unused)}): is it a DETR (or ResNet) checkpoint?')
  return flax.traverse_util.unflatten_dict(flat)


def load_variables(path: str, num_heads: int = 8) -> Variables:
  """A `.pth` (official DETR, HF DETR or torchvision ResNet) or our converted `.npz`."""
  if path.endswith('.npz'):
    return weights.unflatten(weights.read_npz(path))
  return convert_state_dict(weights.read_pth(path), num_heads)


def fit_variables(fresh: Variables, loaded: Variables, source: str = 'the checkpoint'
                  ) -> Variables:
  """Fresh variables with every tensor the checkpoint (named `source` in messages) has put in
  its place.

  Per-layer checkpoints fill a scanned model (`scan=True`) and stacked ones a per-layer model.
  A class head of another size (fine-tuning on your own classes) stays freshly initialised; a
  backbone-only checkpoint leaves the transformer and heads fresh. A panoptic model takes a box
  model's checkpoint (the recipe's first stage, or a detection release, as the original's
  --frozen_weights) into its `detr`, the mask head staying fresh; a DETR takes the box model out
  of a panoptic checkpoint.
  """
  optional = [r'params/(detr/)?class_embed/.*']
  if all(k.split('/')[1] == 'backbone' for k in weights.flatten(loaded)):
    # Transformer and heads: no ImageNet weights.
    optional.append(r'params/(?!(detr/)?backbone/).*')
  if 'detr' in fresh['params'] and 'detr' not in loaded['params']:
    loaded = {collection: {'detr': tree} for collection, tree in loaded.items()}
    optional.append(r'params/(bbox_attention|mask_head)/.*')
  elif 'detr' in loaded['params'] and 'detr' not in fresh['params']:
    loaded = {collection: tree['detr'] for collection, tree in loaded.items()}
  return weights.fill(fresh, loaded, optional=optional, source=source, layers=DETR_LAYERS,
                      fix='check config.model (backbone_depth, hidden_dim, num_queries, '
                      'dilation, layer counts)')
