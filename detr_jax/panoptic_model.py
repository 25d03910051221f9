"""DETR for panoptic segmentation (Carion et al. 2020, section 4.4), exact to the original's
`models/segmentation.py` (DETRsegm): the box model, plus a mask per query from

- `bbox_attention` (MHAttentionMap): each query's attention map over the encoder memory, keys
  only (no values), one map per head, softmax over heads x positions together;
- `mask_head` (MaskHeadSmallConv): an FPN-style conv head on the projected backbone features
  and the attention maps, refined with the backbone's layer3, layer2 and layer1 features
  (through 1x1 `adapter` convs) up to stride 4, GroupNorm(8) after every 3x3 conv.

Parameter names follow the released panoptic checkpoints: the box model under `detr`,
`bbox_attention/{q_linear,k_linear}`, `mask_head/{lay1..lay5,gn1..gn5,out_lay,adapter1..3}`,
so `detr_jax/pretrained.py` loads them by renaming.

The paper's two-stage recipe trains the box model first, then only the mask head: set
`freeze_detr` (no gradient reaches the box model, so gradient clipping sees only the mask head's,
as in the original where the box model's parameters do not require grad) together with
`lr_mults=((r'detr/.*', 0.),)` in config.optim (no weight decay on the frozen weights either).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax import models
from vit_jax.framework.errors import UserError
from vit_jax.layers.convolution import conv_general_dilated


def _group_norm(channels: int, name: str):
  """torch.nn.GroupNorm(8, C) (eps 1e-5); HF's min(8, C) groups for the narrow layers of small
  models (identical for the released ones, whose narrowest layer has 16 channels)."""
  return nn.GroupNorm(num_groups=min(8, channels), epsilon=1e-5, name=name)


def _kaiming_uniform_a1():
  """kaiming_uniform_(a=1), the original's init of every mask-head conv: U(+-sqrt(3 / fan_in))."""
  return nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')


def mask_head_widths(hidden_dim: int, num_heads: int) -> tuple[int, ...]:
  """Channels of lay1..lay5 (the original's inter_dims): 264, 128, 64, 32, 16 for DETR."""
  return (hidden_dim + num_heads, hidden_dim // 2, hidden_dim // 4, hidden_dim // 8,
          hidden_dim // 16)


def check_mask_head_widths(hidden_dim: int, num_heads: int) -> None:
  """GroupNorm needs every width divisible by its group count (8, or the width below 8)."""
  widths = mask_head_widths(hidden_dim, num_heads)
  if min(widths) < 1 or any(c % min(8, c) for c in widths):
    raise UserError(f'the panoptic mask head cannot use hidden_dim {hidden_dim} with num_heads '
                    f'{num_heads}: its GroupNorm(8) widths {widths} must be multiples of 8 (or '
                    'below 8); use a hidden_dim that is a multiple of 128 (DETR: 256) and '
                    'num_heads a multiple of 8')


class AttentionMap(nn.Module):
  """The original's MHAttentionMap: hidden [B, Q, D] (the last decoder layer's output), memory
  [B, h, w, D] (the encoder's output), mask [B, h, w] (1 = image) -> [B, Q, heads, h, w].

  q = q_linear(hidden), k = k_linear(memory) (a 1x1 conv with the linear's weights), split into
  heads; scores q.k * (D / heads)^-0.5 per head; padded positions get no weight; one softmax
  over heads and positions together. The original fills padding with -inf; the finite minimum
  here gives the same weights whenever an image has a valid cell, and uniform maps instead of
  NaN for the empty images that pad an eval batch. Its dropout is 0, so there is none.
  """
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, memory, mask):
    d = hidden.shape[-1]

    def linear(name):  # xavier_uniform_ weight, zero bias.
      return nn.Dense(d, dtype=self.dtype, name=name,
                      kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                               ('embed', 'mlp')),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)))

    heads = (self.num_heads, d // self.num_heads)
    q = linear('q_linear')(hidden).reshape(hidden.shape[:2] + heads)
    k = linear('k_linear')(memory).reshape(memory.shape[:3] + heads)
    scores = jnp.einsum('bqnc,bhwnc->bqnhw', q * (d / self.num_heads) ** -0.5, k,
                        preferred_element_type=jnp.float32).astype(jnp.float32)
    scores = jnp.where(mask.astype(bool)[:, None, None], scores, jnp.finfo(jnp.float32).min)
    b, num_queries = scores.shape[:2]
    weights = jax.nn.softmax(scores.reshape(b, num_queries, -1), axis=-1)
    return weights.reshape(scores.shape).astype(self.dtype)


class MaskHead(nn.Module):
  """The original's MaskHeadSmallConv: one mask logit map per query at the stride of layer1.

  src [B, h, w, D]: the projected backbone features (input_proj's output, the transformer's
  input); attention [B, Q, heads, h, w]: `AttentionMap`'s; stages: the backbone's (layer1,
  layer2, layer3) outputs [B, H_i, W_i, C_i] -> [B, Q, H_1, W_1].

  Per query: concat(src, its heads' maps) -> lay1, lay2 (3x3 conv, GroupNorm, ReLU each); then
  three times: nearest-upsample to the next finer stage (PyTorch's legacy nearest rule),
  add that stage's features through a 1x1 adapter (layer3, then layer2, then layer1), 3x3 conv,
  GroupNorm, ReLU; finally out_lay, a 3x3 conv to one channel.
  """
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, src, attention, stages):
    b, num_queries, num_heads, h, w = attention.shape
    widths = mask_head_widths(src.shape[-1], num_heads)

    def conv(features, kernel, name):
      pad = kernel // 2
      return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)),
                     dtype=self.dtype, name=name, conv_general_dilated=conv_general_dilated,
                     kernel_init=nn.with_logical_partitioning(
                         _kaiming_uniform_a1(), (None, None, 'conv_in', 'conv_out')),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                            ('conv_out',)))

    def refine(x, i):  # lay{i} -> gn{i} -> ReLU.
      return nn.relu(_group_norm(widths[i - 1], f'gn{i}')(conv(widths[i - 1], 3, f'lay{i}')(x)))

    # [B * Q, h, w, D + heads], image-major as the original's expand + flatten(0, 1).
    src = jnp.broadcast_to(src[:, None], (b, num_queries) + src.shape[1:])
    maps = attention.transpose(0, 1, 3, 4, 2).astype(src.dtype)
    x = jnp.concatenate([src, maps], axis=-1).reshape((b * num_queries, h, w, -1))
    x = refine(refine(x, 1), 2)
    for i, stage in enumerate(reversed(tuple(stages))):  # layer3, layer2, layer1.
      fpn = conv(widths[i + 1], 1, f'adapter{i + 1}')(stage.astype(self.dtype))  # Per image.
      x = models.downsample_mask(x, fpn.shape[1:3])  # Nearest, PyTorch's rule (upsampling).
      x = (x.reshape((b, num_queries) + x.shape[1:]) + fpn[:, None]).reshape(
          (b * num_queries,) + x.shape[1:])
      x = refine(x, i + 3)
    x = conv(1, 3, 'out_lay')(x)
    return x.reshape((b, num_queries) + x.shape[1:3]).astype(jnp.float32)


class DETRPanoptic(nn.Module):
  """images [B, H, W, 3] (normalised, zero-padded), pixel_mask [B, H, W] (1 = image) -> the box
  model's {'logits': [L, B, Q, C + 1], 'boxes': [L, B, Q, 4]} plus 'masks': [B, Q, ceil(H / 4),
  ceil(W / 4)] mask logits of the last decoder layer only (the original's pred_masks; the
  auxiliary layers get none).

  detr: the box model (`models.DETR`), a child named 'detr' as in the released checkpoints.
  freeze_detr: no gradient flows into the box model (the recipe's second stage; see above).
  """
  detr: models.DETR
  freeze_detr: bool = False

  # What the tasks read off a DETR model.
  @property
  def num_classes(self) -> int:
    return self.detr.num_classes

  @property
  def num_queries(self) -> int:
    return self.detr.num_queries

  @property
  def num_heads(self) -> int:
    return self.detr.num_heads

  @nn.compact
  def __call__(self, images, pixel_mask, *, train: bool = False):
    check_mask_head_widths(self.detr.hidden_dim, self.detr.num_heads)
    outputs = self.detr(images, pixel_mask, train=train, mask_features=True)
    if self.freeze_detr:
      outputs = jax.lax.stop_gradient(outputs)
    features = outputs['mask_features']
    attention = AttentionMap(self.detr.num_heads, self.detr.dtype, name='bbox_attention')(
        features['hidden'], features['memory'], features['mask'])
    masks = MaskHead(self.detr.dtype, name='mask_head')(features['src'], attention,
                                                        features['stages'])
    return {**{k: v for k, v in outputs.items() if k != 'mask_features'}, 'masks': masks}


def build_detr_panoptic(model_config) -> DETRPanoptic:
  """config.model.name = 'detr_panoptic': the fields of `models.DETR` plus `freeze_detr`."""
  fields = {k: v for k, v in dict(model_config).items() if k != 'freeze_detr'}
  detr = models.build_detr(fields)
  check_mask_head_widths(detr.hidden_dim, detr.num_heads)
  return DETRPanoptic(detr, freeze_detr=bool(dict(model_config).get('freeze_detr', False)))
