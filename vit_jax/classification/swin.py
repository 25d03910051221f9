"""Swin Transformer (Liu et al. 2021): attention inside shifted windows over a patch pyramid.

Exact to the original (microsoft/Swin-Transformer, reference/swin.md): LayerNorm eps 1e-5, erf
GELU, a (2w-1)^2 x heads relative position bias table per block, odd blocks rolled by -w//2 with
the original's 9-region -100 mask, patch merging concatenated as (even row, even col), (odd,
even), (even, odd), (odd, odd), stochastic depth rising linearly over all blocks of all stages.
Where a stage's map is no larger than the window (min(H, W) <= w) the window shrinks to
min(H, W) and nothing is shifted, as in the original classifier; that block's table is sized by
the smaller window, as there (so such a model's parameters depend on the input size it was
initialised with, like the original's). Maps that are not a multiple of the window are padded
on the bottom and right after norm1 and before the roll, and images and odd maps before the
patch embedding and merging, as the original detection backbone does.

Parameters are laid out like timm >= 0.9 (`layers_{i}/downsample` at the start of stages 1-3,
`layers_{i}/blocks_{j}/attn/...`), so an official or timm `.pth` is a rename table (see
swin_weights.py). The fused torch `qkv` is kept apart as `query`, `key`, `value` (width, heads,
head_dim), the house's attention layout.
"""

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vit_jax.framework.errors import UserError
from vit_jax.layers.activations import gelu
from vit_jax.layers.attention import Projection, attend
from vit_jax.layers.attention_kernels import attention_name
from vit_jax.layers.drop_path import drop_path
from vit_jax.layers.initializers import partitioned, torch_default
from vit_jax.layers.normalization import LayerNorm
from vit_jax.layers.remat import REMAT_POLICIES, remat_policy_name

# Stage-1 width, blocks per stage and heads per stage of each size (paper Sec. 3.3; head_dim 32).
SIZES = {
    'T': dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    'S': dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    'B': dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    'L': dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}
# The window of each released resolution: 7 at 224 (56/28/14/7 tokens a side), 12 at 384.
WINDOWS = {224: 7, 384: 12}
LAYER_NORM_EPSILON = 1e-5  # torch's default, as the original.
MASKED = -100.0  # The original's additive shift mask (softmax weight exp(-100): none in fp32).

# timm's init (reference/swin.md §1.5): every Linear, head included, and the relative tables
# N(0, 0.02) (trunc_normal_ cuts at +-2 absolute), biases 0; the patch conv torch's default.
_normal = nn.initializers.normal(stddev=0.02)
_zeros = nn.initializers.zeros
_ones = nn.initializers.ones


def decode_variant(variant: str) -> dict:
  """'T', 'S', 'B', 'L' (window 7, the 224 models) or 'B-384', 'L-384' (window 12)."""
  size, _, resolution = variant.partition('-')
  resolution = int(resolution) if resolution.isdigit() else (224 if not resolution else None)
  if size not in SIZES or resolution not in WINDOWS:
    raise UserError(f'unknown Swin variant {variant!r}: use one of {sorted(SIZES)}, optionally '
                    f'with the resolution of its window ({", ".join(map(str, WINDOWS))}), '
                    'e.g. T or B-384')
  return dict(SIZES[size], window_size=WINDOWS[resolution])


def layer_norm(features_name: str = 'embed', **kwargs) -> LayerNorm:
  return LayerNorm(epsilon=LAYER_NORM_EPSILON, scale_init=partitioned(_ones, (features_name,)),
                   bias_init=partitioned(_zeros, (features_name,)), **kwargs)


def window_and_shift(height: int, width: int, window: int) -> tuple[int, int]:
  """The window and shift of a stage's odd blocks on a height x width map: the original
  classifier's rule, no shift and the window shrunk where the map is no larger."""
  if min(height, width) <= window:
    return min(height, width), 0
  return window, window // 2


def relative_position_index(window: int) -> np.ndarray:
  """[w*w, w*w] rows of the (2w-1)^2-row table: (dy + w - 1)(2w - 1) + dx + w - 1, with
  (dy, dx) query minus key, tokens row-major in the window."""
  rows, cols = np.meshgrid(np.arange(window), np.arange(window), indexing='ij')
  coords = np.stack([rows.ravel(), cols.ravel()])  # [2, N]
  dy, dx = coords[:, :, None] - coords[:, None, :] + window - 1
  return dy * (2 * window - 1) + dx


def partition_windows(x, window: int):
  """[B, H, W, C] -> [B, H/w * W/w, w*w, C], windows row-major, tokens row-major in each."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, -1, window * window, c)


def merge_windows(x, window: int, height: int, width: int):
  """The inverse of partition_windows."""
  b, _, _, c = x.shape
  x = x.reshape(b, height // window, width // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, c)


def shift_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
  """[windows, w*w, w*w] additive mask of a map rolled by -shift: MASKED between tokens that
  came from different ones of the 9 regions the roll wraps together, 0 within one."""
  regions = np.zeros((1, height, width, 1), np.float32)
  bands = lambda size: (slice(0, size - window), slice(size - window, size - shift),
                        slice(size - shift, size))
  for label, (rows, cols) in enumerate((r, c) for r in bands(height) for c in bands(width)):
    regions[:, rows, cols] = label
  labels = partition_windows(regions, window)[0, :, :, 0]  # [windows, N]
  return np.where(labels[:, None, :] != labels[:, :, None], MASKED, 0.0).astype(np.float32)


class PatchEmbed(nn.Module):
  """Images padded to whole patches (bottom / right), a patch-stride convolution, LayerNorm."""
  embed_dim: int
  patch_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    p = self.patch_size
    _, h, w, channels = images.shape
    x = jnp.pad(images, ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
    fan_in = p * p * channels
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                kernel_init=partitioned(torch_default(fan_in), (None, None, None, 'embed')),
                bias_init=partitioned(torch_default(fan_in), ('embed',)), name='proj')(x)
    return layer_norm(dtype=self.dtype, name='norm')(x)


class WindowAttention(nn.Module):
  """Multi-head self-attention within each window, plus a learned bias per relative offset.

  Runs through the shared `attend` with the relative position bias (and the shift mask) as its
  additive `bias`: the windows of a shifted block share one mask per window position, so the
  window index joins the head axis ([batch, windows * heads, tokens, head_dim]) and the bias
  [1, windows * heads, N, N] broadcasts over the batch instead of being tiled over it.
  """
  num_heads: int
  window: int  # The block's: the configured one, or the map's side where that is smaller.
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, windows, mask: Optional[np.ndarray]):
    """windows [B, nW, N, C] (N = window^2) -> [B, nW, N, C]; mask [nW, N, N] or None."""
    b, num_windows, n, width = windows.shape
    heads = (self.num_heads, width // self.num_heads)
    project = lambda name: Projection((width,) + heads, ('embed', 'heads', 'kv'),
                                      'bwtc,cnh->bwnth', self.dtype, _normal, name=name)
    query = project('query')(windows) * (heads[1] ** -0.5)
    key, value = project('key')(windows), project('value')(windows)
    # One row per relative offset; sized by the block's window, as the original and timm.
    table = self.param('relative_position_bias_table',
                       partitioned(_normal, ('relpos', 'heads')),
                       ((2 * self.window - 1) ** 2, self.num_heads))
    bias = table[relative_position_index(self.window).reshape(-1)]
    bias = bias.reshape(n, n, self.num_heads).transpose(2, 0, 1)
    groups = 1 if mask is None else num_windows  # Windows that need a bias of their own.
    if mask is not None:
      bias = bias[None] + mask[:, None]  # [nW, heads, N, N]
    bias = bias.reshape(1, groups * self.num_heads, n, n)
    fold = lambda x: x.reshape(b * num_windows // groups, groups * self.num_heads, n, heads[1])
    y = attend(fold(query), fold(key), fold(value), None, None, 1.0, bias)
    y = y.reshape(b, num_windows, self.num_heads, n, heads[1])
    return Projection(heads + (width,), ('heads', 'kv', 'embed'), 'bwnth,nhd->bwtd', self.dtype,
                      _normal, name='proj')(y)


class Mlp(nn.Module):
  """fc1 -> erf GELU -> fc2."""
  hidden: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=partitioned(_normal, ('embed', 'mlp')),
                 bias_init=partitioned(_zeros, ('mlp',)), name='fc1')(x)
    x = gelu(x, approximate=False)
    return nn.Dense(width, dtype=self.dtype, kernel_init=partitioned(_normal, ('mlp', 'embed')),
                    bias_init=partitioned(_zeros, ('embed',)), name='fc2')(x)


class SwinBlock(nn.Module):
  """x + drop_path(attn(norm1(x))) in (shifted) windows, then x + drop_path(mlp(norm2(x)))."""
  num_heads: int
  window_size: int
  shifted: bool  # Odd blocks: roll the map by -window//2 first (unless the map is too small).
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  fixed_window: bool = False  # See SwinTransformer.

  @nn.compact
  def __call__(self, inputs, train: bool, drop_path_rate=None):
    """[B, H, W, C] -> [B, H, W, C]; drop_path_rate: this block's, traced under nn.scan."""
    rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
    _, height, width, channels = inputs.shape
    window, shift = ((self.window_size, self.window_size // 2) if self.fixed_window else
                     window_and_shift(height, width, self.window_size))
    shift = shift if self.shifted else 0
    x = layer_norm(dtype=self.dtype, name='norm1')(inputs)
    # Pad to whole windows before the roll (the detection backbone's order): the mask is built
    # for the padded map, and the padded tokens are keys like any other.
    pad_h, pad_w = -height % window, -width % window
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    padded = (height + pad_h, width + pad_w)
    if shift:
      x = jnp.roll(x, (-shift, -shift), axis=(1, 2))
    mask = shift_mask(*padded, window, shift) if shift else None
    x = WindowAttention(self.num_heads, window, self.dtype, name='attn')(
        partition_windows(x, window), mask)
    x = merge_windows(x, window, *padded)
    if shift:
      x = jnp.roll(x, (shift, shift), axis=(1, 2))
    x = inputs + drop_path(self, x[:, :height, :width], rate, train)
    y = Mlp(int(channels * self.mlp_ratio), self.dtype, name='mlp')(
        layer_norm(dtype=self.dtype, name='norm2')(x))
    return x + drop_path(self, y, rate, train)


class SwinPair(nn.Module):
  """A plain block and a shifted one: the unit a scanned stage repeats."""
  num_heads: int
  window_size: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32
  remat: str = 'none'
  fixed_window: bool = False

  @nn.compact
  def __call__(self, x, rates, train: bool):
    block = _maybe_remat(SwinBlock, self.remat, scanned=True)
    for i, name in enumerate(PAIR):
      x = block(self.num_heads, self.window_size, name == 'shifted', self.mlp_ratio,
                dtype=self.dtype, fixed_window=self.fixed_window, name=name)(
                    x, train, None if rates is None else rates[i])
    return x, None


PAIR = ('plain', 'shifted')  # The pair's blocks, as named under a scanned stage's `blocks`.


def _maybe_remat(block, policy: str, scanned: bool):
  if policy == 'none':
    return block
  # `train` (argument 2, counting the module) is a Python bool: static under remat.
  return nn.remat(block, static_argnums=(2,), policy=REMAT_POLICIES[policy],
                  prevent_cse=not scanned)  # scan already keeps the recompute apart.


class PatchMerging(nn.Module):
  """Each 2x2 neighbourhood concatenated (4C, the original's order), normed, projected to 2C."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))  # Odd maps: bottom / right.
    h, w = h + h % 2, w + w % 2
    # [B, H/2, row offset, W/2, col offset, C] with the column offset outermost in the
    # concatenation: x0 (0, 0), x1 (1, 0), x2 (0, 1), x3 (1, 1) as (row, col).
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(
        b, h // 2, w // 2, 4 * c)
    x = layer_norm('mlp', dtype=self.dtype, name='norm')(x)
    return nn.Dense(2 * c, use_bias=False, dtype=self.dtype,
                    kernel_init=partitioned(_normal, ('mlp', 'embed')), name='reduction')(x)


class SwinStage(nn.Module):
  """Patch merging (stages after the first, timm's layout) then the stage's blocks.

  scan: the blocks as depth/2 pairs (plain, shifted) under nn.scan, one pair compiled once
  whatever the depth, their params stacked on a leading axis named 'layers' under
  `blocks/plain` and `blocks/shifted` (instead of `blocks_0`, `blocks_1`, ...; swin_weights
  converts between the two).
  """
  depth: int
  num_heads: int
  window_size: int
  downsample: bool
  drop_path_rates: tuple[float, ...]
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32
  remat: str = 'none'
  scan: bool = False
  fixed_window: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    if self.downsample:
      x = PatchMerging(self.dtype, name='downsample')(x)
    if self.scan:
      if self.depth % 2:
        raise UserError(f'a scanned Swin stage repeats (plain, shifted) pairs: its depth '
                        f'{self.depth} must be even (or set model.scan=False)')
      scanned = nn.scan(lambda pair, carry, rates: pair(carry, rates, train),
                        variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                        length=self.depth // 2, metadata_params={nn.PARTITION_NAME: 'layers'})
      rates = (jnp.asarray(self.drop_path_rates, jnp.float32).reshape(-1, 2)
               if any(self.drop_path_rates) else None)
      pair = SwinPair(self.num_heads, self.window_size, self.mlp_ratio, self.dtype, self.remat,
                      self.fixed_window, name='blocks')
      return scanned(pair, x, rates)[0]
    block = _maybe_remat(SwinBlock, self.remat, scanned=False)
    for i in range(self.depth):
      x = block(self.num_heads, self.window_size, i % 2 == 1, self.mlp_ratio,
                self.drop_path_rates[i], self.dtype, self.fixed_window, name=f'blocks_{i}')(
                    x, train)
    return x


class SwinTransformer(nn.Module):
  """Swin classifier: images [B, H, W, C] -> logits [B, num_classes].

  num_classes None returns the pooled features [B, 8C]; classifier 'unpooled' the final-normed
  map [B, H/32, W/32, 8C] (no head); classifier 'features' the backbone's four stage outputs
  [B, H/4, W/4, C], ... [B, H/32, W/32, 8C] (strides 4-32), each through its own LayerNorm
  `norm{i}` as the original detection / segmentation backbones add them (no final norm, no
  head), for the stages in `out_indices` only. Stages no larger than the window are not
  shifted and shrink the window, as in the classifier, unless `fixed_window`: the detection
  backbone's rule (every block keeps window_size, the map padded up to it, odd blocks always
  shifted), which keeps the parameters independent of the input size.
  """
  num_classes: Optional[int]
  embed_dim: int
  depths: tuple[int, ...]
  num_heads: tuple[int, ...]
  window_size: int = 7
  patch_size: int = 4
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0  # Of the last block; linear from 0 over all blocks of all stages.
  classifier: str = 'gap'  # 'gap' (mean over tokens after the final norm), 'unpooled', 'features'.
  dtype: jnp.dtype = jnp.float32  # Compute dtype ('bfloat16' for mixed precision); params f32.
  remat: str = 'none'  # See REMAT_POLICIES.
  scan: bool = False  # Each stage's blocks under nn.scan, in pairs (see SwinStage).
  fixed_window: bool = False  # The detection backbone's windows (see above).
  out_indices: Optional[tuple[int, ...]] = None  # classifier 'features': the stages (all).

  def drop_path_rates(self) -> list[tuple[float, ...]]:
    """Each stage's per-block rates: torch.linspace(0, rate, sum(depths)) split by stage."""
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    ends = np.cumsum(self.depths)
    return [tuple(rates[end - depth:end]) for depth, end in zip(self.depths, ends)]

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    if self.classifier not in ('gap', 'unpooled', 'features'):
      raise UserError(f'unknown Swin classifier {self.classifier!r}: use gap, unpooled or '
                      'features')
    if len(self.depths) != len(self.num_heads):
      raise UserError(f'Swin depths {self.depths} and num_heads {self.num_heads} need one '
                      'entry per stage each')
    out_indices = range(len(self.depths)) if self.out_indices is None else self.out_indices
    if not set(out_indices) <= set(range(len(self.depths))):
      raise UserError(f'Swin out_indices {self.out_indices}: use stages 0 to '
                      f'{len(self.depths) - 1}')
    x = PatchEmbed(self.embed_dim, self.patch_size, self.dtype, name='patch_embed')(images)
    features = []
    for i, (depth, heads, rates) in enumerate(zip(self.depths, self.num_heads,
                                                  self.drop_path_rates())):
      x = SwinStage(depth, heads, self.window_size, i > 0, rates, self.mlp_ratio, self.dtype,
                    remat_policy_name(self.remat), self.scan, self.fixed_window,
                    name=f'layers_{i}')(x, train)
      if self.classifier == 'features' and i in out_indices:
        features.append(layer_norm(dtype=self.dtype, name=f'norm{i}')(x))
    if self.classifier == 'features':
      return features
    x = layer_norm(dtype=self.dtype, name='norm')(x)
    if self.classifier == 'unpooled':
      return x
    x = x.mean(axis=(1, 2))
    if self.num_classes is None:
      return x
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='head',
                    kernel_init=partitioned(_normal, ('embed', 'classes')),
                    bias_init=partitioned(_zeros, ('classes',)))(x)


def build_swin(model_config) -> SwinTransformer:
  """The Swin a model config describes: `variant` ('T', 'S', 'B', 'L'; 'B-384', 'L-384' for
  window 12) gives the size, explicit fields (`num_classes`, `drop_path_rate`, ...) override."""
  fields = dict(model_config)
  fields.pop('name', None)
  variant = fields.pop('variant', None)
  # model.attention, checked: Swin's windows (49 tokens, a relative position bias) always run
  # the reference `attend`, whose weights are small there.
  attention_name(fields.pop('attention', 'auto'))
  if fields.pop('attention_dropout_rate', None):
    raise UserError('Swin has no attention dropout (the recipes\' attn_drop_rate is 0): leave '
                    'model.attention_dropout_rate unset or 0')
  kwargs = decode_variant(variant) if variant else {}
  kwargs.update({k: v for k, v in fields.items() if v is not None or k == 'num_classes'})
  missing = {'embed_dim', 'depths', 'num_heads'} - set(kwargs)
  if missing:
    raise UserError(f'model config needs a Swin variant (e.g. T or B-384) or {sorted(missing)}')
  unknown = set(kwargs) - set(SwinTransformer.__dataclass_fields__)
  if unknown:
    raise UserError(f'unknown Swin model fields {sorted(unknown)}')
  if 'num_classes' not in kwargs:
    raise UserError('model config needs num_classes')
  for field in ('depths', 'num_heads', 'out_indices'):
    if kwargs.get(field) is not None:
      kwargs[field] = tuple(kwargs[field])
  if isinstance(kwargs.get('dtype'), str):
    kwargs['dtype'] = jnp.dtype(kwargs['dtype'])
  if 'remat' in kwargs:
    kwargs['remat'] = remat_policy_name(kwargs['remat'])
  return SwinTransformer(**kwargs)
