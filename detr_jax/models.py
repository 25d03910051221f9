"""DETR (Carion et al. 2020), exact to facebookresearch/detr.

ResNet-50/101 (torchvision v1.5, frozen batch norm, optional dilated last stage = DC5) -> 1x1
input projection -> post-norm transformer (6 + 6 layers, sine positions added to the queries and
keys of every attention) -> 100 learned queries -> class head (num_classes + 1, the last logit is
"no object") and a 3-layer box MLP (sigmoid cx, cy, w, h relative to the unpadded image).

Parameter names follow the official state dict (`backbone/layer1_0/conv1`,
`transformer/encoder/layers_0/self_attn/query`, `class_embed`, `bbox_embed/layers_2`, ...), so the
converter in `detr_jax/pretrained.py` is a rename table. The frozen batch-norm statistics and
affine terms live in the 'frozen' collection (the original keeps them as buffers); the stem and
layer1 are parameters frozen by the optimizer (`lr_mults` in the configs), as in the original.
"""

import functools
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from detr_jax import swin_backbone
from vit_jax.framework.errors import UserError
from vit_jax.layers.attention import MultiHeadAttention
from vit_jax.layers.attention_kernels import attention_name
from vit_jax.layers.convolution import conv_general_dilated
from vit_jax.layers.normalization import LayerNorm
from vit_jax.layers.remat import REMAT_POLICIES, remat_policy_name

# Blocks per stage of torchvision's ResNets.
RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _partitioned(init, names):
  return nn.with_logical_partitioning(init, names)


def _torch_uniform(fan_in: int):
  """PyTorch's default Linear/Conv init (kaiming_uniform with a=sqrt(5)) for weights and
  biases alike: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _xavier_on(fan_in: int, fan_out: int):
  """xavier_uniform with the fans of the original's (possibly fused) weight matrix."""
  bound = math.sqrt(6 / (fan_in + fan_out))
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _fused_in_proj_init(key, shape, dtype=jnp.float32):
  """A (width, heads, head_dim) q, k or v kernel: torch.nn.MultiheadAttention initialises the
  three as one fused [3 * width, width] matrix, so xavier takes that matrix's fans."""
  return _xavier_on(shape[0], 3 * shape[0])(key, shape, dtype)


class FrozenBatchNorm(nn.Module):
  """Batch norm with fixed statistics and affine terms (eps 1e-5), stored outside the params."""
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.variable('frozen', 'scale', jnp.ones, (c,)).value
    bias = self.variable('frozen', 'bias', jnp.zeros, (c,)).value
    mean = self.variable('frozen', 'mean', jnp.zeros, (c,)).value
    var = self.variable('frozen', 'var', jnp.ones, (c,)).value
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    return x * multiplier.astype(x.dtype) + (bias - mean * multiplier).astype(x.dtype)


def _conv(features, kernel, stride=1, dilation=1, name=None, dtype=jnp.float32):
  """torchvision's bias-free conv with 'same'-style symmetric padding dilation*(k-1)/2 and
  kaiming_normal(fan_out) init; the channel axes are named so that FSDP can shard them."""
  pad = dilation * (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                 kernel_dilation=(dilation, dilation), use_bias=False, dtype=dtype,
                 conv_general_dilated=conv_general_dilated,
                 kernel_init=_partitioned(nn.initializers.variance_scaling(2.0, 'fan_out',
                                                                           'normal'),
                                          (None, None, 'conv_in', 'conv_out')),
                 name=name)


def _norm(kind: str, name: str):
  """'frozen': the original's frozen batch norm (needs pretrained statistics); 'group': a
  trainable GroupNorm for backbones trained from scratch (no ImageNet weights offline)."""
  if kind == 'frozen':
    return FrozenBatchNorm(name=name)
  if kind == 'group':
    return nn.GroupNorm(num_groups=None, group_size=8, epsilon=1e-5, name=name)
  raise UserError(f"unknown backbone_norm {kind!r}: use 'frozen' or 'group'")


class Bottleneck(nn.Module):
  """torchvision's v1.5 bottleneck: the stride sits on the 3x3 conv."""
  width: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  norm: str = 'frozen'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(_conv, dtype=self.dtype)
    norm = functools.partial(_norm, self.norm)
    y = nn.relu(norm('bn1')(conv(self.width, 1, name='conv1')(x)))
    y = conv(self.width, 3, self.stride, self.dilation, name='conv2')(y)
    y = nn.relu(norm('bn2')(y))
    y = norm('bn3')(conv(self.width * 4, 1, name='conv3')(y))
    if self.downsample:
      x = conv(self.width * 4, 1, self.stride, name='downsample_0')(x)
      x = norm('downsample_1')(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """The backbone's body: the outputs of layer1..layer4 (strides 4, 8, 16, 32; layer4 16 with
  `dilation` = DC5). DETR reads layer4; the panoptic mask head also layer1..3.

  `blocks` and `width` (stage-1 bottleneck width, 64 in torchvision) make small backbones for
  experiments; the released models use depth 50 or 101 at width 64.
  """
  depth: int = 50
  dilation: bool = False
  blocks: Optional[tuple[int, ...]] = None  # Bottlenecks per stage; overrides `depth`.
  width: int = 64
  norm: str = 'frozen'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.blocks is None and self.depth not in RESNET_DEPTHS:
      raise UserError(f'unknown backbone depth {self.depth}: use 50 or 101 (or set '
                      'backbone_blocks)')
    blocks = tuple(self.blocks) if self.blocks is not None else RESNET_DEPTHS[self.depth]
    if len(blocks) != 4:
      raise UserError(f'backbone_blocks {blocks} must give 4 stages')
    x = _conv(self.width, 7, 2, name='conv1', dtype=self.dtype)(x)
    x = nn.relu(_norm(self.norm, 'bn1')(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    dilation, stages = 1, []
    for stage, num_blocks in enumerate(blocks):
      stride, first_dilation = (1 if stage == 0 else 2), dilation
      if stage == 3 and self.dilation:  # torchvision's replace_stride_with_dilation.
        dilation, stride = dilation * 2, 1
      for block in range(num_blocks):
        x = Bottleneck(self.width * 2**stage, stride if block == 0 else 1,
                       first_dilation if block == 0 else dilation, downsample=block == 0,
                       norm=self.norm, dtype=self.dtype, name=f'layer{stage + 1}_{block}')(x)
      stages.append(x)
    return tuple(stages)


def downsample_mask(mask: jax.Array, size: tuple[int, int]) -> jax.Array:
  """[B, H, W, ...] -> [B, h, w, ...] by PyTorch's legacy nearest rule src = floor(dst * in /
  out), which the original uses (jax.image.resize's nearest samples cell centres: a different
  cell); also its nearest upsampling of features in the panoptic mask head."""
  def rows(n_in, n_out):
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale), n_in - 1).astype(int)
  return mask[:, rows(mask.shape[1], size[0])][:, :, rows(mask.shape[2], size[1])]


def sine_position_embedding(mask: jax.Array, num_feats: int = 128,
                            temperature: float = 10000., offset: float = 0.) -> jax.Array:
  """[B, h, w] (1 = image) -> [B, h, w, 2 * num_feats]: cumulative positions normalised to
  (0, 2 pi] over the image part, sin/cos interleaved, y channels then x channels. `offset`:
  subtracted from the cumulative positions first (Deformable DETR's 0.5: cell centres)."""
  mask = mask.astype(jnp.float32)
  y = jnp.cumsum(mask, axis=1)
  x = jnp.cumsum(mask, axis=2)
  eps, scale = 1e-6, 2 * math.pi
  y = (y - offset) / (y[:, -1:, :] + eps) * scale
  x = (x - offset) / (x[:, :, -1:] + eps) * scale
  dim_t = temperature ** (2 * (jnp.arange(num_feats) // 2) / num_feats)

  def embed(pos):
    pos = pos[..., None] / dim_t
    return jnp.stack([jnp.sin(pos[..., 0::2]), jnp.cos(pos[..., 1::2])], axis=-1).reshape(
        pos.shape[:-1] + (num_feats,))
  return jnp.concatenate([embed(y), embed(x)], axis=-1)


class LearnedPositionEmbedding(nn.Module):
  """The original's PositionEmbeddingLearned: 50 row and 50 column embeddings of D / 2 features
  each, uniform [0, 1) init; [B, h, w] -> [B, h, w, D], x (column) channels then y (row)
  channels, the same at padded cells (it ignores the mask)."""
  num_feats: int = 128
  size: int = 50

  @nn.compact
  def __call__(self, mask):
    b, h, w = mask.shape
    if h > self.size or w > self.size:
      raise UserError(f'learned position embeddings cover {self.size} x {self.size} feature '
                      f'cells but the features are {h} x {w}: use position_embedding=sine, or '
                      f'images of at most {32 * self.size} px ({16 * self.size} with DC5)')
    init = _partitioned(nn.initializers.uniform(1.0), (None, None))
    row = self.param('row_embed', init, (self.size, self.num_feats))[:h]
    col = self.param('col_embed', init, (self.size, self.num_feats))[:w]
    pos = jnp.concatenate([jnp.broadcast_to(col[None], (h, w, self.num_feats)),
                           jnp.broadcast_to(row[:, None], (h, w, self.num_feats))], axis=-1)
    return jnp.broadcast_to(pos, (b,) + pos.shape)


def _layer_norm(name):
  return LayerNorm(epsilon=1e-5, name=name)  # PyTorch's eps (Flax's default is 1e-6).


def _linear(features, fan_in, names, name, dtype, xavier=True):
  """nn.Linear: xavier weight (the transformer's) or PyTorch's default (the heads'), and
  PyTorch's default bias."""
  kernel_init = _xavier_on(fan_in, features) if xavier else _torch_uniform(fan_in)
  return nn.Dense(features, dtype=dtype, name=name,
                  kernel_init=_partitioned(kernel_init, names),
                  bias_init=_partitioned(_torch_uniform(fan_in), names[1:]))


class _PostNormLayer(nn.Module):
  """What encoder and decoder layers share: residual dropout + post-norm, and the FFN
  linear1 -> ReLU -> dropout -> linear2."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.1
  dtype: jnp.dtype = jnp.float32
  attention_impl: str = 'auto'  # model.attention (vit_jax.layers.attention_kernels).
  # The dropout on the attention weights (torch.nn.MultiheadAttention's); None: dropout_rate.
  attention_dropout_rate: Optional[float] = None

  def add_and_norm(self, x, y, norm_name, train):
    return _layer_norm(norm_name)(x + nn.Dropout(self.dropout_rate)(y, deterministic=not train))

  def attention(self, name):
    """torch.nn.MultiheadAttention: dropout on the attention weights, xavier kernels (q, k, v
    with the fused matrix's fans; out_proj its own), zero biases."""
    rate = self.dropout_rate if self.attention_dropout_rate is None else self.attention_dropout_rate
    return MultiHeadAttention(self.num_heads, rate, self.dtype,
                              qkv_kernel_init=_fused_in_proj_init, out_name='out_proj',
                              attention=self.attention_impl, name=name)

  def feed_forward(self, x, train):
    width = x.shape[-1]
    y = _linear(self.mlp_dim, width, ('embed', 'mlp'), 'linear1', self.dtype)(x)
    y = nn.Dropout(self.dropout_rate)(nn.relu(y), deterministic=not train)
    return _linear(width, self.mlp_dim, ('mlp', 'embed'), 'linear2', self.dtype)(y)


# `train` is positional in the layers' calls: nn.remat keeps only positional arguments static.
class EncoderLayer(_PostNormLayer):
  """x = norm1(x + attn(q=k=x+pos, v=x)); x = norm2(x + ffn(x))."""

  @nn.compact
  def __call__(self, x, pos, mask, train: bool):
    y = self.attention('self_attn')(x, query_pos=pos, key_mask=mask, train=train)
    x = self.add_and_norm(x, y, 'norm1', train)
    return self.add_and_norm(x, self.feed_forward(x, train), 'norm2', train)


class DecoderLayer(_PostNormLayer):
  """Self-attention over the queries, cross-attention to the image, FFN; each post-norm."""

  @nn.compact
  def __call__(self, tgt, query_pos, memory, pos, mask, train: bool):
    y = self.attention('self_attn')(tgt, query_pos=query_pos, train=train)
    tgt = self.add_and_norm(tgt, y, 'norm1', train)
    y = self.attention('multihead_attn')(tgt, memory, query_pos=query_pos, key_pos=pos,
                                         key_mask=mask, train=train)
    tgt = self.add_and_norm(tgt, y, 'norm2', train)
    return self.add_and_norm(tgt, self.feed_forward(tgt, train), 'norm3', train)


def _layer_stack(layer_class, num_layers: int, make_layer, scan: bool, remat: str, name: str,
                 carry, *broadcast, train: bool, every_output: bool = False):
  """`carry` (an array or a tuple of them) through `num_layers` layers of `layer_class`, each
  called as layer(carry, *broadcast, train) -> the last output, or with `every_output` all of
  them stacked [L, ...].

  scan: the layers under nn.scan, compiled once whatever the depth; their params stacked on a
  leading axis named 'layers' under `name` (instead of `{name}_0` ... `{name}_{L-1}`;
  vit_jax.framework.weights converts between the two). Each layer draws its own dropout; the broadcast
  inputs (positions, memory, mask) are the same for every layer.
  remat: a name in vit_jax.layers.remat.REMAT_POLICIES.
  """
  if remat != 'none':
    # `train` follows the module, the carry and the broadcast inputs: static under remat.
    layer_class = nn.remat(layer_class, static_argnums=(2 + len(broadcast),),
                           policy=REMAT_POLICIES[remat], prevent_cse=not scan)
  if scan:
    def step(layer, x, *args):
      x = layer(x, *args, train)
      return x, (x if every_output else None)
    scanned = nn.scan(step, variable_axes={'params': 0, 'intermediates': 0},
                      split_rngs={'params': True, 'dropout': True},
                      in_axes=(nn.broadcast,) * len(broadcast), length=num_layers,
                      metadata_params={nn.PARTITION_NAME: 'layers'})
    carry, outputs = scanned(make_layer(layer_class, name), carry, *broadcast)
    return outputs if every_output else carry
  outputs = []
  for i in range(num_layers):
    carry = make_layer(layer_class, f'{name}_{i}')(carry, *broadcast, train)
    outputs.append(carry)
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outputs) if every_output else carry


class Encoder(nn.Module):
  """A stack of post-norm layers, without a final norm (as the original in post-norm mode).
  scan, remat: see _layer_stack."""
  num_layers: int
  layer: functools.partial
  scan: bool = False
  remat: str = 'none'

  @nn.compact
  def __call__(self, src, pos, mask, *, train: bool):
    if not self.num_layers:  # The encoder-depth ablation's 0: no params, nothing to scan.
      return src
    return _layer_stack(EncoderLayer, self.num_layers, self.layer, self.scan, self.remat,
                        'layers', src, pos, mask, train=train)


class Decoder(nn.Module):
  """The final norm is applied to every layer's output. `tgt`: the queries' start (zeros in
  the original); `query_pos`, `pos`: added at every attention, or None. scan, remat: see
  _layer_stack."""
  num_layers: int
  layer: functools.partial
  scan: bool = False
  remat: str = 'none'

  @nn.compact
  def __call__(self, tgt, query_pos, memory, pos, mask, *, train: bool):
    outputs = _layer_stack(DecoderLayer, self.num_layers, self.layer, self.scan, self.remat,
                           'layers', tgt, query_pos, memory, pos, mask, train=train,
                           every_output=True)
    return _layer_norm('norm')(outputs)  # The same norm on every layer's output.


# Where positional encodings enter (the paper's positional-encoding ablation): 'attention'
# adds them to the queries and keys of every attention layer (the original's only mode);
# 'input' adds them once to the module's input, as the original Transformer (Vaswani et al.)
# does: the spatial ones to the encoder's input or to the memory the decoder reads (its keys
# and values), the output ones (query_embed) as the decoder's starting queries; 'none' drops
# the spatial ones.
SPATIAL_POS = ('attention', 'input', 'none')
OUTPUT_POS = ('attention', 'input')
POSITION_EMBEDDINGS = ('sine', 'learned')


class Transformer(nn.Module):
  """src, pos: [B, N, D]; mask: [B, N] (1 = image); query_pos: [Q, D] -> the decoder's outputs
  [L, B, Q, D] and the encoder's memory [B, N, D]."""
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  num_heads: int = 8
  mlp_dim: int = 2048
  dropout_rate: float = 0.1
  dtype: jnp.dtype = jnp.float32
  encoder_spatial_pos: str = 'attention'  # One of SPATIAL_POS.
  decoder_spatial_pos: str = 'attention'  # One of SPATIAL_POS.
  output_pos: str = 'attention'  # One of OUTPUT_POS.
  scan: bool = False  # See _layer_stack.
  remat: str = 'none'  # A name in vit_jax.layers.remat.REMAT_POLICIES.
  attention: str = 'auto'  # See vit_jax.layers.attention_kernels.
  attention_dropout_rate: Optional[float] = None  # None: dropout_rate.

  @nn.compact
  def __call__(self, src, mask, query_pos, pos, *, train: bool):
    def layer(kind, name):
      return kind(self.num_heads, self.mlp_dim, self.dropout_rate, self.dtype,
                  attention_impl=self.attention,
                  attention_dropout_rate=self.attention_dropout_rate, name=name)
    remat = remat_policy_name(self.remat)
    src, encoder_pos = _place(src, pos, self.encoder_spatial_pos)
    memory = Encoder(self.num_encoder_layers, layer, self.scan, remat, name='encoder')(
        src, encoder_pos, mask, train=train)
    decoder_memory, decoder_pos = _place(memory, pos, self.decoder_spatial_pos)
    query_pos = jnp.broadcast_to(query_pos.astype(src.dtype), (src.shape[0],) + query_pos.shape)
    tgt, query_pos = _place(jnp.zeros_like(query_pos), query_pos, self.output_pos)
    hs = Decoder(self.num_decoder_layers, layer, self.scan, remat, name='decoder')(
        tgt, query_pos, decoder_memory, decoder_pos, mask, train=train)
    return hs, memory


def _place(x, pos, where: str):
  """(the module's input, the encoding its attention layers add) for `where` in SPATIAL_POS."""
  if where == 'attention':
    return x, pos
  if where == 'input':
    return x + pos, None
  return x, None


class BoxHead(nn.Module):
  """MLP(D, D, 4, 3 layers) with ReLU between, sigmoid at the end: normalised cx, cy, w, h."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    for i, (features, names) in enumerate([(d, ('embed', 'mlp')), (d, ('mlp', 'embed')),
                                           (4, ('embed', None))]):
      x = _linear(features, d, names, f'layers_{i}', self.dtype, xavier=False)(x)
      x = nn.relu(x) if i < 2 else x
    return jax.nn.sigmoid(x.astype(jnp.float32))


BACKBONES = ('resnet', 'swin')


def backbone_stages(model, images, levels: tuple[int, ...], train: bool) -> list:
  """A child 'backbone' chosen by `model.backbone` (the fields of DETR and Deformable DETR):
  its outputs at `levels` (0..3: layer1..layer4, strides 4..32, layer4 16 under DC5). Called
  inside the model's compact __call__."""
  if model.backbone == 'swin':
    return swin_backbone.swin_backbone(model, levels)(images, train=train)
  if model.backbone != 'resnet':
    raise UserError(f'unknown backbone {model.backbone!r}: use one of {", ".join(BACKBONES)}')
  outputs = ResNet(model.backbone_depth, model.dilation, model.backbone_blocks,
                   model.backbone_width, model.backbone_norm, model.dtype, name='backbone')(images)
  return [outputs[level] for level in levels]


class DETR(nn.Module):
  """images [B, H, W, 3] (normalised, zero-padded), pixel_mask [B, H, W] (1 = image) ->
  {'logits': [L, B, Q, num_classes + 1], 'boxes': [L, B, Q, 4]} for every decoder layer
  (the last is the prediction; the others feed the auxiliary losses).

  mask_features=True adds 'mask_features', what the panoptic mask head reads
  (panoptic_model.py): 'stages' (layer1..3 outputs), 'src' (input_proj's output [B, h, w, D]),
  'mask' ([B, h, w], 1 = image), 'memory' (the encoder's output [B, h, w, D]) and 'hidden' (the
  last decoder layer's normed output [B, Q, D])."""
  num_classes: int
  backbone_depth: int = 50
  dilation: bool = False  # DC5: the last stage dilated instead of strided (stride 16).
  backbone_blocks: Optional[tuple[int, ...]] = None  # Small backbones for experiments.
  backbone_width: int = 64
  backbone_norm: str = 'frozen'  # 'group' to train a backbone from scratch.
  # 'swin' instead of ResNet, sized by these (see swin_backbone.py); depths: backbone_blocks.
  backbone: str = 'resnet'
  backbone_variant: Optional[str] = None
  backbone_heads: Optional[tuple[int, ...]] = None
  backbone_window: Optional[int] = None
  backbone_drop_path: float = 0.0
  hidden_dim: int = 256
  num_queries: int = 100
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  num_heads: int = 8
  mlp_dim: int = 2048
  dropout_rate: float = 0.1
  dtype: jnp.dtype = jnp.float32
  # The paper's positional-encoding ablation (see SPATIAL_POS): the spatial encoding 'sine' or
  # 'learned' (the original's --position_embedding), where it enters encoder and decoder, and
  # where the output encodings (query_embed) enter the decoder.
  position_embedding: str = 'sine'
  encoder_spatial_pos: str = 'attention'
  decoder_spatial_pos: str = 'attention'
  output_pos: str = 'attention'
  # The transformer's layers under nn.scan (compile time independent of depth; params stacked
  # on a leading 'layers' axis, see _layer_stack), and what each layer keeps for the backward
  # pass (a name in vit_jax.layers.remat.REMAT_POLICIES).
  scan: bool = False
  remat: str = 'none'
  # The attention implementation (vit_jax.layers.attention_kernels; attention dropout runs the
  # reference in training), and the dropout on the attention weights (None: dropout_rate, the
  # original's; 0 keeps the FFN and residual dropout and lets the kernel train).
  attention: str = 'auto'
  attention_dropout_rate: Optional[float] = None

  @nn.compact
  def __call__(self, images, pixel_mask, *, train: bool = False, mask_features: bool = False):
    for field, choices in (('position_embedding', POSITION_EMBEDDINGS),
                           ('encoder_spatial_pos', SPATIAL_POS),
                           ('decoder_spatial_pos', SPATIAL_POS), ('output_pos', OUTPUT_POS)):
      if getattr(self, field) not in choices:
        raise UserError(f'unknown DETR {field} {getattr(self, field)!r}: use one of '
                        f'{", ".join(choices)}')
    stages = backbone_stages(self, images.astype(self.dtype), (0, 1, 2, 3), train)
    features = stages[-1]
    b, h, w, c = features.shape
    mask = downsample_mask(pixel_mask.astype(bool), (h, w))
    if self.position_embedding == 'learned':
      pos = LearnedPositionEmbedding(self.hidden_dim // 2, name='position_embedding')(mask)
    else:
      pos = sine_position_embedding(mask, self.hidden_dim // 2)
    pos = pos.astype(self.dtype)
    src = nn.Conv(self.hidden_dim, (1, 1), dtype=self.dtype, name='input_proj',
                  conv_general_dilated=conv_general_dilated,
                  kernel_init=_partitioned(_torch_uniform(c), (None, None, None, 'embed')),
                  bias_init=_partitioned(_torch_uniform(c), ('embed',)))(features)
    query_pos = self.param('query_embed', _partitioned(nn.initializers.normal(1.0),
                                                       ('queries', 'embed')),
                           (self.num_queries, self.hidden_dim))
    flat = lambda x: x.reshape(b, h * w, x.shape[-1])  # Row-major tokens, as the original.
    hs, memory = Transformer(
        self.num_encoder_layers, self.num_decoder_layers, self.num_heads, self.mlp_dim,
        self.dropout_rate, self.dtype, self.encoder_spatial_pos, self.decoder_spatial_pos,
        self.output_pos, self.scan, self.remat, self.attention, self.attention_dropout_rate,
        name='transformer')(
            flat(src), mask.reshape(b, h * w), query_pos, flat(pos), train=train)
    d = self.hidden_dim
    logits = _linear(self.num_classes + 1, d, ('embed', 'classes'), 'class_embed', self.dtype,
                     xavier=False)(hs)
    outputs = {'logits': logits.astype(jnp.float32),
               'boxes': BoxHead(self.dtype, name='bbox_embed')(hs)}
    if mask_features:
      outputs['mask_features'] = {'stages': stages[:3], 'src': src, 'mask': mask,
                                  'memory': memory.reshape(b, h, w, d), 'hidden': hs[-1]}
    return outputs


def build_detr(model_config) -> DETR:
  """The model named by `config.model` (fields of `DETR`; 'name' ignored)."""
  fields = {k: v for k, v in dict(model_config).items() if k != 'name'}
  unknown = set(fields) - set(DETR.__dataclass_fields__)
  if unknown:
    raise UserError(f'unknown DETR model fields {sorted(unknown)}: valid fields are '
                    f'{sorted(f for f in DETR.__dataclass_fields__ if f not in ("parent", "name"))}')
  if 'num_classes' not in fields:
    raise UserError('model config needs num_classes (the largest label + 1; DETR adds the '
                    '"no object" class itself)')
  if isinstance(fields.get('dtype'), str):
    fields['dtype'] = jnp.dtype(fields['dtype'])
  if 'attention' in fields:
    fields['attention'] = attention_name(fields['attention'])
  return DETR(**fields)
