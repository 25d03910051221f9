"""Segmenter weights: the encoder from ViT checkpoints, and the official Segmenter releases.

- `init_encoder_from_vit`: an official ViT `.npz` (AugReg, i21k, ...) fills `params['encoder']`;
  `head` and `pre_logits` are dropped and the position embeddings resized to the crop's grid as
  the original does (bilinear, align_corners off).
- `init_encoder_from_timm`: the same from a timm/DeiT `.pth` state dict (Segmenter's DeiT
  backbones), class and distillation tokens kept apart when resizing.
- `convert_official`: an official `checkpoint.pth` state dict plus its `variant.yml` -> our
  params and model config fields; every tensor is mapped or named as unused (the encoder's
  1000-class `head` and DeiT's `head_dist`), anything else is an error.
- `load_pretrained`: any of the above (or a converted `.npz`) by file, for `config.init_from`.

Files are read, and the converted params fitted into a model, by `vit_jax.framework.weights`.

Official names -> ours (reference/segmenter.md §5.3; H heads, hd = d / H):
  encoder.cls_token / dist_token / pos_embed -> encoder/cls / dist /
      Transformer/posembed_input/pos_embedding
  encoder.patch_embed.proj.{weight (O,I,kh,kw), bias} -> encoder/embedding/{kernel (kh,kw,I,O),
      bias}
  {encoder,decoder}.blocks.i.norm1 / norm2 -> .../LayerNorm_0 / LayerNorm_1 {scale, bias}
  ....attn.qkv.weight (3d, d) -> .../MultiHeadDotProductAttention_0/{query,key,value}/kernel
      (d, H, hd), rows split q, k, v; qkv.bias -> .../bias (H, hd)
  ....attn.proj -> .../MultiHeadDotProductAttention_0/out/kernel (H, hd, d)
  ....mlp.fc1 / fc2 -> .../MlpBlock_0/Dense_0 / Dense_1; linear weights are transposed
  encoder.norm -> encoder/Transformer/encoder_norm
  decoder.head (linear decoder), decoder.proj_dec, decoder.decoder_norm, decoder.mask_norm,
  decoder.cls_emb -> the same names; decoder.proj_patch / proj_classes are used as x @ P in the
  original and kept as they are (no transpose).
"""

import os
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from absl import logging

from segmenter_jax import models
from vit_jax.classification import vit_weights
from vit_jax.framework import paths, weights
from vit_jax.framework.errors import UserError

Params = dict[str, Any]

# Unused in segmentation: the ImageNet heads the official encoder keeps.
UNUSED_OFFICIAL = ('encoder.head.weight', 'encoder.head.bias', 'encoder.head_dist.weight',
                   'encoder.head_dist.bias')
# Input normalisation of each backbone family (`normalization` in variant.yml).
NORMALIZATION = {'vit': dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
                 'deit': dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))}

_POSEMB = f'encoder/{vit_weights.VIT_POSEMB}'
_DECODER = (r'decoder/.*',)  # Stays fresh when only the encoder comes from a checkpoint.


class _VariantLoader(yaml.SafeLoader):
  """Safe YAML plus the one Python tag variant.yml uses (`image_size` is a dumped tuple)."""


_VariantLoader.add_constructor('tag:yaml.org,2002:python/tuple',
                               lambda loader, node: tuple(loader.construct_sequence(node)))


def read_variant_yml(path: str) -> dict:
  """An official `variant.yml` as a dict (no arbitrary Python objects are built)."""
  try:
    with paths.open(path) as f:
      return yaml.load(f, Loader=_VariantLoader)
  except FileNotFoundError:
    raise UserError(f'{path!r} does not exist: the official checkpoint.pth comes with a '
                    'variant.yml in the same folder; pass its path') from None
  except yaml.YAMLError as e:
    raise UserError(f'cannot read {path!r} as YAML: {str(e).splitlines()[0]}') from None


# ------------------------------------------------------------------------ official -> ours


def _net_kwargs(variant_yml: dict) -> dict:
  net = variant_yml.get('net_kwargs', variant_yml)
  if not isinstance(net, dict) or 'd_model' not in net or 'decoder' not in net:
    raise UserError('variant.yml has no net_kwargs with d_model and decoder: is it the '
                    'variant.yml of an official Segmenter checkpoint?')
  return net


def model_fields(variant_yml: dict) -> dict:
  """build_segmenter fields of the model an official variant.yml describes."""
  net = _net_kwargs(variant_yml)
  decoder = net['decoder']
  name = decoder.get('name')
  if name not in models.DECODERS:
    raise UserError(f'variant.yml names decoder {name!r}; known: {models.DECODERS}')
  d = int(net['d_model'])
  fields = dict(
      hidden_size=d, num_layers=int(net['n_layers']), num_heads=int(net['n_heads']),
      mlp_dim=int(net.get('d_ff') or 4 * d), patch_size=int(net['patch_size']),
      image_size=tuple(int(s) for s in net['image_size']), distilled=bool(net.get('distilled')),
      num_classes=int(net.get('n_cls') or decoder['n_cls']), decoder=name,
      dropout_rate=float(net.get('dropout', 0.0)),
      drop_path_rate=float(net.get('drop_path_rate', 0.0)))
  if name == 'mask_transformer':
    fields.update(decoder_layers=int(decoder['n_layers']),
                  decoder_num_heads=int(decoder.get('n_heads') or d // 64),
                  decoder_dropout_rate=float(decoder.get('dropout', 0.0)),
                  decoder_drop_path_rate=float(decoder.get('drop_path_rate', 0.0)))
  return fields


def input_normalization(variant_yml: dict) -> dict:
  """mean and std (per channel, for images in [0, 1]) the checkpoint was trained with."""
  norm = _net_kwargs(variant_yml).get('normalization', 'vit')
  if norm not in NORMALIZATION:
    raise UserError(f'variant.yml names normalization {norm!r}; known: {sorted(NORMALIZATION)}')
  return NORMALIZATION[norm]


def _encoder_leaves(key: str, value: np.ndarray, num_heads: int) -> dict[str, np.ndarray]:
  """One tensor of a timm-layout ViT state dict (no prefix) -> our `encoder/...` leaves."""
  return {f'encoder/{name}': leaf
          for name, leaf in vit_weights.timm_vit_leaves(key, value, num_heads).items()}


def _decoder_leaves(key: str, value: np.ndarray, num_heads: int) -> dict[str, np.ndarray]:
  """One tensor of the official decoder (no prefix) -> our `decoder/...` leaves."""
  block = re.fullmatch(r'blocks\.(\d+)\.(.+)', key)
  if block:
    return vit_weights.timm_block_leaves(f'decoder/blocks_{block[1]}', block[2], value, num_heads)
  if key in ('cls_emb', 'proj_patch', 'proj_classes'):
    return {f'decoder/{key}': value}  # Used as x @ P: no transpose.
  module, leaf = key.rsplit('.', 1)
  if module in ('decoder_norm', 'mask_norm'):
    return {f'decoder/{module}/{"scale" if leaf == "weight" else "bias"}': value}
  if module in ('head', 'proj_dec'):
    return {f'decoder/{module}/{"kernel" if leaf == "weight" else "bias"}':
            value.T if leaf == 'weight' else value}
  raise KeyError(key)


def _expected_shapes(fields: dict) -> dict[str, jax.ShapeDtypeStruct]:
  model = models.build_segmenter(fields)
  size = fields['image_size']
  images = jax.ShapeDtypeStruct((1,) + tuple(size) + (3,), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
  return weights.flatten(shapes['params'])


def convert_official(state_dict: dict, variant_yml: dict) -> tuple[Params, dict]:
  """An official Segmenter state dict (`torch.load(...)['model']`, tensors or numpy) and its
  variant.yml -> (params, build_segmenter fields)."""
  fields = model_fields(variant_yml)
  flat, unknown = {}, []
  for key, value in state_dict.items():
    value = np.asarray(value.detach().float().numpy() if hasattr(value, 'detach') else value)
    part, _, rest = key.partition('.')
    if key in UNUSED_OFFICIAL:
      logging.info('Unused official tensor %s %s (the ImageNet head).', key, value.shape)
      continue
    try:
      if part == 'encoder':
        flat.update(_encoder_leaves(rest, value, fields['num_heads']))
      elif part == 'decoder':
        flat.update(_decoder_leaves(rest, value, fields.get('decoder_num_heads', 1)))
      else:
        raise KeyError(key)
    except KeyError:
      unknown.append(key)
  if unknown:
    raise UserError(f'official state dict has tensors with no place in Segmenter: '
                    f'{weights.first_names(unknown)} (is it a Segmenter checkpoint.pth?)')
  weights.check_fit(flat, _expected_shapes(fields), 'official state dict',
                    'check that variant.yml belongs to this checkpoint.pth')
  return weights.unflatten(flat), fields


def load_official(pth_path: str, variant_yml_path: Optional[str] = None) -> tuple[Params, dict]:
  """convert_official on files; variant.yml defaults to the one beside checkpoint.pth."""
  variant_yml_path = variant_yml_path or os.path.join(os.path.dirname(pth_path), 'variant.yml')
  return convert_official(weights.read_pth(pth_path), read_variant_yml(variant_yml_path))


# ------------------------------------------------------------------------- encoder from ViT


def _fill(params: Params, loaded: dict[str, np.ndarray], source: str,
          grid: Optional[tuple[int, int]], optional: tuple[str, ...] = ()) -> Params:
  """params filled from `loaded` (flat), the position embeddings resized to `grid` (default:
  the model's square grid) bilinearly, align_corners off, as Segmenter does."""
  return weights.fill(
      params, loaded, optional=optional, source=source, layers=vit_weights.VIT_LAYERS,
      resize=weights.PosembResize(_POSEMB, vit_weights.prefix_tokens(params['encoder']),
                                  'bilinear', grid),
      fix='check config.model (variant, decoder, num_classes, image_size)')


def init_encoder_from_vit(params: Params, npz_path: str,
                          grid: Optional[tuple[int, int]] = None) -> Params:
  """Fresh Segmenter params with the encoder from an official ViT `.npz`.

  `head` and `pre_logits` are dropped; position embeddings are resized to `grid` (default: the
  square grid of the model's own position embeddings, i.e. the crop's); the decoder stays
  fresh. Every decision is logged; anything that does not fit raises a one-line UserError.
  """
  return _encoder_from_vit(params, weights.read_npz(npz_path), f'ViT checkpoint {npz_path}',
                           grid)


def _encoder_from_vit(params: Params, official: dict[str, np.ndarray], source: str,
                      grid: Optional[tuple[int, int]]) -> Params:
  restored = vit_weights.from_official_vit(official)
  for name in ('head', 'pre_logits'):
    if name in restored:
      logging.info('Dropping %s from %s: Segmenter has its own decoder.', name, source)
      del restored[name]
  encoder = {f'encoder/{k}': v for k, v in weights.flatten(restored).items()}
  return _fill(params, encoder, source, grid, optional=_DECODER)


def init_encoder_from_timm(params: Params, state_dict: dict, num_heads: int,
                           grid: Optional[tuple[int, int]] = None, source: str = 'timm ViT'
                           ) -> Params:
  """As init_encoder_from_vit, from a timm-layout ViT/DeiT state dict (the DeiT backbones);
  `head` and `head_dist` are dropped."""
  encoder, unknown = {}, []
  for key, value in state_dict.items():
    if key.split('.')[0] in ('head', 'head_dist', 'pre_logits', 'fc_norm'):
      logging.info('Dropping %s from %s: Segmenter has its own decoder.', key, source)
      continue
    try:
      encoder.update(_encoder_leaves(key, np.asarray(value), num_heads))
    except KeyError:
      unknown.append(key)
  if unknown:
    raise UserError(f'{source} has tensors that are not a plain ViT: '
                    f'{weights.first_names(unknown)}')
  return _fill(params, encoder, source, grid, optional=_DECODER)


def load_pretrained(params: Params, path: str, model: models.Segmenter) -> Params:
  """`config.init_from` for Segmenter: an official ViT `.npz` (encoder only), a timm/DeiT
  `.pth` (encoder only), an official Segmenter `checkpoint.pth` (variant.yml beside it), or
  our converted `.npz` (whole model); position embeddings resized to `model`'s crop grid."""
  num_heads, grid = model.encoder.num_heads, model.encoder.posemb_grid
  if path.endswith('.pth'):
    state = weights.read_pth(path)
    if not any(k.startswith('encoder.') for k in state):
      return init_encoder_from_timm(params, state, num_heads, grid, f'ViT checkpoint {path}')
    variant = read_variant_yml(os.path.join(os.path.dirname(path), 'variant.yml'))
    loaded, _ = convert_official(state, variant)
    return _fill(params, loaded, f'checkpoint {path}', grid)
  arrays = weights.read_npz(path)
  if not any(k.startswith('encoder/') for k in arrays):  # An official ViT file, not ours.
    return _encoder_from_vit(params, arrays, f'ViT checkpoint {path}', grid)
  return _fill(params, arrays, f'checkpoint {path}', grid)
