"""DETR's transformer under nn.scan (model.scan): the same outputs and gradients as the per-layer
model on the same weights (stacked by vit_jax.framework.weights), and released per-layer checkpoints load
into either."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from detr_jax import models, panoptic_model, pretrained
from helpers import official_detr_state_dict, random_variables
from vit_jax.framework import weights
from vit_jax.framework.errors import UserError

# Encoder and decoder depths differ, so that a mix-up of the two stacks shows.
_SMALL = dict(num_classes=3, backbone_blocks=(1, 1, 1, 1), backbone_width=8, hidden_dim=32,
              num_queries=5, num_encoder_layers=2, num_decoder_layers=3, num_heads=2, mlp_dim=32)


def _inputs():
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 96, 3))
  pixel_mask = jnp.ones((2, 64, 96)).at[1, 40:].set(0).at[1, :, 50:].set(0)
  return images * pixel_mask[..., None], pixel_mask


def _stacked(variables):
  return weights.unflatten(weights.stack_layers(weights.flatten(variables),
                                                pretrained.DETR_LAYERS))


def test_scanned_params_are_stacked_under_the_layers_axis():
  model = models.DETR(scan=True, **_SMALL)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *_inputs())
  encoder = shapes['params']['transformer']['encoder']['layers']
  kernel = encoder['self_attn']['query']['kernel']
  assert kernel.value.shape == (2, 32, 2, 16)
  assert kernel.names == ('layers', 'embed', 'heads', 'kv')  # FSDP / TP rules still apply.
  assert shapes['params']['transformer']['decoder']['layers']['linear1']['kernel'].names == (
      'layers', 'embed', 'mlp')
  # The box head's layers differ in shape: not a stack.
  assert set(shapes['params']['bbox_embed']) == {'layers_0', 'layers_1', 'layers_2'}
  per_layer = random_variables(models.DETR(**_SMALL), *_inputs())
  assert jax.tree.map(np.shape, _stacked(per_layer)) == jax.tree.map(
      np.shape, flax.linen.meta.unbox(shapes))


@pytest.mark.slow
def test_scanned_model_gives_the_per_layer_models_outputs():
  images, pixel_mask = _inputs()
  variables = random_variables(models.DETR(**_SMALL), images, pixel_mask)
  outputs = {}
  for scan, tree in ((False, variables), (True, _stacked(variables))):
    apply = jax.jit(lambda v, x, m, model=models.DETR(scan=scan, **_SMALL): model.apply(
        v, x, m, mask_features=True))
    outputs[scan] = apply(tree, images, pixel_mask)
  # logits and boxes: every decoder layer's (the auxiliary outputs too); memory and hidden:
  # what the panoptic mask head reads.
  pairs = {k: (outputs[False][k], outputs[True][k]) for k in ('logits', 'boxes')}
  pairs.update({k: (outputs[False]['mask_features'][k], outputs[True]['mask_features'][k])
                for k in ('memory', 'hidden')})
  for name, (expected, got) in pairs.items():
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=name)
  assert outputs[True]['logits'].shape == (3, 2, 5, 4)
  assert np.abs(outputs[True]['logits']).max() > 0.5  # The comparison is not of near-zeros.
  # The layers differ from each other: the stack is not one layer repeated.
  assert np.abs(outputs[True]['logits'][0] - outputs[True]['logits'][-1]).max() > 0.1


# The transformer alone (the backbone is not what scan changes): its layers' names.
_TRANSFORMER_LAYERS = r'(?:encoder|decoder)/layers'
_TRANSFORMER = dict(num_encoder_layers=2, num_decoder_layers=3, num_heads=2, mlp_dim=32)


def _transformer_inputs():
  """src, mask (the second image's last two tokens padding), query_pos, pos."""
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  return (jax.random.normal(keys[0], (2, 6, 32)), jnp.arange(6) < jnp.array([[6], [4]]),
          jax.random.normal(keys[1], (5, 32)), jax.random.normal(keys[2], (2, 6, 32)))


def _transformer_stacked(variables):
  return weights.unflatten(weights.stack_layers(weights.flatten(variables), _TRANSFORMER_LAYERS))


@pytest.mark.slow
def test_scanned_transformer_without_encoder_and_decoder_positions():
  """The paper's ablations: no encoder layers (no params to stack), and no spatial or query
  positions broadcast to the decoder's layers (None)."""
  config = dict(_TRANSFORMER, num_encoder_layers=0, decoder_spatial_pos='none',
                output_pos='input')
  inputs = _transformer_inputs()
  variables = random_variables(models.Transformer(**config), *inputs, train=False)
  apply = lambda model, tree: jax.jit(functools.partial(model.apply, train=False))(tree, *inputs)
  hs, memory = apply(models.Transformer(**config), variables)
  hs_scan, memory_scan = apply(models.Transformer(scan=True, **config),
                               _transformer_stacked(variables))
  np.testing.assert_allclose(hs_scan, hs, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(memory_scan, memory, rtol=1e-5, atol=1e-5)
  assert hs.shape == (3, 2, 5, 32) and np.abs(hs[0] - hs[-1]).max() > 0.1
  assert 'encoder' not in variables['params']


@pytest.mark.slow
def test_scanned_rematerialised_gradients_match_the_per_layer_models():
  inputs = _transformer_inputs()
  # Dropout off: scan draws each layer's dropout from its own key, the loop from its names'.
  config = dict(_TRANSFORMER, num_encoder_layers=1, num_decoder_layers=2, dropout_rate=0.0)
  variables = random_variables(models.Transformer(**config), *inputs, train=False)
  keys = jax.random.split(jax.random.PRNGKey(4), 2)
  hs_weights, memory_weights = jax.random.normal(keys[0], (2, 2, 5, 32)), jax.random.normal(
      keys[1], (2, 6, 32))

  def loss_grad(model, params):
    def loss(params):
      hs, memory = model.apply({'params': params}, *inputs, train=True)
      return jnp.sum(jnp.sin(hs) * hs_weights) + jnp.sum(jnp.sin(memory) * memory_weights)
    return weights.flatten(jax.jit(jax.grad(loss))(params))

  expected = loss_grad(models.Transformer(**config), variables['params'])
  got = loss_grad(models.Transformer(scan=True, remat='dots_saveable', **config),
                  _transformer_stacked(variables)['params'])
  got = weights.unstack_layers(got, _TRANSFORMER_LAYERS)
  assert got.keys() == expected.keys()
  largest = max(np.abs(value).max() for value in expected.values())
  for key, value in expected.items():  # Round-off: some biases' true gradient is 0 (keys').
    np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-6 * largest, err_msg=key)
  assert np.abs(expected['encoder/layers_0/linear1/kernel']).max() > 1e-2


def test_scanned_dropout_follows_the_rng_in_every_layer():
  inputs = _transformer_inputs()
  model = models.Transformer(scan=True, dropout_rate=0.5, **_TRANSFORMER)
  variables = random_variables(model, *inputs, train=False)
  run = jax.jit(lambda key: model.apply(variables, *inputs, train=True,
                                       rngs={'dropout': key})[0])
  key = functools.partial(jax.random.key, impl='rbg')  # Compiles in half threefry's time.
  first = run(key(0))
  np.testing.assert_array_equal(run(key(0)), first)
  other = run(key(1))
  assert all(np.abs(other[i] - first[i]).max() > 0.1 for i in range(3))


def test_released_checkpoint_fills_scanned_and_per_layer_models_alike(tmp_path):
  state = official_detr_state_dict()  # detr-r50-e632da11.pth's layout, random weights.
  path = str(tmp_path / 'detr-r50.pth')
  torch.save({'model': state}, path)
  loaded = pretrained.load_variables(path)
  fitted = {}
  for scan in (False, True):
    model = models.DETR(num_classes=91, scan=scan)
    shapes = flax.linen.meta.unbox(jax.eval_shape(
        model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), jnp.ones((1, 64, 64))))
    fresh = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
    fitted[scan] = pretrained.fit_variables(fresh, loaded, source=path)
  kernel = fitted[True]['params']['transformer']['decoder']['layers']['multihead_attn']['value'][
      'kernel']
  assert kernel.shape == (6, 256, 8, 32)
  np.testing.assert_array_equal(
      kernel[4].reshape(256, 256),
      state['transformer.decoder.layers.4.multihead_attn.in_proj_weight'][512:].numpy().T)
  assert jax.tree.map(np.shape, fitted[True]) == jax.tree.map(np.shape, _stacked(fitted[False]))
  jax.tree.map(np.testing.assert_array_equal, fitted[True], _stacked(fitted[False]))


def test_stacked_npz_of_a_scanned_panoptic_run_fills_a_per_layer_model(tmp_path):
  """And the other way: a scanned model's weights written as they are (stacked) load into a
  per-layer panoptic model, its box model under 'detr'."""
  images, pixel_mask = _inputs()
  tiny = dict(_SMALL, hidden_dim=64, num_heads=8)  # The mask head's widths need 64 / 8.
  scanned = panoptic_model.DETRPanoptic(models.DETR(scan=True, **tiny))
  variables = random_variables(scanned, images, pixel_mask)
  assert variables['params']['detr']['transformer']['encoder']['layers']['norm1'][
      'scale'].shape == (2, 64)
  path = str(tmp_path / 'scanned.npz')
  weights.write_npz(path, variables)
  per_layer = panoptic_model.DETRPanoptic(models.DETR(**tiny))
  shapes = flax.linen.meta.unbox(jax.eval_shape(per_layer.init, jax.random.PRNGKey(0), images,
                                                pixel_mask))
  fresh = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
  fitted = pretrained.fit_variables(fresh, pretrained.load_variables(path))
  np.testing.assert_array_equal(
      fitted['params']['detr']['transformer']['encoder']['layers_1']['norm1']['scale'],
      variables['params']['detr']['transformer']['encoder']['layers']['norm1']['scale'][1])
  np.testing.assert_array_equal(fitted['params']['mask_head']['lay1']['kernel'],
                                variables['params']['mask_head']['lay1']['kernel'])


def test_unknown_remat_policy_is_a_clear_error():
  with pytest.raises(UserError, match="unknown model.remat 'some'"):
    jax.eval_shape(models.DETR(remat='some', **_SMALL).init, jax.random.PRNGKey(0), *_inputs())
