"""Vision Transformer (Dosovitskiy et al. 2021), laid out like the official checkpoints.

Parameter names follow google-research/vision_transformer after the pre-Linen renaming
(`Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0/query/kernel`, ...), so loading an
official `.npz` is a rename table. Every parameter carries logical axis names; the config's rules
map them to mesh axes (see `sharding.py`).
"""

import functools
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from vit_jax.classification.resnet import resnet_stem
from vit_jax.framework.errors import UserError
from vit_jax.layers.activations import gelu
from vit_jax.layers.attention import MultiHeadAttention
from vit_jax.layers.attention_kernels import attention_name
from vit_jax.layers.drop_path import drop_path
from vit_jax.layers.initializers import partitioned, torch_default
from vit_jax.layers.normalization import LayerNorm
from vit_jax.layers.position_embeddings import resize_position_embeddings
from vit_jax.layers.remat import REMAT_POLICIES, remat_policy_name

# Width, MLP width, heads and depth of each size (ViT paper, Table 1; Ti from DeiT).
SIZES = {
    'Ti': dict(hidden_size=192, mlp_dim=768, num_heads=3, num_layers=12),
    'S': dict(hidden_size=384, mlp_dim=1536, num_heads=6, num_layers=12),
    'B': dict(hidden_size=768, mlp_dim=3072, num_heads=12, num_layers=12),
    'L': dict(hidden_size=1024, mlp_dim=4096, num_heads=16, num_layers=24),
    'H': dict(hidden_size=1280, mlp_dim=5120, num_heads=16, num_layers=32),
    'g': dict(hidden_size=1408, mlp_dim=6144, num_heads=16, num_layers=40),  # Scaling ViT, Table 2.
}


# Hybrids: ResNet stages in front of the transformer, and the patch size the ViT then uses on
# the ResNet's feature map (vision_transformer configs/models.py).
HYBRIDS = {
    'R50': (dict(num_layers=(3, 4, 9), width_factor=1), 1),  # /16, ends at 1024 channels.
    'R50L': (dict(num_layers=(3, 4, 6, 3), width_factor=1), 1),  # /32, for R50+ViT-L/32.
    'R26': (dict(num_layers=(2, 2, 2, 2), width_factor=1), 1),  # /32
    'R': (dict(num_layers=(), width_factor=1), 8),  # Stem only (/4), then 8x8 patches.
}


def decode_variant(variant: str) -> dict:
  """'B/16' -> dict(hidden_size=768, mlp_dim=3072, num_heads=12, num_layers=12, patch_size=16);
  hybrids 'R50+B/16', 'R26+S/32', 'R+Ti/16' add the ResNet and patch over its feature map."""
  resnet_name, _, vit = variant.rpartition('+')
  size, _, patch = vit.partition('/')
  if size not in SIZES or not patch.isdigit() or (resnet_name and resnet_name not in ('R50', 'R26', 'R')):
    raise UserError(f'unknown ViT variant {variant!r}: use SIZE/PATCH with SIZE in '
                    f'{sorted(SIZES)} and an integer patch (e.g. B/16), optionally with a '
                    'ResNet in front (R50+B/16, R50+L/32, R26+S/32, R26+B/32, R+Ti/16)')
  fields = dict(SIZES[size], patch_size=int(patch))
  if resnet_name:
    if resnet_name == 'R50' and size == 'L':
      resnet_name = 'R50L'
    resnet, patch_size = HYBRIDS[resnet_name]
    fields.update(resnet=resnet, patch_size=patch_size)
  return fields



# The original initialisers (reference/vit.md §2.3).
_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros
_mlp_bias = nn.initializers.normal(stddev=1e-6)
# timm's and Segmenter's `init_weights` (reference/segmenter.md §1.8): every Linear kernel
# trunc_normal_(std=0.02) with absolute bounds +-2, i.e. untruncated at that std; biases 0.
_timm_kernel = nn.initializers.normal(stddev=0.02)
WEIGHT_INITS = ('vit', 'timm')


def _check_weight_init(weight_init: str) -> None:
  if weight_init not in WEIGHT_INITS:
    raise UserError(f'unknown weight_init {weight_init!r}: use one of {WEIGHT_INITS}')


class AddPositionEmbs(nn.Module):
  """Learned position embeddings, one row per token (class token included), BERT init.

  grid: the patch grid the embeddings are stored for. None (the original): the shape follows
  the input seen at init and is fixed. Set: inputs on another `grid` get them resized on the
  fly with `resize_position_embeddings` (Segmenter's sliding windows and padded images).
  """
  grid: Optional[tuple[int, int]] = None

  @nn.compact
  def __call__(self, x, grid: Optional[tuple[int, int]] = None):
    init = partitioned(nn.initializers.normal(stddev=0.02), (None, None, 'embed'))
    if self.grid is None:
      return x + self.param('pos_embedding', init, (1,) + x.shape[1:]).astype(x.dtype)
    stored, grid = tuple(self.grid), tuple(grid or self.grid)
    prefix = x.shape[1] - grid[0] * grid[1]
    if prefix < 0:
      raise UserError(f'{x.shape[1]} tokens do not fit a {grid[0]}x{grid[1]} patch grid')
    pos_embedding = self.param('pos_embedding', init,
                               (1, prefix + stored[0] * stored[1], x.shape[-1]))
    if grid != stored:
      pos_embedding = resize_position_embeddings(pos_embedding, stored, grid, prefix)
    return x + pos_embedding.astype(x.dtype)


class MlpBlock(nn.Module):
  """Dense -> GELU -> dropout -> Dense -> dropout."""
  mlp_dim: int
  dropout_rate: float = 0.0
  gelu_approximate: bool = True
  dtype: jnp.dtype = jnp.float32
  weight_init: str = 'vit'  # See WEIGHT_INITS.

  @nn.compact
  def __call__(self, x, *, train: bool):
    width = x.shape[-1]
    kernel, bias = (_timm_kernel, _zeros) if self.weight_init == 'timm' else (_xavier, _mlp_bias)
    x = nn.Dense(self.mlp_dim, dtype=self.dtype,
                 kernel_init=partitioned(kernel, ('embed', 'mlp')),
                 bias_init=partitioned(bias, ('mlp',)))(x)
    x = gelu(x, self.gelu_approximate)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'mlp'))
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = nn.Dense(width, dtype=self.dtype,
                 kernel_init=partitioned(kernel, ('mlp', 'embed')),
                 bias_init=partitioned(bias, ('embed',)))(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x)).

  drop_path_rate: stochastic depth (timm's DropPath): each residual branch is dropped for a
  whole example with this probability and the kept ones scaled by 1 / (1 - rate); the two
  branches draw independently. A scanned encoder passes each layer's rate as a (traced) call
  argument instead.
  """
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  gelu_approximate: bool = True
  dtype: jnp.dtype = jnp.float32
  drop_path_rate: float = 0.0
  weight_init: str = 'vit'  # See WEIGHT_INITS.
  attention: str = 'auto'  # See vit_jax.layers.attention_kernels.

  @nn.compact
  def __call__(self, inputs, train: bool, drop_path_rate=None):
    rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
    norm = functools.partial(LayerNorm, epsilon=self.layer_norm_epsilon, dtype=self.dtype)
    x = norm()(inputs)
    kernel_init = _timm_kernel if self.weight_init == 'timm' else None
    x = MultiHeadAttention(self.num_heads, self.attention_dropout_rate, self.dtype,
                           qkv_kernel_init=kernel_init, out_kernel_init=kernel_init,
                           attention=self.attention,
                           name='MultiHeadDotProductAttention_0')(x, train=train)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = drop_path(self, x, rate, train) + inputs
    y = norm()(x)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, self.gelu_approximate, self.dtype,
                 self.weight_init)(y, train=train)
    y = drop_path(self, y, rate, train)
    return nn.with_logical_constraint(x + y, ('batch', 'length', 'act_embed'))


class Encoder(nn.Module):
  """Position embeddings, dropout, a stack of blocks and the final LayerNorm.

  scan: the blocks under nn.scan, one block compiled once whatever the depth; their params
  stacked on a leading axis named 'layers' under `encoderblock` (instead of `encoderblock_0`,
  ..., `encoderblock_{n-1}`; vit_jax.framework.weights converts between the two and loads either into
  either).
  """
  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  gelu_approximate: bool = True
  dtype: jnp.dtype = jnp.float32
  remat: str = 'none'  # A name in REMAT_POLICIES.
  # Stochastic depth rising linearly over the blocks, 0 for the first and this for the last
  # (torch.linspace(0, rate, num_layers), as timm and Segmenter).
  drop_path_rate: float = 0.0
  weight_init: str = 'vit'  # See WEIGHT_INITS.
  posemb_grid: Optional[tuple[int, int]] = None  # See AddPositionEmbs.grid.
  scan: bool = False
  attention: str = 'auto'  # See vit_jax.layers.attention_kernels.

  @nn.compact
  def __call__(self, x, *, train: bool, grid: Optional[tuple[int, int]] = None):
    """grid: the input's patch grid (needed only with `posemb_grid`)."""
    x = AddPositionEmbs(self.posemb_grid, name='posembed_input')(x, grid)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    block = Encoder1DBlock
    policy = remat_policy_name(self.remat)
    if policy != 'none':
      # `train` (argument 2, counting the module) is a Python bool: static under remat.
      block = nn.remat(block, static_argnums=(2,), policy=REMAT_POLICIES[policy],
                       prevent_cse=not self.scan)  # scan already keeps the recompute apart.
    fields = (self.mlp_dim, self.num_heads, self.dropout_rate, self.attention_dropout_rate,
              self.layer_norm_epsilon, self.gelu_approximate, self.dtype)
    rates = [self.drop_path_rate * i / (self.num_layers - 1) if self.num_layers > 1 else 0.0
             for i in range(self.num_layers)]
    if self.scan:
      scanned = nn.scan(
          lambda module, carry, rate: (module(carry, train, rate), None),
          variable_axes={'params': 0, 'intermediates': 0},
          split_rngs={'params': True, 'dropout': True}, length=self.num_layers,
          metadata_params={nn.PARTITION_NAME: 'layers'})
      layer_rates = jnp.asarray(rates, jnp.float32) if self.drop_path_rate else None
      x, _ = scanned(block(*fields, weight_init=self.weight_init, attention=self.attention,
                           name='encoderblock'), x, layer_rates)
    else:
      for i, rate in enumerate(rates):
        x = block(*fields, drop_path_rate=rate, weight_init=self.weight_init,
                  attention=self.attention, name=f'encoderblock_{i}')(x, train)
    return LayerNorm(epsilon=self.layer_norm_epsilon, name='encoder_norm')(x)


DISTILLED_EVALS = ('mean', 'head', 'head_dist')


class VisionTransformer(nn.Module):
  """ViT classifier. `num_classes=None` returns the pooled (or unpooled) representation.

  classifier: 'token' (class token, prepended before the position embeddings are added),
  'gap' (mean over patch tokens), 'unpooled' / 'token_unpooled' (every token after the final
  LayerNorm, for dense heads such as Segmenter's decoders).
  distilled: DeiT's distillation token `dist` after the class token ([cls, dist, patches]),
  with 'token' or 'token_unpooled'. With 'token' its own head `head_dist` reads it: training
  returns (head logits, head_dist logits), inference their mean (as DeiT and timm; or one head
  alone with `distilled_eval` 'head' / 'head_dist', the paper's ablation); without a head the
  representation is the mean of the two tokens.
  posemb_grid: the patch grid the position embeddings are stored for; other grids get them
  resized on the fly (see AddPositionEmbs). None: fixed by the input seen at init.
  """
  num_classes: Optional[int]
  patch_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  classifier: str = 'token'
  representation_size: Optional[int] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  head_bias_init: float = 0.0
  resnet: Optional[dict] = None  # dict(num_layers=..., width_factor=...) for hybrids.
  layer_norm_epsilon: float = 1e-6
  gelu_approximate: bool = True  # The original's nn.gelu; False for erf GELU (timm, Segmenter).
  dtype: jnp.dtype = jnp.float32  # Compute dtype ('bfloat16' for mixed precision); params f32.
  remat: str = 'none'  # See REMAT_POLICIES.
  distilled: bool = False
  distilled_eval: str = 'mean'  # Inference of a distilled model: 'mean', 'head' or 'head_dist'.
  drop_path_rate: float = 0.0  # Stochastic depth of the last block (see Encoder).
  # 'vit': the original's initialisers; 'timm': timm's / Segmenter's (Linear kernels and class
  # tokens N(0, 0.02), biases 0, patch embedding PyTorch's default).
  weight_init: str = 'vit'
  posemb_grid: Optional[tuple[int, int]] = None
  scan: bool = False  # The encoder blocks under nn.scan (see Encoder).
  attention: str = 'auto'  # See vit_jax.layers.attention_kernels.

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    if self.classifier not in ('token', 'gap', 'unpooled', 'token_unpooled'):
      raise UserError(f'unknown classifier {self.classifier!r}: use token, gap, unpooled '
                      'or token_unpooled')
    if self.distilled and (self.classifier not in ('token', 'token_unpooled')
                           or self.representation_size is not None):
      raise UserError(f'a distillation token needs classifier token or token_unpooled (not '
                      f'{self.classifier!r}) and no representation_size')
    if self.distilled_eval not in DISTILLED_EVALS:
      raise UserError(f'unknown distilled_eval {self.distilled_eval!r}: use '
                      f'{" | ".join(DISTILLED_EVALS)}')
    _check_weight_init(self.weight_init)
    timm_init = self.weight_init == 'timm'
    x = images
    if self.resnet is not None:
      x = resnet_stem(x, tuple(self.resnet['num_layers']), self.resnet.get('width_factor', 1))
    p = self.patch_size
    fan_in = p * p * x.shape[-1]
    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                kernel_init=partitioned(torch_default(fan_in) if timm_init
                                         else nn.initializers.lecun_normal(),
                                         (None, None, None, 'embed')),
                bias_init=partitioned(torch_default(fan_in) if timm_init else _zeros,
                                       ('embed',)), name='embedding')(x)
    n, h, w, c = x.shape
    x = x.reshape(n, h * w, c)
    if self.classifier in ('token', 'token_unpooled'):
      token_init = partitioned(_timm_kernel if timm_init else _zeros, (None, None, 'embed'))
      tokens = [self.param('cls', token_init, (1, 1, c))]
      if self.distilled:
        tokens.append(self.param('dist', token_init, (1, 1, c)))
      x = jnp.concatenate([jnp.tile(t.astype(x.dtype), (n, 1, 1)) for t in tokens] + [x], axis=1)
    x = Encoder(self.num_layers, self.mlp_dim, self.num_heads, self.dropout_rate,
                self.attention_dropout_rate, self.layer_norm_epsilon, self.gelu_approximate,
                self.dtype, self.remat, self.drop_path_rate, self.weight_init,
                tuple(self.posemb_grid) if self.posemb_grid else None, self.scan,
                self.attention, name='Transformer')(x, train=train, grid=(h, w))

    if self.classifier == 'token' and self.distilled:
      return self._distilled_heads(x[:, 0], x[:, 1], train)
    if self.classifier == 'token':
      x = x[:, 0]
    elif self.classifier == 'gap':
      x = x.mean(axis=1)

    if self.representation_size is not None:
      x = nn.Dense(self.representation_size, dtype=self.dtype, name='pre_logits',
                   kernel_init=partitioned(nn.initializers.lecun_normal(), ('embed', 'mlp')),
                   bias_init=partitioned(_zeros, ('mlp',)))(x)
      x = jnp.tanh(x)
    if self.num_classes is None:
      return x
    return self._head('head')(x)

  def _head(self, name: str) -> nn.Dense:
    return nn.Dense(self.num_classes, name=name, dtype=jnp.float32,
                    kernel_init=partitioned(_timm_kernel if self.weight_init == 'timm'
                                             else _zeros, ('embed', 'classes')),
                    bias_init=partitioned(nn.initializers.constant(self.head_bias_init),
                                           ('classes',)))

  def _distilled_heads(self, cls_token, dist_token, train: bool):
    if self.num_classes is None:
      return (cls_token + dist_token) / 2
    logits, dist_logits = self._head('head')(cls_token), self._head('head_dist')(dist_token)
    if train:
      return logits, dist_logits
    return {'mean': (logits + dist_logits) / 2, 'head': logits,
            'head_dist': dist_logits}[self.distilled_eval]


def build_vit(model_config) -> VisionTransformer:
  """The model named by a config: `variant` ('B/16') gives the size, explicit fields override."""
  fields = dict(model_config)
  fields.pop('name', None)
  variant = fields.pop('variant', None)
  kwargs = decode_variant(variant) if variant else {}
  kwargs.update({k: v for k, v in fields.items() if v is not None or k == 'num_classes'})
  missing = {'patch_size', 'hidden_size', 'num_layers', 'num_heads', 'mlp_dim'} - set(kwargs)
  if missing:
    raise UserError(f'model config needs a variant (e.g. B/16) or {sorted(missing)}')
  unknown = set(kwargs) - set(VisionTransformer.__dataclass_fields__)
  if unknown:
    raise UserError(f'unknown ViT model fields {sorted(unknown)}')
  if 'num_classes' not in kwargs:
    raise UserError('model config needs num_classes')
  if isinstance(kwargs.get('dtype'), str):
    kwargs['dtype'] = jnp.dtype(kwargs['dtype'])
  if kwargs.get('posemb_grid') is not None:
    kwargs['posemb_grid'] = tuple(kwargs['posemb_grid'])
  if 'remat' in kwargs:
    kwargs['remat'] = remat_policy_name(kwargs['remat'])
  if 'attention' in kwargs:
    kwargs['attention'] = attention_name(kwargs['attention'])
  return VisionTransformer(**kwargs)
