"""ViT: exact parameter counts of the original code, official parameter names, original init."""

import functools
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.classification import vit, vit_weights
from vit_jax.framework import weights
from vit_jax.framework.errors import UserError
from vit_jax.layers import activations, convolution, normalization


def _count(model, size=224):
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
  return sum(np.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(variables)))


# vision_transformer's models_test.py (1000 classes at 224 px; reference/vit.md §10).
@pytest.mark.parametrize('variant, expected', [
    ('Ti/16', 5_717_416), ('S/16', 22_050_664), ('S/32', 22_878_952), ('B/32', 88_224_232),
    ('B/16', 86_567_656), ('B/8', 86_576_872), ('L/32', 306_535_400), ('L/16', 304_326_632),
    ('H/14', 632_045_800), ('R+Ti/16', 6_337_704), ('R26+S/32', 36_431_912),
    ('R26+B/32', 101_383_976), ('R50+B/16', 98_659_112), ('R50+L/32', 328_994_856)])
def test_parameter_count_equals_original(variant, expected):
  model = vit.build_vit(dict(variant=variant, num_classes=1000))
  assert _count(model) == expected


def test_vit_g14_has_the_scaling_vit_papers_parameter_count():
  # Scaling Vision Transformers (Zhai et al.), Table 2: ViT-g/14 has 1011M parameters (no head).
  head = 1408 * 1000 + 1000
  count = _count(vit.build_vit(dict(variant='g/14', num_classes=1000))) - head
  assert round(count / 1e6) == 1011


def test_i21k_checkpoint_layout_count():
  # ViT-B/16 as released for ImageNet-21k: 21843 classes and a 768-wide pre_logits layer.
  model = vit.build_vit(dict(variant='B/16', num_classes=21843, representation_size=768))
  assert _count(model) == 103_186_515


def test_parameter_names_follow_official_checkpoint():
  model = vit.build_vit(dict(variant='Ti/16', num_classes=10))
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))['params']
  names = {jax.tree_util.keystr(p, simple=True, separator='/'): x.shape
           for p, x in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]}
  block = 'Transformer/encoderblock_0'
  expected = {
      'cls': (1, 1, 192),
      'embedding/kernel': (16, 16, 3, 192),
      'Transformer/posembed_input/pos_embedding': (1, 5, 192),
      f'{block}/LayerNorm_0/scale': (192,),
      f'{block}/MultiHeadDotProductAttention_0/query/kernel': (192, 3, 64),
      f'{block}/MultiHeadDotProductAttention_0/query/bias': (3, 64),
      f'{block}/MultiHeadDotProductAttention_0/out/kernel': (3, 64, 192),
      f'{block}/MultiHeadDotProductAttention_0/out/bias': (192,),
      f'{block}/LayerNorm_1/bias': (192,),
      f'{block}/MlpBlock_0/Dense_0/kernel': (192, 768),
      f'{block}/MlpBlock_0/Dense_1/bias': (192,),
      'Transformer/encoder_norm/scale': (192,),
      'head/kernel': (192, 10),
  }
  for name, shape in expected.items():
    assert names.get(name) == shape, name
  # cls, embedding (2), pos_embedding, 12 blocks of 16, encoder_norm (2), head (2); the
  # official i21k files have 202 with pre_logits.
  assert len(names) == 4 + 12 * 16 + 2 + 2


@pytest.mark.slow
def test_original_initialisation():
  model = vit.build_vit(dict(variant='S/16', num_classes=5, head_bias_init=-10.0))
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))['params']
  assert not np.any(params['head']['kernel']) and np.all(params['head']['bias'] == -10.0)
  assert not np.any(params['cls'])
  assert np.std(params['Transformer']['posembed_input']['pos_embedding']) == pytest.approx(
      0.02, rel=0.02)
  mlp = params['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0']
  assert 0 < np.std(mlp['bias']) < 1e-5
  # xavier_uniform on the flattened (384, 384) view: bound sqrt(6 / (384 + 384)).
  query = params['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_0']['query']
  assert np.abs(query['kernel']).max() <= np.sqrt(6 / 768)
  assert np.std(query['kernel']) == pytest.approx(np.sqrt(6 / 768) / np.sqrt(3), rel=0.02)


@pytest.mark.parametrize('classifier, shape', [('token', (2, 7)), ('gap', (2, 7)),
                                               ('unpooled', (2, 4, 7)),
                                               ('token_unpooled', (2, 5, 7))])
def test_pooling(classifier, shape):
  model = vit.VisionTransformer(num_classes=7, patch_size=4, hidden_size=8, num_layers=1,
                                   num_heads=2, mlp_dim=16, classifier=classifier)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 3)))
  assert model.apply(variables, jnp.ones((2, 8, 8, 3))).shape == shape


def test_unknown_variant_is_a_clear_error():
  with pytest.raises(UserError, match='unknown ViT variant'):
    vit.build_vit(dict(variant='X/16', num_classes=10))


_SMALL = dict(num_classes=10, patch_size=4, hidden_size=32, num_layers=3, num_heads=4, mlp_dim=64)


def _small_params():
  """Fixed weights of a small per-layer ViT, every tensor random (the head too)."""
  params = nn.meta.unbox(vit.VisionTransformer(**_SMALL).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))['params']
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape)
                                   for k, x in zip(keys, leaves)])


def _in_layout(params, scan: bool):
  flat = weights.flatten(params)
  return weights.unflatten(weights.stack_layers(flat, vit_weights.VIT_LAYERS) if scan else flat)


def _loss_and_grads(**model_options):
  """Loss and per-layer gradients of the small ViT on fixed weights, with `model_options`."""
  images = jax.random.uniform(jax.random.PRNGKey(1), (4, 16, 16, 3), minval=-1, maxval=1)
  model = vit.VisionTransformer(**_SMALL, **model_options)
  params = _in_layout(_small_params(), model_options.get('scan', False))

  def loss(p):
    logits = model.apply({'params': p}, images, train=True)
    return -jax.nn.log_softmax(logits)[:, 3].mean()
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  return value, weights.unflatten(weights.unstack_layers(weights.flatten(grads), vit_weights.VIT_LAYERS))


@pytest.mark.slow
@pytest.mark.parametrize('options', [
    dict(remat='full'), dict(remat='dots_saveable'), dict(remat='nothing_saveable'),
    dict(scan=True), dict(scan=True, remat='full'), dict(scan=True, remat='dots_saveable')],
    ids=str)
def test_remat_and_scan_leave_loss_and_gradients_unchanged(options):
  (loss, grads), (loss_other, grads_other) = _loss_and_grads(), _loss_and_grads(**options)
  assert float(loss) > 0.5  # Random weights: a loss far from zero, gradients of O(0.1).
  assert float(loss_other) == pytest.approx(float(loss), abs=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, grads_other)


def test_scanned_blocks_are_stacked_on_a_named_layers_axis():
  model = vit.VisionTransformer(**_SMALL, scan=True)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  block = variables['params']['Transformer']['encoderblock']
  assert nn.meta.unbox(block)['MlpBlock_0']['Dense_0']['kernel'].shape == (3, 32, 64)
  specs = nn.get_partition_spec(variables)['params']['Transformer']['encoderblock']
  assert specs['MlpBlock_0']['Dense_0']['kernel'] == jax.sharding.PartitionSpec(
      'layers', 'embed', 'mlp')


@pytest.mark.slow
def test_scan_and_loop_load_the_same_npz_and_give_the_same_logits(tmp_path):
  path = str(tmp_path / 'vit.npz')
  vit_weights.write_vit_npz(path, _small_params())
  images = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3), minval=-1, maxval=1)
  logits, written, attention = {}, {}, {}
  for scan in (False, True):
    model = vit.VisionTransformer(**_SMALL, scan=scan)
    fresh = nn.meta.unbox(model.init(jax.random.PRNGKey(5), images))['params']
    loaded = vit_weights.load_vit(fresh, path)
    logits[scan], state = model.apply({'params': loaded}, images, mutable='intermediates')
    blocks = state['intermediates']['Transformer']
    attention[scan] = (  # What classification.py draws: [layers, batch, heads, T, S].
        blocks['encoderblock']['MultiHeadDotProductAttention_0']['attention_weights'][0] if scan
        else np.stack([blocks[f'encoderblock_{i}']['MultiHeadDotProductAttention_0'][
            'attention_weights'][0] for i in range(_SMALL['num_layers'])]))
    written[scan] = str(tmp_path / f'written_{scan}.npz')
    vit_weights.write_vit_npz(written[scan], loaded)  # Always the official per-layer layout.
  assert np.abs(logits[False]).max() > 0.1
  np.testing.assert_allclose(logits[True], logits[False], atol=1e-6)
  np.testing.assert_allclose(attention[True], attention[False], atol=1e-6)
  loop_file, scan_file = np.load(written[False]), np.load(written[True])
  assert sorted(scan_file.files) == sorted(loop_file.files) == sorted(np.load(path).files)
  for name in loop_file.files:
    np.testing.assert_array_equal(scan_file[name], loop_file[name])


@pytest.mark.slow
def test_segmenter_encoder_scans_with_per_layer_drop_path():
  from segmenter_jax import models as segmenter_models  # Its encoder is this ViT.
  fields = dict(hidden_size=32, num_layers=3, num_heads=4, mlp_dim=64, patch_size=4,
                image_size=16, num_classes=3, decoder='linear', drop_path_rate=0.5)
  images = jax.random.uniform(jax.random.PRNGKey(1), (8, 16, 16, 3), minval=-1, maxval=1)
  loop, scan = (segmenter_models.build_segmenter(dict(fields, scan=s)) for s in (False, True))
  params = nn.meta.unbox(loop.init(jax.random.PRNGKey(0), images, train=False))['params']
  scan_params = weights.unflatten(weights.stack_layers(weights.flatten(params), vit_weights.VIT_LAYERS))
  np.testing.assert_allclose(scan.apply({'params': scan_params}, images, train=False),
                             loop.apply({'params': params}, images, train=False), atol=1e-6)
  # Training: the scanned layers' drop-path rates are 0, 0.25, 0.5, so whole examples differ
  # from the eval output, and some branches are dropped in every draw of 8 examples.
  train = jax.jit(lambda rng: scan.apply({'params': scan_params}, images, train=True,
                                         rngs={'dropout': rng}))
  evaluated = scan.apply({'params': scan_params}, images, train=False)
  changed = [np.abs(train(jax.random.PRNGKey(k)) - evaluated).max(axis=(1, 2, 3)) > 1e-5
             for k in range(4)]
  assert all(c.any() for c in changed)


def test_unknown_remat_policy_is_a_one_line_error_listing_the_choices():
  with pytest.raises(UserError, match=r"unknown model.remat 'dots'.*'dots_saveable'.*'full'"):
    vit.build_vit(dict(variant='Ti/16', num_classes=10, remat='dots'))


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_close_loss():
  (loss, _), (loss_bf16, grads_bf16) = _loss_and_grads(), _loss_and_grads(dtype=jnp.bfloat16)
  # bfloat16 has 8 bits of mantissa: 1% on the loss is the expected scale of its rounding.
  assert float(loss_bf16) == pytest.approx(float(loss), rel=1e-2)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads_bf16))


def _layer_norm_float64(x, scale, bias, epsilon):
  x = np.asarray(x, np.float64)
  centred = x - x.mean(-1, keepdims=True)
  return centred / np.sqrt((centred**2).mean(-1, keepdims=True) + epsilon) * scale + bias


@pytest.mark.slow
@pytest.mark.parametrize('shape', [(2, 7, 48), (1, 7, 48), (1, 1, 7, 48)])
def test_layer_norm_matches_float64_and_flax_gradients(shape):
  # Off-centre inputs (mean 3, std 5) and a non-trivial scale and bias; batch 1 runs without
  # its leading size-1 axes.
  x = jnp.asarray(np.random.default_rng(0).normal(3.0, 5.0, shape), jnp.float32)
  cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape), jnp.float32)
  params = {'scale': jnp.linspace(0.5, 2.0, 48), 'bias': jnp.linspace(-1.0, 1.0, 48)}
  ours, flax_norm = normalization.LayerNorm(epsilon=1e-5), nn.LayerNorm(epsilon=1e-5)
  expected = _layer_norm_float64(x, params['scale'], params['bias'], 1e-5)
  np.testing.assert_allclose(ours.apply({'params': params}, x), expected, atol=2e-6)

  def grads(module):
    return jax.grad(lambda p, x: jnp.sum(module.apply({'params': p}, x) * cotangent),
                    argnums=(0, 1))(params, x)
  # The hand-written backward pass against autodiff of flax's own LayerNorm.
  for got, want in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(flax_norm))):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_layer_norm_sums_without_the_leading_size_1_axes():
  """XLA on CPU runs a multiply-and-sum over an array with a size-1 axis ~10x slower (see
  `normalization.without_leading_ones`): at batch 1, no sum of the forward or backward pass
  keeps the batch axis."""
  module = normalization.LayerNorm()
  x = jnp.ones((1, 9, 16))
  params = module.init(jax.random.PRNGKey(0), x)
  forward_and_back = lambda p, x: jax.vjp(module.apply, p, x)[1](x)
  jaxpr = jax.make_jaxpr(forward_and_back)(params, x).jaxpr
  summed = [eqn.invars[0].aval.shape for eqn in jaxpr.eqns if eqn.primitive.name == 'reduce_sum']
  # Two row means forward, two backward, the scale's and the bias's gradients.
  assert sum(shape == (9, 16) for shape in summed) >= 6, summed
  assert not any(shape[:2] == (1, 9) for shape in summed), summed
  assert module.apply(params, x).shape == x.shape


def test_exact_gelu_is_the_erf_formula_and_its_derivative():
  x = np.linspace(-6.0, 6.0, 241)
  erf = np.vectorize(math.erf)
  cdf = 0.5 * (1 + erf(x / math.sqrt(2)))
  np.testing.assert_allclose(activations.gelu(jnp.asarray(x, jnp.float32), approximate=False),
                             x * cdf, atol=1e-6)
  derivative = jax.vmap(jax.grad(lambda v: activations.gelu(v, approximate=False)))(
      jnp.asarray(x, jnp.float32))
  pdf = np.exp(-x**2 / 2) / math.sqrt(2 * math.pi)
  np.testing.assert_allclose(derivative, cdf + x * pdf, atol=1e-6)


@pytest.mark.parametrize('kernel,stride,padding', [
    (1, 1, 0), (1, 2, 0), (3, 1, 1), (1, 1, 1)])
def test_conv_as_matmul_equals_xla_convolution_and_its_gradients(kernel, stride, padding):
  """1x1 kernels run as a channel matmul of the strided input (odd sizes too); others, and a
  padded 1x1, are lax's convolution. Values and both gradients to float32 round-off. The 1x1
  gradient compiles without a transposed copy (XLA on CPU made one of the output gradient for
  a 4-D matmul's weight gradient)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 13, 11, 24)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 24, 16)), jnp.float32)
  dims = jax.lax.conv_dimension_numbers(x.shape, w.shape, ('NHWC', 'HWIO', 'NHWC'))
  pad = ((padding, padding),) * 2

  def loss(conv, x, w):
    y = conv(x, w, (stride, stride), pad, dimension_numbers=dims)
    return jnp.sum(jnp.sin(y)), y
  (_, ours), grads = jax.value_and_grad(
      functools.partial(loss, convolution.conv_general_dilated), (0, 1), has_aux=True)(x, w)
  (_, xla), want = jax.value_and_grad(
      functools.partial(loss, jax.lax.conv_general_dilated), (0, 1), has_aux=True)(x, w)
  assert ours.shape == xla.shape
  jaxpr = str(jax.make_jaxpr(functools.partial(loss, convolution.conv_general_dilated))(x, w))
  assert ('conv_general_dilated' in jaxpr) == (kernel > 1 or padding > 0)
  np.testing.assert_allclose(ours, xla, rtol=1e-5, atol=1e-5)
  for g, h in zip(grads, want):
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-4)
  if kernel == 1 and padding == 0:
    gradient = jax.jit(jax.grad(functools.partial(loss, convolution.conv_general_dilated),
                                (0, 1), has_aux=True))
    assert not re.search(r'= \S+ (transpose|copy)\(', gradient.lower(x, w).compile().as_text())
