"""Segmenter model: official parameter counts, encoder parity with timm (padding, position-
embedding resize, DeiT distillation token), decoder shapes, normalisation and initialisation,
stochastic depth."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from helpers import official_segmenter_shapes, torch_resize_pos_embed
from segmenter_jax import models, pretrained
from vit_jax.classification import vit as vit_models
from vit_jax.framework.errors import UserError
from vit_jax.layers import position_embeddings


def _shapes(model, size=16):
  """Boxed parameter shapes (logical axis names included), traced without computing."""
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))['params']


def _init(model, image_shape, seed=0):
  init = jax.jit(functools.partial(model.init, train=False))  # Eager init is slower on CPU.
  return nn.meta.unbox(init(jax.random.PRNGKey(seed), jnp.zeros(image_shape)))['params']


# --------------------------------------------------------------------- parameter counts

# Released models (reference/segmenter.md §4.1): variant, crop, classes, decoder, decoder layers,
# the measured state-dict count in millions.
RELEASED = [
    ('Ti/16', 512, 150, 'mask_transformer', 2, 6.91),
    ('S/16', 512, 150, 'mask_transformer', 2, 26.42),
    ('B/16', 512, 150, 'mask_transformer', 2, 103.27),
    ('B/8', 512, 150, 'linear', 2, 89.24),
    ('L/16', 640, 150, 'mask_transformer', 2, 334.26),
    ('DeiT-B/16', 512, 150, 'linear', 2, 88.09),
    ('DeiT-B/16', 512, 150, 'mask_transformer', 2, 104.04),
    ('L/16', 480, 60, 'mask_transformer', 2, 333.45),  # Pascal Context.
    ('L/16', 768, 19, 'mask_transformer', 1, 322.25),  # Cityscapes, one decoder layer.
]


@pytest.mark.parametrize('variant, crop, classes, decoder, layers, millions', RELEASED)
def test_parameter_counts_plus_unused_head_equal_official(variant, crop, classes, decoder, layers,
                                                           millions):
  model = models.build_segmenter(dict(variant=variant, image_size=crop, num_classes=classes,
                                      decoder=decoder, decoder_layers=layers))
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, crop, crop, 3), jnp.float32))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(shapes['params'])))
  size = models.decode_variant(variant)
  d, patch, distilled = size['hidden_size'], size['patch_size'], size['distilled']
  official = official_segmenter_shapes(d, size['num_layers'], patch, (crop // patch,) * 2,
                                       classes, decoder, layers, distilled)
  heads = sum(int(np.prod(s)) for k, s in official.items() if k in pretrained.UNUSED_OFFICIAL)
  assert ours + heads == sum(int(np.prod(s)) for s in official.values())
  assert round((ours + heads) / 1e6, 2) == millions


# ------------------------------------------------------------------ encoder against timm

def _random_timm(model, seed):
  """Every tensor random (LayerNorm weights around 1), so that nothing compares zeros."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      p.copy_(1 + 0.1 * noise if 'norm' in name and name.endswith('weight') else 0.1 * noise)
  return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize('distilled', [False, True], ids=['vit', 'deit'])
def test_encoder_matches_timm_with_padding_and_position_embedding_resize(distilled):
  d, heads, patch, crop = 64, 2, 8, 32
  timm_class = (timm.models.deit.VisionTransformerDistilled if distilled
                else timm.models.vision_transformer.VisionTransformer)
  make_timm = functools.partial(timm_class, patch_size=patch, embed_dim=d, depth=2,
                                num_heads=heads, norm_layer=functools.partial(torch.nn.LayerNorm,
                                                                              eps=1e-5))
  reference = _random_timm(make_timm(img_size=crop), seed=1)
  model = models.build_segmenter(dict(
      hidden_size=d, num_layers=2, num_heads=heads, mlp_dim=4 * d, patch_size=patch,
      image_size=crop, distilled=distilled, num_classes=3, decoder='linear'))
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  params = pretrained.init_encoder_from_timm(_init(model, (1, crop, crop, 3)), state, heads)
  prefix = 2 if distilled else 1

  # 36 x 52 pads to 40 x 56: a 5 x 7 grid, position embeddings resized from 4 x 4.
  images = np.random.default_rng(0).uniform(-1, 1, (2, 36, 52, 3)).astype(np.float32)
  encode = jax.jit(functools.partial(model.apply, method=models.Segmenter.encode))
  ours = np.asarray(encode({'params': params}, images))
  assert ours.shape == (2, 5, 7, d)
  resized = make_timm(img_size=(40, 56)).eval()
  state = reference.state_dict()
  state['pos_embed'] = torch_resize_pos_embed(state['pos_embed'], (4, 4), (5, 7), prefix)
  resized.load_state_dict(state)
  padded = F.pad(torch.from_numpy(images.transpose(0, 3, 1, 2)), (0, 4, 0, 4))
  with torch.no_grad():
    expected = resized.forward_features(padded)[:, prefix:].numpy().reshape(2, 5, 7, d)
  # Tokens after the final LayerNorm are O(1) (up to 4 here); fp32 summation order only:
  # observed max difference 2e-6.
  np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)

  # At the crop size nothing is resized: timm's own model, unpadded.
  crop_images = images[:, :crop, :crop]
  ours = np.asarray(encode({'params': params}, crop_images))
  with torch.no_grad():
    expected = reference.forward_features(torch.from_numpy(crop_images.transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(ours.reshape(2, 16, d), expected[:, prefix:].numpy(), atol=1e-5)


def test_position_embedding_resize_is_torch_bilinear_both_ways():
  pos = np.random.default_rng(0).standard_normal((1, 2 + 6 * 4, 5)).astype(np.float32)
  for new in ((9, 7), (3, 2)):  # Upsampling and downsampling (no antialiasing in torch).
    ours = position_embeddings.resize_position_embeddings(jnp.asarray(pos), (6, 4), new, 2)
    expected = torch_resize_pos_embed(torch.from_numpy(pos), (6, 4), new, 2).numpy()
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-6)


# ------------------------------------------------------------------------------- decoders

def _tiny(decoder, **changes):
  return models.build_segmenter(dict(dict(
      hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64, patch_size=4, image_size=16,
      num_classes=5, decoder=decoder), **changes))


@pytest.mark.slow
@pytest.mark.parametrize('decoder', models.DECODERS)
def test_logits_at_input_resolution_for_any_size(decoder):
  model = _tiny(decoder)
  params = _init(model, (1, 16, 16, 3))
  apply = jax.jit(functools.partial(model.apply, train=False))
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 13, 22, 3))  # Padded to 16 x 24.
  logits = apply({'params': params}, images)
  assert logits.shape == (2, 13, 22, 5) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits)) and np.std(logits) > 0.01
  # The first rows and columns do not depend on the padding's size: a larger image with the
  # same top-left corner and the same patch grid (13 -> 14, 22 -> 24) gives the same logits.
  larger = jnp.pad(images, ((0, 0), (0, 1), (0, 2), (0, 0)))
  np.testing.assert_allclose(apply({'params': params}, larger)[:, :13, :22], logits, atol=1e-5)


@pytest.mark.slow
def test_mask_transformer_normalisation():
  # One pixel per patch: upsampling is the identity, so the logits are mask_norm's output.
  model = _tiny('mask_transformer', num_classes=7, patch_size=1, image_size=4)
  params = _init(model, (1, 4, 4, 3))
  images = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 4, 3))
  apply = jax.jit(functools.partial(model.apply, train=False, mutable=['intermediates']))
  logits, state = apply({'params': params}, images)
  sown = {k: np.asarray(state['intermediates']['decoder'][k][0])
          for k in ('patch_features', 'class_features', 'scores')}
  patches, classes, scores = sown['patch_features'], sown['class_features'], sown['scores']
  assert patches.shape == (2, 16, 32) and classes.shape == (2, 7, 32)
  np.testing.assert_allclose(np.linalg.norm(patches, axis=-1), 1, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(classes, axis=-1), 1, atol=1e-5)
  np.testing.assert_allclose(scores, patches @ classes.transpose(0, 2, 1), atol=1e-6)
  assert np.all(np.abs(scores) <= 1 + 1e-6) and scores.std() > 0.05
  # mask_norm: LayerNorm (eps 1e-5; scale 1, bias 0 at init) over each patch's 7 scores.
  mean, var = scores.mean(-1, keepdims=True), scores.var(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(logits).reshape(2, 16, 7),
                             (scores - mean) / np.sqrt(var + 1e-5), atol=1e-5)


@pytest.mark.slow
def test_official_initialisation_statistics():
  # S's width, one encoder block (the statistics are per tensor; init time is per block).
  model = models.build_segmenter(dict(variant='S/16', num_layers=1, image_size=32,
                                      num_classes=150, decoder='mask_transformer'))
  params = _init(model, (1, 32, 32, 3))
  decoder, encoder = params['decoder'], params['encoder']
  d = 384
  # proj_patch / proj_classes: d^-0.5 * randn (not trunc_normal 0.02).
  for name in ('proj_patch', 'proj_classes'):
    assert np.std(decoder[name]) == pytest.approx(d**-0.5, rel=0.01)
    assert np.abs(decoder[name]).max() > 3.5 * d**-0.5  # Untruncated normal tails.
  # Linear kernels: timm's trunc_normal_(std=0.02) with absolute bounds +-2 (no truncation).
  kernels = [decoder['proj_dec']['kernel'], decoder['blocks_0']['MlpBlock_0']['Dense_0']['kernel'],
             encoder['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_0'][
                 'query']['kernel']]
  for kernel in kernels:
    assert np.std(kernel) == pytest.approx(0.02, rel=0.02)
    assert np.abs(kernel).max() > 0.08  # Beyond 2 std: not jax's truncated_normal.
  assert np.std(decoder['cls_emb']) == pytest.approx(0.02, rel=0.05)
  assert np.std(encoder['cls']) == pytest.approx(0.02, rel=0.3)  # 384 draws.
  biases = [decoder['proj_dec']['bias'], decoder['blocks_1']['MlpBlock_0']['Dense_1']['bias'],
            encoder['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0']['bias']]
  assert not any(np.any(b) for b in biases)
  for norm in ('decoder_norm', 'mask_norm'):
    assert np.all(decoder[norm]['scale'] == 1) and not np.any(decoder[norm]['bias'])
  # Patch embedding: PyTorch's Conv2d default, U(+-1/sqrt(fan_in)) for weight and bias.
  bound = 1 / np.sqrt(3 * 16 * 16)
  for leaf in ('kernel', 'bias'):
    values = encoder['embedding'][leaf]
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.95 * bound
  assert decoder['cls_emb'].shape == (1, 150, d) and decoder['mask_norm']['scale'].shape == (150,)


def test_params_carry_logical_axis_names():
  specs = nn.get_partition_spec(_shapes(_tiny('mask_transformer')))
  assert specs['decoder']['cls_emb'] == jax.sharding.PartitionSpec(None, 'classes', 'embed')
  assert specs['decoder']['mask_norm']['scale'] == jax.sharding.PartitionSpec('classes')
  assert specs['decoder']['proj_dec']['kernel'] == jax.sharding.PartitionSpec('encoder_embed',
                                                                            'embed')
  for projection in ('proj_patch', 'proj_classes'):
    assert specs['decoder'][projection] == jax.sharding.PartitionSpec('embed', 'mask_embed')
  query = specs['encoder']['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_0']
  assert query['query']['kernel'] == jax.sharding.PartitionSpec('embed', 'heads', 'kv')
  linear = nn.get_partition_spec(_shapes(_tiny('linear')))
  assert linear['decoder']['head']['kernel'] == jax.sharding.PartitionSpec('embed', 'classes')


# -------------------------------------------------------------------------- drop path

def test_drop_path_rates_rise_linearly_over_the_blocks():
  rates = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, vit_models.Encoder1DBlock) and context.method_name == '__call__':
      rates[context.module.name] = context.module.drop_path_rate
    return next_fun(*args, **kwargs)
  model = _tiny('mask_transformer', num_layers=5, drop_path_rate=0.2, decoder_layers=3,
                decoder_drop_path_rate=0.1)
  with nn.intercept_methods(record):
    _shapes(model)
  # torch.linspace(0, rate, depth), encoder and decoder alike.
  assert [rates[f'encoderblock_{i}'] for i in range(5)] == pytest.approx([0, .05, .1, .15, .2])
  assert [rates[f'blocks_{i}'] for i in range(3)] == pytest.approx([0, .05, .1])


def test_drop_path_drops_whole_examples_and_rescales_the_kept():
  rate, width = 0.5, 8
  block = vit_models.Encoder1DBlock(mlp_dim=16, num_heads=2, drop_path_rate=rate,
                                    layer_norm_epsilon=1e-5, gelu_approximate=False)
  x = jax.random.normal(jax.random.PRNGKey(0), (4000, 3, width))
  params = nn.meta.unbox(block.init(jax.random.PRNGKey(1), x, False))['params']
  # A zero MLP output leaves the attention branch alone: out = x + keep * attn / (1 - rate).
  params['MlpBlock_0']['Dense_1'] = jax.tree.map(jnp.zeros_like, params['MlpBlock_0']['Dense_1'])
  attention = jax.jit(lambda p: block.apply({'params': p}, x, False))(params) - x
  out = jax.jit(lambda p: block.apply({'params': p}, x, True, rngs={
      'dropout': jax.random.PRNGKey(2)}))(params) - x
  dropped = np.all(np.asarray(out) == 0, axis=(1, 2))
  kept = np.all(np.isclose(out, attention / (1 - rate), atol=1e-6), axis=(1, 2))
  assert np.all(dropped ^ kept)
  assert abs(dropped.mean() - rate) < 0.03  # 4000 Bernoulli draws: std 0.008.


# ------------------------------------------------------------------------------- config

def test_config_mistakes_are_one_line_errors():
  good = dict(variant='S/16', image_size=512, num_classes=150, decoder='mask_transformer')
  for change, message in [(dict(variant='X/16'), 'unknown Segmenter variant'),
                          (dict(variant='R50+B/16'), 'unknown Segmenter variant'),
                          (dict(decoder='fcn'), 'unknown decoder'),
                          (dict(image_size=500), 'multiple of the patch size'),
                          (dict(image_size=None), 'needs image_size'),
                          (dict(decoder_depth=2), 'unknown Segmenter model fields')]:
    with pytest.raises(UserError, match=message) as error:
      models.build_segmenter(dict(good, **change))
    assert '\n' not in str(error.value)
  with pytest.raises(UserError, match='needs a variant'):
    models.build_segmenter(dict(good, variant=None))
  with pytest.raises(UserError, match='distillation token needs classifier token or '
                                      "token_unpooled \\(not 'gap'\\)"):
    vit_models.VisionTransformer(num_classes=3, patch_size=4, hidden_size=8, num_layers=1,
                                 num_heads=2, mlp_dim=8, distilled=True, classifier='gap').init(
                                     jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))


def test_variants_and_overrides():
  deit = models.build_segmenter(dict(variant='DeiT-B/16', image_size=(512, 256), num_classes=3,
                                     decoder='linear'))
  assert deit.encoder.distilled and deit.encoder.posemb_grid == (32, 16)
  assert deit.encoder.layer_norm_epsilon == 1e-5 and not deit.encoder.gelu_approximate
  small = models.build_segmenter(dict(variant='B/16', hidden_size=48, num_heads=3,
                                      image_size=32, num_classes=3, decoder='mask_transformer',
                                      decoder_layers=1))
  assert (small.encoder.hidden_size, small.encoder.num_layers, small.encoder.patch_size) == (
      48, 12, 16)
  assert (small.decoder.num_layers, small.decoder.num_heads, small.decoder.mlp_dim) == (1, 3, 192)
  assert small.encoder.drop_path_rate == 0.1 and small.decoder.dropout_rate == 0.1
