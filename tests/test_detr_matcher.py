"""Hungarian matcher: the original's cost formula, optimal assignments (brute force, scipy),
padding in any slot, empty images, NaN predictions, and per-shard host callbacks on 8 devices."""

import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize
from scipy.spatial import distance

import detr_matcher_run
from detr_jax import matcher
from helpers import ROOT, multihost_env
from vit_jax.framework.errors import UserError


def _np_xyxy(b):
  return np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], -1)


def _np_generalized_box_iou(boxes1, boxes2):
  """detr util/box_ops.py generalized_box_iou, transcribed to numpy (float64)."""
  area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
  area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
  lt = np.maximum(boxes1[:, None, :2], boxes2[:, :2])
  rb = np.minimum(boxes1[:, None, 2:], boxes2[:, 2:])
  wh = (rb - lt).clip(min=0)
  inter = wh[..., 0] * wh[..., 1]
  union = area1[:, None] + area2 - inter
  iou = inter / union
  lt = np.minimum(boxes1[:, None, :2], boxes2[:, :2])
  rb = np.maximum(boxes1[:, None, 2:], boxes2[:, 2:])
  wh = (rb - lt).clip(min=0)
  area = wh[..., 0] * wh[..., 1]
  return iou - (area - union) / area


def _original_cost_blocks(logits, pred_boxes, labels, target_boxes, mask, weights=(1, 5, 2)):
  """detr HungarianMatcher.forward up to the split: one [B*Q, sum T_i] matrix for the whole
  flattened batch, then image i's own block. Returns [cost of image i on its real targets]."""
  class_w, bbox_w, giou_w = weights
  batch, queries, _ = logits.shape
  flat = logits.reshape(batch * queries, -1).astype(np.float64)
  out_prob = np.exp(flat - flat.max(-1, keepdims=True))
  out_prob /= out_prob.sum(-1, keepdims=True)
  out_bbox = pred_boxes.reshape(batch * queries, 4).astype(np.float64)
  tgt_ids = np.concatenate([labels[i][mask[i]] for i in range(batch)])
  tgt_bbox = np.concatenate([target_boxes[i][mask[i]] for i in range(batch)]).astype(np.float64)
  cost_class = -out_prob[:, tgt_ids]
  cost_bbox = distance.cdist(out_bbox, tgt_bbox, 'cityblock')
  cost_giou = -_np_generalized_box_iou(_np_xyxy(out_bbox), _np_xyxy(tgt_bbox))
  cost = (bbox_w * cost_bbox + class_w * cost_class + giou_w * cost_giou).reshape(
      batch, queries, -1)
  splits = np.cumsum([m.sum() for m in mask])[:-1]
  return [block[i] for i, block in enumerate(np.split(cost, splits, axis=-1))]


def test_cost_equals_the_original_formula():
  case = detr_matcher_run.make_case(batch=6, seed=1)
  mask = case['target_mask'].astype(bool)
  for weights in ((1, 5, 2), (2, 1, 3)):
    cost = np.asarray(matcher.matching_cost(
        case['logits'][0], case['pred_boxes'][0], case['labels'], case['target_boxes'],
        case['target_mask'], class_weight=weights[0], bbox_weight=weights[1],
        giou_weight=weights[2]))
    expected = _original_cost_blocks(case['logits'][0], case['pred_boxes'][0], case['labels'],
                                     case['target_boxes'], mask, weights)
    bound = 4 * weights[1] + weights[2]
    for i in range(len(mask)):
      np.testing.assert_allclose(cost[i][:, mask[i]], expected[i], atol=2e-5)
      assert (cost[i][:, ~mask[i]] == bound).all()
  assert mask[1].sum() == 0 and 0 < mask.sum() < mask.size  # An empty image, padding inside.


def _assert_valid(target_query, mask, num_queries):
  """Every real slot has its own query, every padded slot -1."""
  target_query = np.asarray(target_query)
  for index in np.ndindex(target_query.shape[:-1]):
    row, real = target_query[index], mask[index[-1]]
    assert (row[~real] == -1).all()
    assert ((row[real] >= 0) & (row[real] < num_queries)).all()
    assert len(set(row[real].tolist())) == real.sum()


def _total(cost, target_query, mask):
  slots = np.flatnonzero(mask)
  return cost[target_query[slots], slots].sum()


@pytest.mark.parametrize('queries, slots', [(1, 1), (2, 2), (3, 1), (3, 3), (4, 2), (5, 3),
                                            (5, 4), (6, 4)])
def test_total_cost_equals_brute_force_optimum(queries, slots):
  rng = np.random.default_rng(queries * 10 + slots)
  layers, batch = 2, 12
  cost = rng.normal(size=(layers, batch, queries, slots)).astype(np.float32)
  mask = rng.random((batch, slots)) < 0.6
  mask[0], mask[1] = False, True  # An image without targets, one with every slot real.
  target_query = np.asarray(matcher.hungarian_match(jnp.asarray(cost), jnp.asarray(mask)))
  assert target_query.shape == (layers, batch, slots) and target_query.dtype == np.int32
  _assert_valid(target_query, mask, queries)
  for layer, image in itertools.product(range(layers), range(batch)):
    slots_real = np.flatnonzero(mask[image])
    block = cost[layer, image][:, slots_real]
    best = min((block[list(p), range(len(slots_real))].sum()
                for p in itertools.permutations(range(queries), len(slots_real))), default=0.)
    got = _total(cost[layer, image], target_query[layer, image], mask[image])
    np.testing.assert_allclose(got, best, rtol=1e-6, atol=1e-6)


def test_total_cost_equals_scipy_on_detr_sized_problems():
  rng = np.random.default_rng(2)
  cost = rng.uniform(-3, 25, (3, 4, 100, 20)).astype(np.float32)
  mask = rng.random((4, 20)) < 0.5
  target_query = np.asarray(jax.jit(matcher.hungarian_match)(cost, mask))
  _assert_valid(target_query, mask, 100)
  for layer, image in itertools.product(range(3), range(4)):
    block = cost[layer, image][:, mask[image]]
    rows, cols = optimize.linear_sum_assignment(block)
    np.testing.assert_allclose(_total(cost[layer, image], target_query[layer, image], mask[image]),
                               block[rows, cols].sum(), rtol=1e-6)


def test_padded_slots_never_reach_scipy(monkeypatch):
  shapes = []
  solve = optimize.linear_sum_assignment
  monkeypatch.setattr(optimize, 'linear_sum_assignment',
                      lambda c: shapes.append(c.shape) or solve(c))
  mask = np.array([[0, 1, 0, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0]], bool)
  cost = np.random.default_rng(3).normal(size=(2, 3, 10, 5)).astype(np.float32)
  matcher.hungarian_match(cost, mask).block_until_ready()
  assert shapes == [(10, 2), (10, 3)] * 2  # Per layer: images 0 and 2; the empty one skipped.


def _perfect_predictions(query_of_slot, labels, target_boxes, mask, num_queries, classes):
  """Query query_of_slot[t] predicts target t exactly; the others predict no-object far away."""
  batch = len(labels)
  logits = np.zeros((batch, num_queries, classes + 1), np.float32)
  logits[..., -1] = 8.
  boxes = np.tile(np.array([0.95, 0.95, 0.02, 0.02], np.float32), (batch, num_queries, 1))
  for i, t in zip(*np.nonzero(mask)):
    q = query_of_slot[i, t]
    logits[i, q, -1], logits[i, q, labels[i, t]] = 0., 8.
    boxes[i, q] = target_boxes[i, t]
  return logits, boxes


@pytest.mark.parametrize('shuffled', [False, True])
def test_perfect_predictions_are_matched_to_their_targets(shuffled):
  rng = np.random.default_rng(4)
  batch, queries, slots, classes = 5, 10, 6, 3
  labels = rng.integers(0, classes, (batch, slots))
  target_boxes = np.concatenate([rng.uniform(0.2, 0.8, (batch, slots, 2)),
                                 rng.uniform(0.05, 0.3, (batch, slots, 2))], -1)
  mask = rng.random((batch, slots)) < 0.6
  mask[0] = False
  query_of_slot = np.stack([rng.permutation(queries)[:slots] if shuffled else np.arange(slots)
                            for _ in range(batch)])
  logits, boxes = _perfect_predictions(query_of_slot, labels, target_boxes, mask, queries,
                                       classes)
  cost = matcher.matching_cost(logits[None], boxes[None], labels[None], target_boxes[None],
                               mask[None])
  target_query = np.asarray(matcher.hungarian_match(cost, mask))[0]
  np.testing.assert_array_equal(target_query, np.where(mask, query_of_slot, -1))


@pytest.mark.parametrize('poison', ['nan_logits', 'inf_logits', 'nan_boxes', 'inf_boxes',
                                    'all_nan'])
def test_non_finite_predictions_give_a_valid_assignment(poison):
  case = detr_matcher_run.make_case(batch=4, seed=5)
  logits, boxes = case['logits'][:2].copy(), case['pred_boxes'][:2].copy()
  if poison == 'nan_logits':
    logits[:, :, ::3, 1] = np.nan
  elif poison == 'inf_logits':
    logits[0, 0, 0, 0], logits[1, 2, 5, 2] = np.inf, -np.inf
  elif poison == 'nan_boxes':
    boxes[:, :, ::2, :] = np.nan
  elif poison == 'inf_boxes':
    boxes[0, 0, 1:4, 2], boxes[1, 3, 0, 0] = np.inf, -np.inf
  else:
    logits[:], boxes[:] = np.nan, np.nan
  per_layer = lambda x: np.broadcast_to(x, (2,) + x.shape)
  cost = matcher.matching_cost(logits, boxes, per_layer(case['labels']),
                               per_layer(case['target_boxes']), per_layer(case['target_mask']))
  assert np.isfinite(np.asarray(cost)).all()
  target_query = jax.jit(matcher.hungarian_match)(cost, case['target_mask'])
  _assert_valid(target_query, case['target_mask'].astype(bool), logits.shape[-2])


def test_solver_errors_keep_their_message_on_one_device():
  cost = np.zeros((2, 3, 6, 4), np.float32)
  cost[1, 2, 0, 0] = np.nan  # matching_cost never gives this; scipy refuses it.
  with pytest.raises(Exception, match='decoder layer 1, image 2 of the batch .*invalid numeric'):
    jax.jit(matcher.hungarian_match)(cost, np.ones((3, 4))).block_until_ready()


def test_more_target_slots_than_queries_is_a_user_error():
  with pytest.raises(UserError, match=r'21 target slots but only 20 queries'):
    matcher.hungarian_match(jnp.zeros((1, 2, 20, 21)), jnp.ones((2, 21)))


def test_matching_passes_no_gradient():
  cost = jnp.asarray(np.random.default_rng(6).normal(size=(1, 2, 6, 3)), jnp.float32)
  mask = jnp.array([[1, 1, 0], [0, 1, 1]])

  def picked_cost(c):
    target_query = matcher.hungarian_match(c, mask)
    picked = jnp.take_along_axis(c, jnp.maximum(target_query, 0)[..., None, :], axis=-2)
    return jnp.sum(jnp.where(mask > 0, picked[..., 0, :], 0.))
  grad = np.asarray(jax.jit(jax.grad(picked_cost))(cost))
  # Gradient only through the picked entries, one per real target; none through the matching.
  assert grad.sum() == 4 and set(np.unique(grad)) == {0., 1.}


def _run_on_8_devices(*args):
  env = multihost_env(8)
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tests', 'detr_matcher_run.py')] + list(args),
      env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


SHARDED_RUNS = [
    ('data8', 16, 2, 1),
    ('data4_model2', 16, 2, 1),  # The batch also splits over 'model': no image solved twice.
    ('data4_model2', 4, 1, 2),  # 4 images on 8 devices: the two 'model' devices duplicate.
]


@pytest.fixture(scope='module')
def sharded_results():
  """Every sharded run in one subprocess (jax starts once)."""
  return _run_on_8_devices('match', *(f'{mesh}:{batch}' for mesh, batch, _, _ in SHARDED_RUNS))


@pytest.mark.slow
@pytest.mark.parametrize('mesh, batch, images_per_call, solves_per_image', SHARDED_RUNS)
def test_sharded_matching_equals_one_device(mesh, batch, images_per_call, solves_per_image,
                                            sharded_results):
  result = sharded_results[f'{mesh}:{batch}']
  assert result['devices'] == 8
  case = detr_matcher_run.make_case(batch)
  total, target_query, metrics, grads = jax.jit(detr_matcher_run.loss_and_matches)(case)
  np.testing.assert_array_equal(result['target_query'], np.asarray(target_query))
  np.testing.assert_allclose(result['total'], float(total), rtol=1e-5)
  for name, value in metrics.items():
    np.testing.assert_allclose(result['metrics'][name], float(value), rtol=1e-5, err_msg=name)
  for got, expected in zip(result['grads'], grads):
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-4, atol=1e-6)
  # One host call per device, each with its own slice of the batch.
  shard_shape = [detr_matcher_run.LAYERS, images_per_call, detr_matcher_run.QUERIES,
                 detr_matcher_run.SLOTS]
  assert [c['shape'] for c in result['calls']] == [shard_shape] * 8
  image_ids = np.asarray(jax.jit(matcher.matching_cost)(
      case['logits'][0], case['pred_boxes'][0], case['labels'], case['target_boxes'],
      case['target_mask'])).sum((1, 2))
  seen = np.sort([i for c in result['calls'] for i in c['images']])
  np.testing.assert_allclose(seen, np.sort(np.repeat(image_ids, solves_per_image)), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('mesh, image', [('data8', 3), ('data4_model2', 5)])
def test_solver_errors_reach_the_user_with_their_message(mesh, image):
  result = _run_on_8_devices('fail', mesh, str(image))
  assert result['raised'] is not None
  assert 'matrix contains invalid numeric entries' in result['message']  # scipy's own words.
  assert f'decoder layer 1, image {image} of the batch' in result['message']
  assert result['seconds'] < 10  # Not the ~60 s rendezvous abort of a plain multi-device jit.
