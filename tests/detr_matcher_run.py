"""Hungarian matching and the set loss on a forced multi-device CPU mesh, as the train loop
traces them; prints one JSON line for test_detr_matcher.py.

Run in a subprocess, because the device count (XLA_FLAGS) is fixed when jax starts:
  python tests/detr_matcher_run.py match MESH:BATCH...   (MESH: a key of MESHES)
  python tests/detr_matcher_run.py fail MESH IMAGE   (a NaN cost in image IMAGE of 8)
"""

import json
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from detr_jax import losses, matcher
from vit_jax.framework import sharding

MESHES = {
    'data8': ((('data', 8),), (('batch', 'data'),)),
    # Tensor parallel: 'model' splits weights, only 'data' the batch.
    'data4_model2': ((('data', 4), ('model', 2)),
                     (('batch', 'data'), ('mlp', 'model'), ('heads', 'model'))),
}
LAYERS, QUERIES, SLOTS, CLASSES = 3, 12, 5, 4


def make_case(batch: int, seed: int = 0) -> dict:
  """Random predictions and padded targets (padding in any slot; image 1 has no targets)."""
  rng = np.random.default_rng(seed)
  mask = rng.random((batch, SLOTS)) < 0.6
  mask[1] = False
  mask[0] = True
  centres = rng.uniform(0.2, 0.8, (batch, SLOTS, 2))
  sizes = rng.uniform(0.05, 0.4, (batch, SLOTS, 2))
  pred = rng.uniform(0.05, 0.9, (LAYERS, batch, QUERIES, 4))
  return {
      'logits': rng.normal(size=(LAYERS, batch, QUERIES, CLASSES + 1)).astype(np.float32),
      'pred_boxes': pred.astype(np.float32),
      'labels': rng.integers(0, CLASSES, (batch, SLOTS)).astype(np.int32),
      'target_boxes': np.concatenate([centres, sizes], -1).astype(np.float32),
      'target_mask': mask.astype(np.int32),
  }


def loss_and_matches(case):
  """What the task's loss does: cost, match, loss; returned with the gradient."""
  def loss_fn(logits, pred_boxes):
    per_layer = lambda x: jnp.broadcast_to(x, (LAYERS,) + x.shape)
    cost = matcher.matching_cost(logits, pred_boxes, per_layer(case['labels']),
                                 per_layer(case['target_boxes']),
                                 per_layer(case['target_mask']))
    target_query = matcher.hungarian_match(cost, case['target_mask'])
    total, metrics = losses.set_loss(logits, pred_boxes, case['labels'], case['target_boxes'],
                                     case['target_mask'], target_query)
    return total, (target_query, metrics)
  (total, (target_query, metrics)), grads = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(case['logits'], case['pred_boxes'])
  return total, target_query, metrics, grads


_SOLVE_ON_HOST = matcher._solve_on_host


def _recording_solver(calls):
  solve = _SOLVE_ON_HOST
  def record(cost, mask, first_image):
    # An image's summed costs identify it.
    calls.append({'shape': list(cost.shape), 'images': cost[0].sum((1, 2)).tolist()})
    return solve(cost, mask, first_image)
  return record


def run_match(mesh_name: str, batch: int) -> dict:
  mesh_axes, rules = MESHES[mesh_name]
  mesh = sharding.make_mesh(mesh_axes)
  case = make_case(batch)
  calls = []
  matcher._solve_on_host = _recording_solver(calls)  # Read when traced, so set before jit.
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    batch_sharding = sharding.batch_sharding(mesh, rules)
    case = {k: jax.device_put(v, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(None, *batch_sharding.spec) if k in (
            'logits', 'pred_boxes') else batch_sharding.spec)) for k, v in case.items()}
    total, target_query, metrics, grads = jax.jit(loss_and_matches)(case)
    target_query = np.asarray(target_query)
  return {
      'devices': jax.device_count(), 'calls': calls, 'target_query': target_query.tolist(),
      'total': float(total), 'metrics': {k: float(v) for k, v in metrics.items()},
      'grads': [np.asarray(g).tolist() for g in grads]}


def run_fail(mesh_name: str, image: int):
  """A cost scipy refuses (NaN) must raise, with scipy's own message, naming the image."""
  mesh_axes, rules = MESHES[mesh_name]
  mesh = sharding.make_mesh(mesh_axes)
  cost = np.zeros((LAYERS, 8, QUERIES, SLOTS), np.float32)
  cost[1, image, 2, 1] = np.nan
  mask = np.ones((8, SLOTS), np.int32)
  start = time.time()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    try:
      np.asarray(jax.jit(matcher.hungarian_match)(cost, mask))
      outcome = {'raised': None}
    except jax.errors.JaxRuntimeError as e:
      outcome = {'raised': type(e).__name__, 'message': str(e)}
  outcome['seconds'] = time.time() - start
  print(json.dumps(outcome), flush=True)


if __name__ == '__main__':
  if sys.argv[1] == 'match':
    runs = [arg.split(':') for arg in sys.argv[2:]]
    print(json.dumps({f'{mesh}:{batch}': run_match(mesh, int(batch)) for mesh, batch in runs}))
  else:
    run_fail(sys.argv[2], int(sys.argv[3]))
