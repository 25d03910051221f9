"""vit_jax.layers.attention against torch.nn.MultiheadAttention on the same weights."""

import torch  # Before TensorFlow-linked imports: see tests/conftest.py.

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.framework.errors import UserError
from vit_jax.layers.attention import attend, MultiHeadAttention

WIDTH, HEADS, QUERIES, KEYS, BATCH = 16, 4, 5, 7, 2


def _inputs():
  rng = np.random.default_rng(0)
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  key_mask = np.ones((BATCH, KEYS), bool)
  key_mask[0, 4:] = False  # The first example's last three keys are padding.
  return dict(queries=normal(BATCH, QUERIES, WIDTH), memory=normal(BATCH, KEYS, WIDTH),
              query_pos=normal(BATCH, QUERIES, WIDTH), key_pos=normal(BATCH, KEYS, WIDTH),
              key_mask=key_mask)


def _init(module, x):
  variables = module.init(jax.random.PRNGKey(0), x, train=False)
  # Random biases too, so that a bias in the wrong place shows.
  leaves, tree = jax.tree.flatten(nn.meta.unbox(variables))
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape) + x
                                   for k, x in zip(keys, leaves)])


def _torch_attention(params):
  """torch.nn.MultiheadAttention holding `params` (its fused in_proj is [q; k; v])."""
  attention = torch.nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
  p = jax.tree.map(np.array, params['params'])
  with torch.no_grad():
    attention.in_proj_weight.copy_(torch.from_numpy(np.concatenate(
        [p[n]['kernel'].reshape(WIDTH, WIDTH).T for n in ('query', 'key', 'value')])))
    attention.in_proj_bias.copy_(torch.from_numpy(np.concatenate(
        [p[n]['bias'].reshape(WIDTH) for n in ('query', 'key', 'value')])))
    attention.out_proj.weight.copy_(torch.from_numpy(p['out']['kernel'].reshape(WIDTH, WIDTH).T))
    attention.out_proj.bias.copy_(torch.from_numpy(p['out']['bias']))
  return attention.eval()


def test_parameters_are_named_like_the_checkpoints_with_logical_axes():
  variables = MultiHeadAttention(HEADS).init(jax.random.PRNGKey(0), jnp.zeros((1, 3, WIDTH)),
                                             train=False)
  shapes = jax.tree.map(jnp.shape, nn.meta.unbox(variables))['params']
  assert shapes['query'] == {'kernel': (WIDTH, HEADS, 4), 'bias': (HEADS, 4)}
  assert shapes['out'] == {'kernel': (HEADS, 4, WIDTH), 'bias': (WIDTH,)}
  specs = nn.get_partition_spec(variables)['params']
  assert specs['key']['kernel'] == jax.sharding.PartitionSpec('embed', 'heads', 'kv')
  assert specs['out']['kernel'] == jax.sharding.PartitionSpec('heads', 'kv', 'embed')


@pytest.mark.parametrize('want_weights', [False, True])
def test_cross_attention_with_positions_and_key_mask_matches_torch(want_weights):
  # DETR's decoder: q = tgt + query_pos, k = memory + pos, v = memory, padded keys ignored.
  x = _inputs()
  module = MultiHeadAttention(HEADS)
  params = _init(module, x['queries'])
  out = module.apply(params, x['queries'], x['memory'], query_pos=x['query_pos'],
                     key_pos=x['key_pos'], key_mask=x['key_mask'], train=False,
                     mutable=['intermediates'] if want_weights else False)
  expected, expected_weights = _torch_attention(params)(
      torch.from_numpy(x['queries'] + x['query_pos']), torch.from_numpy(x['memory'] + x['key_pos']),
      torch.from_numpy(x['memory']), key_padding_mask=torch.from_numpy(~x['key_mask']),
      average_attn_weights=False)
  if want_weights:  # The explicit path, which also returns the softmax.
    out, state = out
    weights = np.asarray(state['intermediates']['attention_weights'][0])
    np.testing.assert_allclose(weights, expected_weights.detach().numpy(), atol=1e-6)
    assert np.all(weights[0, :, :, 4:] == 0)
    np.testing.assert_allclose(weights.sum(-1), 1, rtol=1e-6)
  # float32 round-off of outputs up to ~5.5 (an AVX-512 CPU differs from torch by 3.1e-6 at 2.5).
  np.testing.assert_allclose(out, expected.detach().numpy(), rtol=2e-6, atol=2e-6)


def test_self_attention_adds_the_positions_to_queries_and_keys_only():
  # DETR's encoder: q = k = x + pos, v = x.
  x = _inputs()
  module = MultiHeadAttention(HEADS)
  params = _init(module, x['queries'])
  tokens, pos = x['queries'], x['query_pos']
  out = module.apply(params, tokens, query_pos=pos, train=False)
  expected, _ = _torch_attention(params)(torch.from_numpy(tokens + pos),
                                         torch.from_numpy(tokens + pos), torch.from_numpy(tokens))
  np.testing.assert_allclose(out, expected.detach().numpy(), atol=2e-6)


def test_attention_dropout_drops_weights_and_rescales_the_kept():
  # E[dropout(w)] = w, so the mean over many masks approaches the output without dropout.
  x = _inputs()
  module = MultiHeadAttention(HEADS, dropout_rate=0.5)
  params = _init(module, x['queries'])
  clean = module.apply(params, x['queries'], train=False)
  draws = 4000
  dropped = np.asarray(jax.vmap(lambda rng: module.apply(params, x['queries'], train=True,
                                                         rngs={'dropout': rng}))(
      jax.random.split(jax.random.PRNGKey(2), draws)))
  assert np.abs(dropped[0] - clean).max() > 0.1  # Really dropped...
  # ... without bias: within 5 standard errors of the mean, every element.
  standard_error = dropped.std(0) / np.sqrt(draws)
  assert np.all(np.abs(dropped.mean(0) - clean) < 5 * standard_error)


def _autodiff_attend(query, key, value, key_mask, kept, keep_rate):
  """The plain formula, differentiated by JAX: the reference for `attend`'s written gradient."""
  logits = jnp.where(key_mask, jnp.einsum('bnth,bnsh->bnts', query, key),
                     jnp.finfo(jnp.float32).min)
  weights = jnp.where(kept, jax.nn.softmax(logits, axis=-1) / keep_rate, 0)
  return jnp.einsum('bnts,bnsh->bnth', weights, value)


def test_attend_gradient_matches_autodiff_with_key_mask_and_dropout():
  rng = np.random.default_rng(3)
  query, key, value = (rng.normal(size=(BATCH, HEADS, n, 8)).astype(np.float32)
                       for n in (QUERIES, KEYS, KEYS))
  key_mask = _inputs()['key_mask'][:, None, None, :].copy()
  key_mask[1] = False  # No key at all: uniform weights, and still no gradient through the mask.
  kept = rng.uniform(size=(BATCH, HEADS, QUERIES, KEYS)) > 0.3
  cotangent = rng.normal(size=(BATCH, HEADS, QUERIES, 8)).astype(np.float32)
  pullback = lambda f: jax.vjp(lambda q, k, v: f(q, k, v, key_mask, kept, 0.7),
                               query, key, value)
  out, grads = (lambda y, pull: (y, pull(cotangent)))(*pullback(attend))
  expected_out, expected_grads = (lambda y, pull: (y, pull(cotangent)))(
      *pullback(_autodiff_attend))
  np.testing.assert_allclose(out, expected_out, atol=1e-6)
  # Not differentiated, attend runs its primal form (the softmax divided after the matmul).
  np.testing.assert_allclose(attend(query, key, value, key_mask, kept, 0.7), expected_out,
                             atol=1e-6)
  for grad, expected in zip(grads, expected_grads):
    np.testing.assert_allclose(grad, expected, atol=2e-6)
  assert np.all(np.asarray(grads[1])[0, :, 4:] == 0)  # Masked keys learn nothing.
  # Batch 1 (its row sums taken without the batch axis) gives the first example's gradients.
  _, pull_first = jax.vjp(lambda q, k, v: attend(q, k, v, key_mask[:1], kept[:1], 0.7),
                          query[:1], key[:1], value[:1])
  for grad, expected in zip(pull_first(cotangent[:1]), expected_grads):
    np.testing.assert_allclose(grad, expected[:1], atol=2e-6)


def test_attend_head_by_head_on_cpu_matches_the_formula():
  # Long enough (384 x 400 weights a head) that on CPU the heads go one at a time; each head its
  # own slice of the dropout mask, the key mask broadcast over heads.
  rng = np.random.default_rng(5)
  query, key, value = (rng.normal(size=(2, 3, n, 8)).astype(np.float32) for n in (384, 400, 400))
  key_mask = rng.uniform(size=(2, 1, 1, 400)) > 0.2
  kept = rng.uniform(size=(2, 3, 384, 400)) > 0.3
  np.testing.assert_allclose(attend(query, key, value, key_mask, kept, 0.7),
                             _autodiff_attend(query, key, value, key_mask, kept, 0.7),
                             rtol=1e-6, atol=1e-6)
  # Head by head on CPU only, and without a gradient: lowered for an accelerator, one batched
  # matmul each side of the softmax; on CPU as many per head.
  infer = jax.jit(lambda q, k, v: attend(q, k, v, key_mask, kept, 0.7))
  dots = {platform: infer.trace(query, key, value).lower(lowering_platforms=(platform,))
          .as_text().count('stablehlo.dot_general') for platform in ('cpu', 'tpu', 'cuda')}
  assert dots == {'cpu': 6, 'tpu': 2, 'cuda': 2}
  # At batch 1 each head runs on [T, ...] arrays, without the leading size-1 axes that slow
  # XLA's fusions on CPU: the same numbers, and every per-head matmul 2-D.
  first = jax.jit(lambda q, k, v: attend(q, k, v, key_mask[:1], kept[:1], 0.7))
  np.testing.assert_allclose(first(query[:1], key[:1], value[:1]),
                             _autodiff_attend(query, key, value, key_mask, kept, 0.7)[:1],
                             rtol=1e-6, atol=1e-6)
  cpu = first.trace(query[:1], key[:1], value[:1]).lower(lowering_platforms=('cpu',)).as_text()
  products = re.findall(r'stablehlo\.dot_general .*-> tensor<([0-9x]+)xf32>', cpu)
  assert sorted(products) == ['384x400'] * 3 + ['384x8'] * 3


def test_attention_gradients_match_torch():
  # The whole module's input and weight gradients against torch autograd on the same weights.
  x = _inputs()
  module = MultiHeadAttention(HEADS)
  params = _init(module, x['queries'])
  cotangent = np.random.default_rng(4).normal(size=x['queries'].shape).astype(np.float32)
  loss = lambda p, q, m: jnp.vdot(module.apply(p, q, m, key_mask=x['key_mask'], train=False),
                                  cotangent)
  grad_params, grad_queries, grad_memory = jax.grad(loss, argnums=(0, 1, 2))(
      params, x['queries'], x['memory'])
  attention = _torch_attention(params)
  queries, memory = (torch.from_numpy(a).requires_grad_() for a in (x['queries'], x['memory']))
  out, _ = attention(queries, memory, memory, key_padding_mask=torch.from_numpy(~x['key_mask']))
  out.backward(torch.from_numpy(cotangent))
  np.testing.assert_allclose(grad_queries, queries.grad.numpy(), atol=1e-5)
  np.testing.assert_allclose(grad_memory, memory.grad.numpy(), atol=1e-5)
  query_kernel = np.asarray(grad_params['params']['query']['kernel']).reshape(WIDTH, WIDTH).T
  np.testing.assert_allclose(query_kernel, attention.in_proj_weight.grad[:WIDTH].numpy(),
                             atol=1e-5)


def test_width_not_divisible_by_heads_is_a_user_error():
  with pytest.raises(UserError, match='width 16 is not divisible by num_heads 3'):
    MultiHeadAttention(3).init(jax.random.PRNGKey(0), jnp.zeros((1, 2, WIDTH)), train=False)
