"""The ResNet (BiT) stem of hybrid ViTs (R50+B/16, ...), laid out like the official checkpoints."""

import functools

import flax.linen as nn
import jax.numpy as jnp

from vit_jax.layers.convolution import conv_general_dilated
from vit_jax.layers.initializers import partitioned

# Flax's default conv init, with the channel axes named so that FSDP can shard them.
_CONV_KERNEL_INIT = partitioned(nn.initializers.lecun_normal(),
                                 (None, None, 'conv_in', 'conv_out'))


class StdConv(nn.Conv):
  """Convolution with weight standardisation (BiT): each output filter to zero mean, unit std."""

  def param(self, name, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    if name == 'kernel':
      value = value - jnp.mean(value, axis=(0, 1, 2))
      value = value / (jnp.std(value, axis=(0, 1, 2)) + 1e-5)
    return value


class ResidualUnit(nn.Module):
  """Bottleneck unit: 1x1, 3x3 (with the stride), 1x1 to 4x width, each followed by GroupNorm;
  the last GroupNorm starts at zero so that the unit starts as its shortcut."""
  features: int
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x):
    out_features = self.features * 4
    conv = functools.partial(StdConv, use_bias=False, kernel_init=_CONV_KERNEL_INIT,
                             conv_general_dilated=conv_general_dilated)
    residual = x
    if x.shape[-1] != out_features or self.strides != (1, 1):
      residual = conv(out_features, (1, 1), self.strides, name='conv_proj')(residual)
      residual = nn.GroupNorm(name='gn_proj')(residual)
    y = nn.relu(nn.GroupNorm(name='gn1')(conv(self.features, (1, 1), name='conv1')(x)))
    y = conv(self.features, (3, 3), self.strides, name='conv2')(y)
    y = nn.relu(nn.GroupNorm(name='gn2')(y))
    y = conv(out_features, (1, 1), name='conv3')(y)
    y = nn.GroupNorm(name='gn3', scale_init=nn.initializers.zeros)(y)
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`block_size` bottleneck units unit1..unitN; the first carries the stride."""
  block_size: int
  features: int
  first_strides: tuple[int, int]

  @nn.compact
  def __call__(self, x):
    for unit in range(self.block_size):
      strides = self.first_strides if unit == 0 else (1, 1)
      x = ResidualUnit(self.features, strides, name=f'unit{unit + 1}')(x)
    return x


def resnet_stem(x, num_layers: tuple[int, ...], width_factor: int = 1):
  """The hybrid's ResNet: 7x7/2 root, 3x3/2 max-pool, bottleneck stages block1..blockN.

  Called inside `VisionTransformer.__call__`, so its modules sit at the top of the parameter
  tree (`conv_root`, `gn_root`, `block1/unit1/...`) as in the official checkpoints.
  """
  width = int(64 * width_factor)
  x = StdConv(width, (7, 7), (2, 2), use_bias=False, kernel_init=_CONV_KERNEL_INIT,
              name='conv_root')(x)
  x = nn.relu(nn.GroupNorm(name='gn_root')(x))
  x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
  for stage, block_size in enumerate(num_layers):
    x = ResNetStage(block_size, width * 2**stage, (1, 1) if stage == 0 else (2, 2),
                    name=f'block{stage + 1}')(x)
  return x
