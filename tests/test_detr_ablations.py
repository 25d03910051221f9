"""The DETR paper's ablations as configs/detr_coco.py variants: each builds and runs, the learned
spatial embedding equals HF transformers', the encodings enter where each variant says, the
loss variants keep the matching, and aux_loss=False drops the auxiliary decoder-layer losses."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.detr.modeling_detr import DetrLearnedPositionEmbedding

from detr_jax import detection, models
from helpers import load_config
from vit_jax.framework.errors import UserError

# A tiny DETR in place of R50 (the variants' fields are what is tested).
TINY = dict(backbone_blocks=(1, 1, 1, 1), backbone_width=8, backbone_norm='group', hidden_dim=32,
            num_heads=4, mlp_dim=64, num_decoder_layers=2, num_queries=6, dropout_rate=0.0)


def _tiny_config(arg):
  config = load_config('detr_coco', arg)
  config.model.update(TINY)
  config.model.num_encoder_layers = min(config.model.num_encoder_layers, 2)
  config.model.num_classes = 3
  config.input.max_boxes = 3
  return config


def _images(batch=2, size=64):
  images = jax.random.normal(jax.random.PRNGKey(1), (batch, size, size, 3))
  mask = jnp.ones((batch, size, size)).at[1, :, 40:].set(0)  # Image 1 padded on the right.
  return images * mask[..., None], mask


@pytest.mark.slow
@pytest.mark.parametrize('arg, fields', [
    ('r50,enc_layers=0', dict(num_encoder_layers=0)),
    ('r50,spatial_pos=none', dict(encoder_spatial_pos='none', decoder_spatial_pos='none')),
    ('r50,spatial_pos=sine_input', dict(encoder_spatial_pos='input',
                                        decoder_spatial_pos='input')),
    ('r50,spatial_pos=learned_attention', dict(position_embedding='learned')),
    ('r50,spatial_pos=sine_attention_decoder', dict(encoder_spatial_pos='none')),
    ('r50,output_pos=learned_input', dict(output_pos='input')),
])
def test_each_variant_builds_and_runs(arg, fields):
  config = _tiny_config(arg)
  baseline = _tiny_config('r50').model
  assert {k: v for k, v in config.model.items() if v != baseline[k]} == fields
  model = models.build_detr(config.model)
  assert {k: getattr(model, k) for k in fields} == fields
  images, mask = _images()
  # Eagerly: the variants share most operations, which JAX compiles once each.
  outputs, variables = model.init_with_output(jax.random.PRNGKey(0), images, mask)
  assert outputs['logits'].shape == (2, 2, 6, 4) and np.isfinite(outputs['boxes']).all()
  params = flax.traverse_util.flatten_dict(flax.linen.meta.unbox(variables['params']), sep='/')
  learned = {k: v.shape for k, v in params.items() if k.startswith('position_embedding/')}
  # The original's 50 x 50 row / column embeddings of hidden_dim / 2 features each.
  assert learned == ({'position_embedding/row_embed': (50, 16),
                      'position_embedding/col_embed': (50, 16)}
                     if 'spatial_pos=learned' in arg else {})


def test_learned_spatial_embedding_equals_hf_transformers():
  torch.manual_seed(0)
  hf = DetrLearnedPositionEmbedding(embedding_dim=16)
  for table in (hf.row_embeddings, hf.column_embeddings):
    torch.nn.init.normal_(table.weight)
  with torch.no_grad():
    expected = hf(torch.Size((2, 16, 7, 9)), 'cpu', torch.float32).numpy().transpose(0, 2, 3, 1)
  params = {'row_embed': hf.row_embeddings.weight.detach().numpy(),
            'col_embed': hf.column_embeddings.weight.detach().numpy()}
  ours = models.LearnedPositionEmbedding(16).apply({'params': params}, jnp.ones((2, 7, 9)))
  np.testing.assert_array_equal(ours, expected)


def test_learned_spatial_embedding_beyond_50_cells_is_a_one_line_error():
  model = models.DETR(num_classes=3, position_embedding='learned', **TINY)
  with pytest.raises(UserError, match=r'cover 50 x 50 feature cells but the features are '
                                             r'51 x 2: use position_embedding=sine'):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 51 * 32, 64, 3)),
                   jnp.ones((1, 51 * 32, 64)))


@functools.cache
def _transformer_variables():
  """Weights of a 2 + 2 layer transformer of width 32 (an encoder-less one drops 'encoder')."""
  shapes = [(2, 12, 32), (2, 12), (6, 32), (2, 12, 32)]
  return models.Transformer(2, 2, 4, 64, 0.0).init(
      jax.random.PRNGKey(2), *(jnp.ones(shape) for shape in shapes), train=False)


def _transformer_outputs(pos, src, layers=2, **fields):
  """The decoder outputs on fixed queries and weights, padding in the second example (eager:
  the variants share their operations, which JAX compiles once each)."""
  variables = _transformer_variables()
  if layers == 0:
    variables = {'params': {k: v for k, v in variables['params'].items() if k != 'encoder'}}
  query_pos = jax.random.normal(jax.random.PRNGKey(5), (6, 32))
  mask = jnp.ones((2, 12)).at[1, 9:].set(0)
  decoded, _ = models.Transformer(layers, 2, 4, 64, 0.0, **fields).apply(
      variables, src, mask, query_pos, pos, train=False)
  return decoded


@pytest.mark.slow
def test_spatial_encodings_enter_where_the_variant_says():
  pos = jax.random.normal(jax.random.PRNGKey(3), (2, 12, 32))
  src = jax.random.normal(jax.random.PRNGKey(4), (2, 12, 32))
  none = dict(encoder_spatial_pos='none', decoder_spatial_pos='none')
  # Without spatial encodings the output does not depend on them; the baseline's does.
  assert np.array_equal(_transformer_outputs(pos, src, **none),
                        _transformer_outputs(2 * pos, src, **none))
  assert not np.allclose(_transformer_outputs(pos, src), _transformer_outputs(2 * pos, src))
  # At the encoder's input: the same as a model without encodings fed src + pos.
  np.testing.assert_allclose(
      _transformer_outputs(pos, src, encoder_spatial_pos='input', decoder_spatial_pos='none'),
      _transformer_outputs(pos, src + pos, **none), atol=1e-6)
  # At the decoder's input: with no encoder layers, the memory is src + pos either way.
  np.testing.assert_allclose(
      _transformer_outputs(pos, src, layers=0, encoder_spatial_pos='none',
                           decoder_spatial_pos='input'),
      _transformer_outputs(pos, src, layers=0, encoder_spatial_pos='input',
                           decoder_spatial_pos='none'), atol=1e-6)
  # Only in the decoder: the encoder ignores them, the decoder's attention reads them.
  decoder_only = _transformer_outputs(pos, src, encoder_spatial_pos='none')
  assert not np.allclose(decoder_only, _transformer_outputs(pos, src, **none))


@pytest.mark.parametrize('arg, loss_weights', [
    ('r50', (1., 5., 2.)), ('r50,loss=class_l1', (1., 5., 0.)),
    ('r50,loss=class_giou', (1., 0., 2.))])
def test_loss_variants_keep_the_matching_cost(arg, loss_weights):
  config = _tiny_config(arg)
  assert (config.loss.class_weight, config.loss.bbox_weight, config.loss.giou_weight) == (
      loss_weights)
  task = detection.DetectionTask(config)
  assert task.cost_weights == {'class_weight': 1., 'bbox_weight': 5., 'giou_weight': 2.}


@pytest.mark.slow
def test_aux_loss_false_drops_the_decoder_layer_losses():
  images, mask = _images()
  batch = {'image': images, 'pixel_mask': mask, 'labels': jnp.array([[0, 2, 0], [1, 0, 0]]),
           'boxes': jnp.array([[[.3, .3, .2, .2], [.6, .6, .3, .4], [.5, .5, 1, 1]],
                               [[.5, .4, .5, .3], [.5, .5, 1, 1], [.5, .5, 1, 1]]]),
           'box_mask': jnp.array([[1, 1, 0], [1, 0, 0]])}
  results = {}
  for aux in (True, False):
    task = detection.DetectionTask(_tiny_config(f'r50,aux_loss={aux}'))
    if aux:  # The same model both times.
      variables = task.init_variables(jax.random.PRNGKey(0))
    results[aux] = task.loss(variables, batch, jax.random.PRNGKey(1),
                             task.loss_normalizers(batch))
  (with_aux, metrics), (without, final) = results[True], results[False]
  # Without: only the final layer's CE + 5 L1 + 2 GIoU (its logged terms); with: both layers.
  last_layer = final['loss_ce'] + 5 * final['loss_bbox'] + 2 * final['loss_giou']
  np.testing.assert_allclose(without, last_layer, rtol=1e-6)
  np.testing.assert_allclose(metrics['loss_ce'], final['loss_ce'], rtol=1e-6)
  assert with_aux > 1.5 * without


@pytest.mark.parametrize('arg, message', [
    ('r50,spatial_pos=sine', "bad value 'spatial_pos=sine' in configs/detr_coco.py:r50,spatial_"
     "pos=sine: use configs/detr_coco.py:BACKBONE[,epochs=<int>][,enc_layers=<int>][,spatial_pos"
     "=sine_attention|none|sine_input|learned_attention|sine_attention_decoder]"),
    ('r50,output_pos=sine', "output_pos=learned_attention|learned_input]"),
    ('r50,loss=l1', "loss=class_l1_giou|class_l1|class_giou]"),
    ('r50,enc_layers=-1', 'enc_layers=-1 in configs/detr_coco.py:r50,enc_layers=-1: use 0 or '
     'more encoder layers'),
])
def test_unknown_variants_are_one_line_errors_listing_the_choices(arg, message):
  with pytest.raises(ValueError) as error:
    load_config('detr_coco', arg)
  assert message in str(error.value) and '\n' not in str(error.value)


def test_unknown_model_encoding_places_are_one_line_errors():
  model = models.DETR(num_classes=3, output_pos='everywhere', **TINY)
  with pytest.raises(UserError) as error:
    model.init(jax.random.PRNGKey(0), *_images())  # Checked before any computation.
  # (JAX appends a note on its filtered traceback below the message.)
  assert str(error.value).splitlines()[0] == (
      "unknown DETR output_pos 'everywhere': use one of attention, input")
