"""Deformable DETR (Zhu et al. 2021), exact to fundamentalvision/Deformable-DETR.

ResNet (DETR's, frozen batch norm) -> C3, C4, C5 (strides 8, 16, 32) each through a 1x1 conv +
GroupNorm(32), and a stride-64 level from a 3x3/2 conv of the raw C5 + GroupNorm -> the levels'
tokens concatenated, each with its sine position (cell centres: the -0.5 offset) plus a learned
level embedding -> 6 post-norm encoder layers of multi-scale deformable self-attention
(deformable_attention.py) -> 6 decoder layers (self-attention, deformable cross-attention from
each query's reference point, FFN 1024; no final norm) -> per layer 91 sigmoid class logits
(focal loss; no no-object class) and a box MLP whose output is added to the reference point's
inverse sigmoid.

Options, as the original's flags: `num_feature_levels=1` (single scale, C5 only), `dilation`
(DC5), `with_box_refine` (each decoder layer has its own heads and moves its queries' reference
to the box it predicts, detached), `two_stage` (needs refinement: the encoder's tokens propose
boxes, the top `num_queries` by their class-0 logit start the decoder).

Parameter names are the official state dict's with `transformer.` dropped and numbered modules
as `_N` (`encoder/layers_0/self_attn/sampling_offsets`, `decoder/layers_0/cross_attn/...`,
`input_proj_0/{conv,norm}`, `level_embed`, `query_embed`, `class_embed`, ...); under refinement
the decoder layers own their box heads (`decoder/layers_N/bbox_embed`, the original's alias
`transformer.decoder.bbox_embed.N`) and the class heads are `class_embed_N`; two-stage's
encoder heads are `class_embed_L` and `bbox_embed_L` (L = decoder layers, the original's last
index). deformable_pretrained.py holds the rename table.

Padding: the input projections' GroupNorm takes its statistics over the whole (padded) map, so
every output depends on how much an image is padded, more than in DETR: keep an image's padded
shape a function of the image alone (the padding buckets do).
"""

import functools
import math
from typing import ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from detr_jax import deformable_attention, models
from vit_jax.framework.errors import UserError
from vit_jax.layers.convolution import conv_general_dilated
from vit_jax.layers.initializers import partitioned, torch_default
from vit_jax.layers.attention_kernels import attention_name
from vit_jax.layers.remat import remat_policy_name

# The class logits' initial bias: every class starts at probability 0.01 (RetinaNet's prior).
PRIOR_PROBABILITY = 0.01


def inverse_sigmoid(x, eps: float = 1e-5):
  """The original's: x clamped to [0, 1], then log(x / (1 - x)) with both parts at least eps."""
  x = jnp.clip(x, 0, 1)
  return jnp.log(jnp.maximum(x, eps) / jnp.maximum(1 - x, eps))


_xavier = nn.initializers.xavier_uniform()  # The original's xavier_uniform_ (gain 1).


class EncoderLayer(models._PostNormLayer):  # pylint: disable=protected-access
  """x = norm1(x + deformable_attn(q=x+pos, values from x)); x = norm2(x + ffn(x))."""
  spatial_shapes: tuple[tuple[int, int], ...] = ()
  num_points: int = 4

  @nn.compact
  def __call__(self, x, pos, reference, mask, train: bool):
    y = deformable_attention.MultiScaleDeformableAttention(
        self.spatial_shapes, self.num_heads, self.num_points, self.dtype, name='self_attn')(
            x + pos, reference, x, mask)
    x = self.add_and_norm(x, y, 'norm1', train)
    return self.add_and_norm(x, self.feed_forward(x, train), 'norm2', train)


class BoxMLP(nn.Module):
  """MLP(D, D, 4, 3 layers), ReLU between: PyTorch's default init but the last layer's weight
  zero and its bias (0, 0, `size_bias`, `size_bias`). Returns the unsquashed (pre-sigmoid)
  output in float32."""
  size_bias: float = 0.
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    for i, names in enumerate([('embed', 'mlp'), ('mlp', 'embed')]):
      x = nn.relu(nn.Dense(d, dtype=self.dtype, name=f'layers_{i}',
                           kernel_init=partitioned(torch_default(d), names),
                           bias_init=partitioned(torch_default(d), names[1:]))(x))
    bias = lambda key, shape, dtype=jnp.float32: jnp.array([0, 0, 1, 1], dtype) * self.size_bias
    x = nn.Dense(4, dtype=self.dtype, name='layers_2',
                 kernel_init=partitioned(nn.initializers.zeros, ('embed', None)),
                 bias_init=partitioned(bias, (None,)))(x)
    return x.astype(jnp.float32)


class DecoderLayer(models._PostNormLayer):  # pylint: disable=protected-access
  """Self-attention over the queries -> norm2, deformable cross-attention -> norm1, FFN ->
  norm3 (the original's names); with `refine`, its own box head moves the reference.

  The carry is (queries, reference [B, Q, 4], reference_is_box []): a point reference (x, y)
  rides as (x, y, 0.5, 0.5), whose size's inverse sigmoid is 0, so that refinement's update
  sigmoid(delta + inverse_sigmoid(reference)) is the original's for points and boxes alike and
  the carry keeps one shape under nn.scan. Boxes come only from refinement or two-stage, both
  of which detach them: the layer detaches a box reference, never a point.
  """
  spatial_shapes: tuple[tuple[int, int], ...] = ()
  num_points: int = 4
  refine: bool = False
  size_bias: float = 0.  # The refinement head's initial box-size bias.

  @nn.compact
  def __call__(self, carry, query_pos, memory, mask, valid_ratios, train: bool):
    tgt, reference, is_box = carry
    reference = jnp.where(is_box, jax.lax.stop_gradient(reference), reference)
    ratios = jnp.concatenate([valid_ratios, valid_ratios], -1)  # [B, L, 4]
    y = self.attention('self_attn')(tgt, query_pos=query_pos, train=train)
    tgt = self.add_and_norm(tgt, y, 'norm2', train)
    y = deformable_attention.MultiScaleDeformableAttention(
        self.spatial_shapes, self.num_heads, self.num_points, self.dtype, name='cross_attn')(
            tgt + query_pos, reference[:, :, None] * ratios[:, None], memory, mask, is_box)
    tgt = self.add_and_norm(tgt, y, 'norm1', train)
    tgt = self.add_and_norm(tgt, self.feed_forward(tgt, train), 'norm3', train)
    if not self.refine:
      return tgt, reference, is_box
    delta = BoxMLP(self.size_bias, self.dtype, name='bbox_embed')(tgt)
    return tgt, jax.nn.sigmoid(delta + inverse_sigmoid(reference)), jnp.ones_like(is_box)


class LayerStack(nn.Module):
  """`num_layers` layers of `layer_class` (see models._layer_stack: scan, remat)."""
  layer_class: type
  num_layers: int
  make_layer: functools.partial
  scan: bool = False
  remat: str = 'none'
  every_output: bool = False

  @nn.compact
  def __call__(self, carry, *broadcast, train: bool):
    return models._layer_stack(  # pylint: disable=protected-access
        self.layer_class, self.num_layers, self.make_layer, self.scan, self.remat, 'layers',
        carry, *broadcast, train=train, every_output=self.every_output)


class InputProjection(nn.Module):
  """Conv (1x1, or 3x3 stride 2 for the extra levels; xavier weight, zero bias) + GroupNorm(32)
  (statistics over the whole, padded, map)."""
  features: int
  kernel: int = 1
  stride: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    pad = (self.kernel - 1) // 2  # Explicit: 'SAME' pads asymmetrically at stride 2.
    x = nn.Conv(self.features, (self.kernel,) * 2, (self.stride,) * 2, ((pad, pad),) * 2,
                dtype=self.dtype, conv_general_dilated=conv_general_dilated, name='conv',
                kernel_init=partitioned(_xavier, (None, None, 'conv_in', 'embed')),
                bias_init=partitioned(nn.initializers.zeros, ('embed',)))(x)
    return nn.GroupNorm(num_groups=32, epsilon=1e-5, use_fast_variance=False, dtype=self.dtype,
                        scale_init=partitioned(nn.initializers.ones, ('embed',)),
                        bias_init=partitioned(nn.initializers.zeros, ('embed',)),
                        name='norm')(x)


def valid_ratios(mask):
  """[B, H, W] (1 = image) -> [B, 2]: the image's share of the map's width and height."""
  h, w = mask.shape[1:]
  return jnp.stack([mask[:, 0, :].sum(-1).astype(jnp.float32) / w,
                    mask[:, :, 0].sum(-1).astype(jnp.float32) / h], -1)


def encoder_reference_points(spatial_shapes, ratios):
  """Every token's cell centre on its level, in units of the level's image part, times each
  level's valid ratio (the original's): [B, S, L, 2] (x, y). ratios: [B, L, 2]."""
  points = []
  for level, (h, w) in enumerate(spatial_shapes):
    y, x = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5,
                       np.arange(w, dtype=np.float32) + 0.5, indexing='ij')
    points.append(jnp.stack([
        x.reshape(-1)[None] / (ratios[:, None, level, 0] * w),
        y.reshape(-1)[None] / (ratios[:, None, level, 1] * h)], -1))
  return jnp.concatenate(points, 1)[:, :, None] * ratios[:, None]


def encoder_proposals(masks, spatial_shapes):
  """Two-stage's fixed proposals, one per token: its cell centre in units of its level's image
  part and a size 0.05 * 2^level, as logits [B, S, 4]; and which are usable [B, S] (on the
  image, all coordinates in (0.01, 0.99)); the others' logits are +inf."""
  proposals, usable = [], []
  for level, ((h, w), mask) in enumerate(zip(spatial_shapes, masks)):
    valid_h = mask[:, :, 0].sum(-1).astype(jnp.float32)
    valid_w = mask[:, 0, :].sum(-1).astype(jnp.float32)
    y, x = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                       indexing='ij')
    grid = (np.stack([x, y], -1)[None] + 0.5) / jnp.stack([valid_w, valid_h], -1)[:, None, None]
    size = jnp.full_like(grid, 0.05 * 2.0**level)
    proposals.append(jnp.concatenate([grid, size], -1).reshape(mask.shape[0], h * w, 4))
    usable.append(mask.reshape(mask.shape[0], h * w))
  proposals = jnp.concatenate(proposals, 1)
  usable = (jnp.concatenate(usable, 1) &
            ((proposals > 0.01) & (proposals < 0.99)).all(-1))
  logits = jnp.log(proposals / (1 - proposals))
  return jnp.where(usable[..., None], logits, jnp.inf), usable


def proposal_position_embedding(box_logits, num_feats: int, temperature: float = 10000.):
  """[B, Q, 4] box logits -> [B, Q, 4 * num_feats]: each sigmoid coordinate times 2 pi, sine
  embedded (sin/cos interleaved), the four coordinates' embeddings concatenated."""
  dim_t = temperature ** (2 * (jnp.arange(num_feats) // 2) / num_feats)
  pos = jax.nn.sigmoid(box_logits.astype(jnp.float32))[..., None] * (2 * math.pi) / dim_t
  pos = jnp.stack([jnp.sin(pos[..., 0::2]), jnp.cos(pos[..., 1::2])], -1)
  return pos.reshape(box_logits.shape[:-1] + (4 * num_feats,))


def _class_head(num_classes, name, dtype):
  """Linear(D, classes): PyTorch's default weight, every bias at the prior's logit."""
  def kernel_init(key, shape, dtype=jnp.float32):
    return torch_default(shape[0])(key, shape, dtype)
  prior = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
  return nn.Dense(num_classes, dtype=dtype, name=name,
                  kernel_init=partitioned(kernel_init, ('embed', 'classes')),
                  bias_init=partitioned(nn.initializers.constant(prior), ('classes',)))


class DeformableDETR(nn.Module):
  """images [B, H, W, 3] (normalised, zero-padded), pixel_mask [B, H, W] (1 = image) ->
  {'logits': [L, B, Q, num_classes] (sigmoid scores), 'boxes': [L, B, Q, 4]} for every decoder
  layer (normalised cx, cy, w, h of the unpadded image); two-stage adds the encoder's
  proposals over all S tokens: 'enc_logits' [B, S, num_classes], 'enc_boxes' [B, S, 4]."""
  num_classes: int
  backbone_depth: int = 50
  dilation: bool = False  # DC5.
  backbone_blocks: Optional[tuple[int, ...]] = None  # Small backbones for experiments.
  backbone_width: int = 64
  backbone_norm: str = 'frozen'  # 'group' to train a backbone from scratch.
  # 'swin' instead of ResNet, sized by these (see swin_backbone.py); depths: backbone_blocks.
  backbone: str = 'resnet'
  backbone_variant: Optional[str] = None
  backbone_heads: Optional[tuple[int, ...]] = None
  backbone_window: Optional[int] = None
  backbone_drop_path: float = 0.0
  num_feature_levels: int = 4  # 1: single scale (C5); else C3-C5 and strided extra levels.
  hidden_dim: int = 256
  num_queries: int = 300  # Two-stage: the number of proposals kept.
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  num_heads: int = 8
  encoder_points: int = 4
  decoder_points: int = 4
  mlp_dim: int = 1024
  dropout_rate: float = 0.1
  with_box_refine: bool = False
  two_stage: bool = False
  dtype: jnp.dtype = jnp.float32
  scan: bool = False  # See models._layer_stack.
  remat: str = 'none'  # A name in vit_jax.layers.remat.REMAT_POLICIES.
  # The decoder's self-attention (vit_jax.layers.attention_kernels) and the dropout on its
  # weights (None: dropout_rate, the original's); the deformable ones are their own operator,
  # without attention dropout.
  attention: str = 'auto'
  attention_dropout_rate: Optional[float] = None

  # The detection task trains sigmoid classes with the focal loss and keeps the top scores.
  sigmoid_classes: ClassVar[bool] = True

  def _check(self):
    if self.num_feature_levels != 1 and self.num_feature_levels < 3:
      raise UserError(f'num_feature_levels {self.num_feature_levels}: use 1 (C5 only) or 3 or '
                      'more (C3-C5, then stride-2 convolutions)')
    if self.two_stage and not self.with_box_refine:
      raise UserError('two_stage needs with_box_refine=True (as the original, issue #182)')
    if self.hidden_dim % 32:
      raise UserError(f'hidden_dim {self.hidden_dim} is not divisible by the input '
                      'projections\' 32 GroupNorm groups: use a multiple of 32')

  def init_image_size(self) -> int:
    """A square image side to create the parameters with (they do not depend on the size):
    64, or under two-stage large enough that its tokens hold num_queries proposals."""
    strides = [8, 16, 32] if self.num_feature_levels > 1 else [32]
    strides += [64 * 2**i for i in range(self.num_feature_levels - len(strides))]
    side = 64
    while self.two_stage and sum(math.ceil(side / s)**2 for s in strides) < self.num_queries:
      side *= 2
    return side

  @nn.compact
  def __call__(self, images, pixel_mask, *, train: bool = False):
    self._check()
    d, dtype = self.hidden_dim, self.dtype
    features = models.backbone_stages(self, images.astype(dtype),
                                      (1, 2, 3) if self.num_feature_levels > 1 else (3,), train)
    pixel_mask = pixel_mask.astype(bool)
    maps = [InputProjection(d, dtype=dtype, name=f'input_proj_{level}')(x)
            for level, x in enumerate(features)]
    extra = features[-1]  # The first extra level reads the raw C5, later ones the last level.
    for level in range(len(features), self.num_feature_levels):
      extra = InputProjection(d, 3, 2, dtype, name=f'input_proj_{level}')(extra)
      maps.append(extra)
    masks = [models.downsample_mask(pixel_mask, x.shape[1:3]) for x in maps]
    level_embed = self.param('level_embed', partitioned(nn.initializers.normal(1.0),
                                                        (None, 'embed')),
                             (self.num_feature_levels, d))
    spatial_shapes = tuple(x.shape[1:3] for x in maps)
    b = images.shape[0]
    flat = lambda xs: jnp.concatenate([x.reshape(b, -1, *x.shape[3:]) for x in xs], 1)
    src, mask = flat(maps), flat(masks)
    pos = flat([(models.sine_position_embedding(m, d // 2, offset=0.5) + level_embed[level]
                 ).astype(dtype) for level, m in enumerate(masks)])
    ratios = jnp.stack([valid_ratios(m) for m in masks], 1)  # [B, L, 2]

    remat = remat_policy_name(self.remat)
    layer_fields = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                        dropout_rate=self.dropout_rate, dtype=dtype,
                        attention_impl=attention_name(self.attention),
                        attention_dropout_rate=self.attention_dropout_rate,
                        spatial_shapes=spatial_shapes)
    encoder_layer = lambda layer_class, name: layer_class(
        **layer_fields, num_points=self.encoder_points, name=name)
    memory = LayerStack(EncoderLayer, self.num_encoder_layers, encoder_layer, self.scan, remat,
                        name='encoder')(
        src, pos, encoder_reference_points(spatial_shapes, ratios), mask, train=train)

    outputs = {}
    if self.two_stage:
      if src.shape[1] < self.num_queries:
        raise UserError(f'two-stage keeps the best num_queries={self.num_queries} of the '
                        f'encoder\'s tokens, but {images.shape[1]}x{images.shape[2]} images '
                        f'give {src.shape[1]}: use larger images or fewer queries')
      proposals, usable = encoder_proposals(masks, spatial_shapes)
      proposal_memory = jnp.where(usable[..., None], memory, 0)
      proposal_memory = models._layer_norm('enc_output_norm')(  # pylint: disable=protected-access
          models._linear(d, d, ('embed', 'mlp'), 'enc_output', dtype)(proposal_memory))  # pylint: disable=protected-access
      layers = self.num_decoder_layers
      enc_logits = _class_head(self.num_classes, f'class_embed_{layers}', dtype)(
          proposal_memory).astype(jnp.float32)
      enc_boxes = BoxMLP(dtype=dtype, name=f'bbox_embed_{layers}')(proposal_memory) + proposals
      outputs.update(enc_logits=enc_logits, enc_boxes=jax.nn.sigmoid(enc_boxes))
      top = jax.lax.top_k(enc_logits[..., 0], self.num_queries)[1]  # By the class-0 logit.
      box_logits = jax.lax.stop_gradient(jnp.take_along_axis(enc_boxes, top[..., None], 1))
      reference, is_box = jax.nn.sigmoid(box_logits), jnp.array(True)
      queries = models._linear(2 * d, 2 * d, ('embed', 'mlp'), 'pos_trans', dtype)(  # pylint: disable=protected-access
          proposal_position_embedding(box_logits, d // 2).astype(dtype))
      queries = models._layer_norm('pos_trans_norm')(queries)  # pylint: disable=protected-access
      query_pos, tgt = queries[..., :d], queries[..., d:]
    else:
      queries = self.param('query_embed', partitioned(nn.initializers.normal(1.0),
                                                      ('queries', 'embed')),
                           (self.num_queries, 2 * d)).astype(dtype)
      query_pos, tgt = (jnp.broadcast_to(x, (b,) + x.shape) for x in (queries[:, :d],
                                                                          queries[:, d:]))
      points = jax.nn.sigmoid(nn.Dense(
          2, dtype=dtype, name='reference_points',
          kernel_init=partitioned(_xavier, ('embed', None)),
          bias_init=partitioned(nn.initializers.zeros, (None,)))(query_pos).astype(jnp.float32))
      reference = jnp.concatenate([points, jnp.full_like(points, 0.5)], -1)
      is_box = jnp.array(False)

    def decoder_layer(layer_class, name):
      # The original's first refinement head starts its boxes at size sigmoid(-2); under
      # nn.scan ('layers') every layer's starts at 0 (its init cannot tell the layers apart).
      first = name == 'layers_0' and not self.two_stage
      return layer_class(**layer_fields, num_points=self.decoder_points,
                         refine=self.with_box_refine, size_bias=-2. if first else 0., name=name)
    hs, references, _ = LayerStack(DecoderLayer, self.num_decoder_layers, decoder_layer,
                                   self.scan, remat, every_output=True, name='decoder')(
        (tgt, reference, is_box), query_pos, memory, mask, ratios, train=train)

    if self.with_box_refine:  # Per-layer heads; the layers' references are their boxes.
      logits = jnp.stack([
          _class_head(self.num_classes, f'class_embed_{i}', dtype)(hs[i])
          for i in range(self.num_decoder_layers)])
      boxes = references
    else:  # One head for every layer, around the fixed point reference.
      logits = _class_head(self.num_classes, 'class_embed', dtype)(hs)
      boxes = jax.nn.sigmoid(BoxMLP(-2., dtype, name='bbox_embed')(hs) +
                             inverse_sigmoid(reference))
    outputs.update(logits=logits.astype(jnp.float32), boxes=boxes.astype(jnp.float32))
    return outputs


def build_deformable_detr(model_config) -> DeformableDETR:
  """The model named by `config.model` (fields of `DeformableDETR`; 'name' ignored)."""
  fields = {k: v for k, v in dict(model_config).items() if k != 'name'}
  valid = sorted(f for f in DeformableDETR.__dataclass_fields__ if f not in ('parent', 'name'))
  unknown = set(fields) - set(valid)
  if unknown:
    raise UserError(f'unknown Deformable DETR model fields {sorted(unknown)}: valid fields '
                    f'are {valid}')
  if 'num_classes' not in fields:
    raise UserError('model config needs num_classes (the largest label + 1; sigmoid classes: '
                    'no no-object class)')
  if isinstance(fields.get('dtype'), str):
    fields['dtype'] = jnp.dtype(fields['dtype'])
  return DeformableDETR(**fields)
