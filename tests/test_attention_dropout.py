"""model.attention_dropout_rate: the dropout on the attention weights alone.

With dropout_rate 0.1 and attention_dropout_rate 0, a training step of DETR, Deformable DETR
and Segmenter equals the original's (attention dropout = dropout_rate) with only the attention
modules' dropout switched off, and every attention runs the kernel model.attention names (no
fallback to the reference); unset, it is the original's attention dropout, which falls back.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_variables
from detr_jax import deformable_models, models as detr_models
from segmenter_jax import models as segmenter_models
from vit_jax.classification import swin
from vit_jax.framework import loop_config
from vit_jax.framework.errors import UserError
from vit_jax.layers import attention, attention_kernels

_DETR = dict(num_classes=3, backbone_blocks=(1, 1, 1, 1), backbone_width=8, hidden_dim=32,
             num_queries=5, num_encoder_layers=1, num_decoder_layers=1, num_heads=2, mlp_dim=32,
             dropout_rate=0.1)
_SEGMENTER = dict(hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64, patch_size=4,
                  image_size=16, num_classes=5, decoder='mask_transformer', dropout_rate=0.1,
                  decoder_dropout_rate=0.1, decoder_layers=1)


def _detr_inputs():
  images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  pixel_mask = jnp.ones((2, 64, 64)).at[1, 40:].set(0)  # Padded keys in the second image.
  return images * pixel_mask[..., None], pixel_mask


# name: (builder of the model from extra fields, inputs, attentions per forward pass).
CASES = {
    'detr': (lambda **kw: detr_models.build_detr(dict(_DETR, **kw)), _detr_inputs, 3),
    'deformable_detr': (  # Only the decoder's self-attention is a MultiHeadAttention.
        lambda **kw: deformable_models.build_deformable_detr(
            dict(_DETR, num_feature_levels=1, **kw)), _detr_inputs, 1),
    'segmenter': (lambda **kw: segmenter_models.build_segmenter(dict(_SEGMENTER, **kw)),
                  lambda: (jax.random.normal(jax.random.key(1), (2, 16, 16, 3)),), 2),
}


def _output(model, variables, inputs):
  apply = jax.jit(lambda v, x: model.apply(v, *x, train=True,
                                           rngs={'dropout': jax.random.key(7)}))
  return jax.tree.leaves(apply(variables, inputs))


def _no_attention_dropout(next_fun, args, kwargs, context):
  """The attention modules called as in evaluation (their only use of `train` is dropout)."""
  if isinstance(context.module, attention.MultiHeadAttention) and context.method_name == '__call__':
    kwargs = dict(kwargs, train=False)
  return next_fun(*args, **kwargs)


@pytest.mark.slow  # 20-90 s each on 2 loaded cores: three compiles of a small model.
@pytest.mark.parametrize('name', sorted(CASES))
def test_attention_dropout_alone_and_the_kernel_trains(name, monkeypatch):
  build, inputs, attentions = CASES[name]
  inputs = inputs()
  variables = random_variables(build(), *inputs, train=False)
  calls = []

  def kernel(implementation, query, key, value, key_mask=None):  # The reference, counted.
    calls.append(implementation)
    mask = None if key_mask is None else key_mask.astype(bool)[:, None, None, :]
    return attention.attend(query, key, value, mask)
  monkeypatch.setattr(attention_kernels, 'kernel_attend', kernel)

  ours = _output(build(attention='pallas_flash', attention_dropout_rate=0.0), variables, inputs)
  assert calls == ['pallas_flash'] * attentions  # Every attention ran the kernel.
  original = build(attention='xla')
  with nn.intercept_methods(_no_attention_dropout):
    expected = _output(original, variables, inputs)
  for a, b in zip(ours, expected):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  # Unset, the original's attention dropout acts and falls back to the reference (traced only).
  calls.clear()
  jax.eval_shape(lambda v, x: build(attention='pallas_flash').apply(
      v, *x, train=True, rngs={'dropout': jax.random.key(7)}), variables, inputs)
  assert not calls


def test_config_key_defaults_to_the_models_own():
  assert loop_config.defaults().model.attention_dropout_rate is None
  assert segmenter_models.build_segmenter(dict(_SEGMENTER, attention_dropout_rate=None))
  with pytest.raises(UserError, match='Swin has no attention dropout'):
    swin.build_swin(dict(variant='T', num_classes=3, attention_dropout_rate=0.1))
  assert swin.build_swin(dict(variant='T', num_classes=3, attention_dropout_rate=0.0))
