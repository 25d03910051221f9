"""Segmenter (Strudel et al. 2021), exact to rstrudel/segmenter (reference/segmenter.md §1).

images [B, H, W, 3] (normalised) -> padded bottom/right with zeros to a multiple of the patch
size -> vit_jax's ViT encoder (Segmenter numerics: LayerNorm eps 1e-5, erf GELU, timm init,
stochastic depth) -> class (and DeiT distillation) tokens dropped after the final norm ->
decoder ('linear' or 'mask_transformer') on the patch grid -> bilinear upsampling (half-pixel,
as torch align_corners=False) -> unpadded logits [B, H, W, num_classes].

Parameters: `encoder/...` is exactly vit_jax's ViT tree (`embedding`, `cls`, `dist`,
`Transformer/posembed_input/pos_embedding`, `Transformer/encoderblock_i/...`,
`Transformer/encoder_norm`), so an official ViT `.npz` fills it; `decoder/...` follows the
official names (`head`; or `proj_dec`, `cls_emb`, `blocks_i`, `decoder_norm`, `proj_patch`,
`proj_classes`, `mask_norm`). The position embeddings are stored for the crop's patch grid
(`image_size // patch_size`) and resized on the fly (bilinear, align_corners off) for any other
grid, so the same params run at the crop size, at other window sizes and on padded images.
(The original resizes only when the token count differs, so e.g. 16x64 after 32x32 is not
resized there; here any other grid is. Equal for every square window.)

Model config fields (`build_segmenter`):
  variant         ViT size/patch: 'Ti/16', 'S/16', 'B/16', 'L/16', 'B/8', 'S/32', 'B/32', 'L/32',
                  or 'DeiT-B/16' (also DeiT-Ti/16, DeiT-S/16): the distilled DeiT, whose
                  distillation token is dropped like the class token.
  image_size      crop size (int or (h, w)): the grid the position embeddings are stored for.
  num_classes     K.
  decoder         'linear' | 'mask_transformer'.
  decoder_layers  mask transformer blocks (2; 1 for the official Cityscapes Seg-L).
  dropout_rate    encoder dropout (0.0, the official default).
  drop_path_rate  encoder stochastic depth of the last block, linear from 0 (0.1).
  decoder_dropout_rate, decoder_drop_path_rate   the mask transformer's (0.1, 0.0).
  attention_dropout_rate   the dropout on the attention weights in encoder and decoder (None:
                  each one's dropout rate, the original's; 0 lets the attention kernel train).
  hidden_size, num_layers, num_heads, mlp_dim, patch_size, distilled   override the variant.
  decoder_num_heads   mask transformer heads (default: the encoder's, = width / 64 for every
                  released size).
  dtype, remat, scan   as for vit_jax's ViT (compute dtype, per-block rematerialisation
                  policy, encoder blocks under nn.scan).

Methods (for `model.apply(..., method=...)`): `__call__` (logits at the input resolution),
`patch_logits` (mask logits on the padded patch grid, before upsampling), `encode` (patch
tokens after the encoder's final norm, [B, H', W', D]).

Class-embedding features for the notebook: the mask transformer sows, in 'intermediates',
`class_features` [B, K, D] (the L2-normalised class embeddings after `proj_classes`),
`patch_features` [B, N, D] and `scores` [B, N, K] (cosine similarities, before mask_norm):

  logits, state = model.apply(variables, images, train=False, mutable=['intermediates'])
  classes = state['intermediates']['decoder']['class_features'][0]  # [B, K, D]
  similarity = classes @ classes.transpose(0, 2, 1)

(The learned embeddings themselves, before the blocks, are `params['decoder']['cls_emb']`.)
"""

from typing import Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.classification import vit as vit_models
from vit_jax.framework.errors import UserError
from vit_jax.layers import normalization, remat
from vit_jax.layers.attention_kernels import attention_name

# Segmenter's numerics: torch LayerNorm and GELU defaults (reference/segmenter.md §1.3).
LAYER_NORM_EPSILON = 1e-5
DECODERS = ('linear', 'mask_transformer')

_trunc_normal = nn.initializers.normal(stddev=0.02)  # timm's trunc_normal_(0.02): see vit_jax.
_zeros = nn.initializers.zeros


def _partitioned(init, names):
  return nn.with_logical_partitioning(init, names)


class DecoderLinear(nn.Module):
  """Linear(d, K) on every patch token (`DecoderLinear`)."""
  num_classes: int

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train  # No dropout here, as in the original.
    return nn.Dense(self.num_classes, dtype=x.dtype, name='head',
                    kernel_init=_partitioned(_trunc_normal, ('embed', 'classes')),
                    bias_init=_partitioned(_zeros, ('classes',)))(x)


class MaskTransformer(nn.Module):
  """Class embeddings appended as the last K tokens, transformer blocks over patches and classes,
  then masks = LayerNorm_K(normalise(patches @ P_p) . normalise(classes @ P_c)^T) (§1.7)."""
  num_classes: int
  num_layers: int = 2
  num_heads: int = 12
  mlp_dim: Optional[int] = None  # Default 4 * width.
  dropout_rate: float = 0.1
  drop_path_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  attention: str = 'auto'  # See vit_jax.layers.attention_kernels.
  attention_dropout_rate: Optional[float] = None  # On the attention weights; None: dropout_rate.

  @nn.compact
  def __call__(self, x, *, train: bool):
    """x: [B, N, D] patch tokens -> [B, N, K] mask logits (before upsampling)."""
    k, width = self.num_classes, x.shape[-1]
    # From the encoder's width to the decoder's (equal here, as in every released model).
    x = nn.Dense(width, dtype=self.dtype, name='proj_dec',
                 kernel_init=_partitioned(_trunc_normal, ('encoder_embed', 'embed')),
                 bias_init=_partitioned(_zeros, ('embed',)))(x)
    cls_emb = self.param('cls_emb', _partitioned(_trunc_normal, (None, 'classes', 'embed')),
                         (1, k, width))
    x = jnp.concatenate([x, jnp.tile(cls_emb.astype(x.dtype), (x.shape[0], 1, 1))], axis=1)
    attention_dropout = (self.dropout_rate if self.attention_dropout_rate is None
                         else self.attention_dropout_rate)
    for i in range(self.num_layers):
      rate = self.drop_path_rate * i / (self.num_layers - 1) if self.num_layers > 1 else 0.0
      x = vit_models.Encoder1DBlock(
          self.mlp_dim or 4 * width, self.num_heads, self.dropout_rate, attention_dropout,
          LAYER_NORM_EPSILON, gelu_approximate=False, dtype=self.dtype, drop_path_rate=rate,
          weight_init='timm', attention=self.attention, name=f'blocks_{i}')(x, train)
    x = normalization.LayerNorm(LAYER_NORM_EPSILON, self.dtype, name='decoder_norm')(x)
    patches, classes = x[:, :-k], x[:, -k:]
    # Raw (d, d) parameters used as x @ P (no bias), initialised d^-0.5 * randn: into the space
    # where patches and classes are compared.
    projection = _partitioned(nn.initializers.normal(stddev=width**-0.5),
                              ('embed', 'mask_embed'))
    patches = patches @ self.param('proj_patch', projection, (width, width)).astype(x.dtype)
    classes = classes @ self.param('proj_classes', projection, (width, width)).astype(x.dtype)
    # No epsilon, as in the original.
    patches = patches / jnp.linalg.norm(patches, axis=-1, keepdims=True)
    classes = classes / jnp.linalg.norm(classes, axis=-1, keepdims=True)
    scores = patches @ classes.transpose(0, 2, 1)
    self.sow('intermediates', 'patch_features', patches)
    self.sow('intermediates', 'class_features', classes)
    self.sow('intermediates', 'scores', scores)
    return normalization.LayerNorm(LAYER_NORM_EPSILON, self.dtype, name='mask_norm',
                                scale_init=_partitioned(nn.initializers.ones, ('classes',)),
                                bias_init=_partitioned(_zeros, ('classes',)))(scores)


class Segmenter(nn.Module):
  """Encoder + decoder, padding and unpadding, logits at the input resolution."""
  encoder: vit_models.VisionTransformer  # classifier='token_unpooled', num_classes=None.
  decoder: nn.Module  # DecoderLinear or MaskTransformer: [B, N, D] -> [B, N, K].

  @property
  def num_prefix_tokens(self) -> int:
    return 1 + int(self.encoder.distilled)

  def encode(self, images, *, train: bool = False):
    """[B, H, W, 3] -> patch tokens after the final norm, [B, H', W', D] on the padded grid."""
    p = self.encoder.patch_size
    height, width = images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (0, -height % p), (0, -width % p), (0, 0)))
    tokens = self.encoder(padded, train=train)[:, self.num_prefix_tokens:]
    return tokens.reshape((images.shape[0], padded.shape[1] // p, padded.shape[2] // p, -1))

  def patch_logits(self, images, *, train: bool = False):
    """[B, H, W, 3] -> mask logits on the padded patch grid [B, H', W', K] (before upsampling)."""
    tokens = self.encode(images, train=train)
    batch, grid_h, grid_w, channels = tokens.shape
    masks = self.decoder(tokens.reshape(batch, grid_h * grid_w, channels), train=train)
    return masks.reshape(batch, grid_h, grid_w, -1).astype(jnp.float32)

  def __call__(self, images, *, train: bool):
    """[B, H, W, 3] float32 (normalised) -> logits [B, H, W, num_classes] (float32)."""
    height, width = images.shape[1:3]
    masks = self.patch_logits(images, train=train)
    batch, grid_h, grid_w, classes = masks.shape
    p = self.encoder.patch_size
    masks = jax.image.resize(masks, (batch, grid_h * p, grid_w * p, classes), 'bilinear',
                             antialias=False)
    return masks[:, :height, :width]


def decode_variant(variant: str) -> dict:
  """'S/16' -> ViT fields; 'DeiT-B/16' -> the same with distilled=True."""
  deit = variant.startswith('DeiT-')
  try:
    fields = vit_models.decode_variant(variant[len('DeiT-'):] if deit else variant)
  except UserError:
    fields = None
  if fields is None or 'resnet' in fields:
    raise UserError(f'unknown Segmenter variant {variant!r}: use SIZE/PATCH (Ti/16, S/16, B/16, '
                    'L/16, B/8, B/32, ...) or DeiT-B/16 (DeiT-Ti/16, DeiT-S/16)')
  return dict(fields, distilled=deit)


_DEFAULTS = dict(decoder_layers=2, dropout_rate=0.0, drop_path_rate=0.1,
                 decoder_dropout_rate=0.1, decoder_drop_path_rate=0.0, distilled=False,
                 decoder_num_heads=None, dtype=jnp.float32, remat='none', scan=False,
                 attention='auto', attention_dropout_rate=None)
_SIZE_FIELDS = ('hidden_size', 'num_layers', 'num_heads', 'mlp_dim', 'patch_size')
FIELDS = frozenset(('variant', 'name', 'image_size', 'num_classes', 'decoder') + _SIZE_FIELDS
                   + tuple(_DEFAULTS))


def _grid(image_size: Union[int, tuple[int, int]], patch_size: int) -> tuple[int, int]:
  size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  if len(size) != 2 or any(s % patch_size or s <= 0 for s in size):
    raise UserError(f'model image_size {image_size} must be a positive multiple of the patch '
                    f'size {patch_size} (the crop size)')
  return size[0] // patch_size, size[1] // patch_size


def build_segmenter(model_config) -> Segmenter:
  """The model named by a config (fields in the module docstring)."""
  fields = dict(model_config)
  unknown = set(fields) - FIELDS
  if unknown:
    raise UserError(f'unknown Segmenter model fields {sorted(unknown)}: use {sorted(FIELDS)}')
  for required in ('image_size', 'num_classes', 'decoder'):
    if fields.get(required) is None:
      raise UserError(f'Segmenter model config needs {required} (see segmenter_jax/models.py)')
  kwargs = dict(_DEFAULTS)
  if fields.get('variant'):
    kwargs.update(decode_variant(fields['variant']))
  kwargs.update({k: v for k, v in fields.items()
                 if v is not None and k not in ('variant', 'name')})
  missing = [k for k in _SIZE_FIELDS if k not in kwargs]
  if missing:
    raise UserError(f'Segmenter model config needs a variant (e.g. S/16) or {missing}')
  if kwargs['decoder'] not in DECODERS:
    raise UserError(f'unknown decoder {kwargs["decoder"]!r}: use one of {DECODERS}')
  dtype = jnp.dtype(kwargs['dtype'])
  attention_dropout = kwargs['attention_dropout_rate']
  encoder = vit_models.VisionTransformer(
      num_classes=None, patch_size=kwargs['patch_size'], hidden_size=kwargs['hidden_size'],
      num_layers=kwargs['num_layers'], num_heads=kwargs['num_heads'], mlp_dim=kwargs['mlp_dim'],
      classifier='token_unpooled', dropout_rate=kwargs['dropout_rate'],
      attention_dropout_rate=(kwargs['dropout_rate'] if attention_dropout is None
                              else attention_dropout), layer_norm_epsilon=LAYER_NORM_EPSILON,
      gelu_approximate=False, dtype=dtype, remat=remat.remat_policy_name(kwargs['remat']),
      scan=bool(kwargs['scan']), attention=attention_name(kwargs['attention']),
      distilled=bool(kwargs['distilled']), drop_path_rate=kwargs['drop_path_rate'],
      weight_init='timm', posemb_grid=_grid(kwargs['image_size'], kwargs['patch_size']))
  if kwargs['decoder'] == 'linear':
    decoder = DecoderLinear(kwargs['num_classes'])
  else:
    decoder = MaskTransformer(
        kwargs['num_classes'], kwargs['decoder_layers'],
        kwargs['decoder_num_heads'] or kwargs['num_heads'], 4 * kwargs['hidden_size'],
        kwargs['decoder_dropout_rate'], kwargs['decoder_drop_path_rate'], dtype,
        kwargs['attention'], attention_dropout)
  return Segmenter(encoder, decoder)
