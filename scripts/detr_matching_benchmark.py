"""How much of a DETR train step the host-side Hungarian matching takes, and our matcher against
the original's way of matching, measured in the same run.

  python scripts/detr_matching_benchmark.py [--config=configs/detr_shapes.py] [--repeats=20]

1. The config's jitted train step (model, matching, set loss, AdamW) and `hungarian_match` alone on
   a cost of the same shape: seconds per step and the matching's share.
2. COCO-sized problems (6 decoder layers x 64 images x 100 queries, 7.3 targets per image on
   average, padded to 100 slots): our matcher (one callback, padding sliced off per image) against
   the original's (one [B*Q, sum T] cost matrix for the batch, split per image on the host) and
   against solving the padded 100 x 100 problems.
"""

import argparse
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from detr_jax import matcher
from detr_jax.detection import DetectionTask
from vit_jax.framework import model_stats, optim, train


def _load_config(path):
  spec = importlib.util.spec_from_file_location('config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def train_step_share(config, repeats):
  task = DetectionTask(config)
  tx, schedule = optim.make_optimizer(config.optim, 1000)
  state = train.init_state(task, tx, jax.random.PRNGKey(0))
  batch = jax.tree.map(jnp.asarray, next(task.train_input(0)))
  step = jax.jit(train.make_train_step(task, tx, schedule, 1))
  step_seconds = model_stats.median_seconds(lambda: jax.block_until_ready(step(state, batch)), repeats)

  layers = config.model.num_decoder_layers if config.loss.aux_loss else 1
  mask = batch['box_mask']
  cost = jax.random.uniform(jax.random.PRNGKey(1),
                            (layers,) + mask.shape[:1] + (config.model.num_queries,) +
                            mask.shape[1:])
  match = jax.jit(matcher.hungarian_match)
  match_seconds = model_stats.median_seconds(lambda: jax.block_until_ready(match(cost, mask)), repeats)
  return step_seconds, match_seconds


def coco_like_problem(seed=0, layers=6, batch=64, queries=100, slots=100, mean_targets=7.3):
  rng = np.random.default_rng(seed)
  counts = np.minimum(rng.poisson(mean_targets, batch), slots)
  mask = (np.arange(slots)[None] < counts[:, None]).astype(np.int32)
  cost = rng.random((layers, batch, queries, slots)).astype(np.float32)
  return cost, mask, counts


def original_matching(cost, counts):
  """facebookresearch/detr's matcher on the host: the batch's [B*Q, sum T] cost matrix (built
  on device, copied to the host), split by image, one scipy call per image (per layer)."""
  layers, batch, queries, _ = cost.shape
  for layer in range(layers):
    columns = np.concatenate([cost[layer, b, :, :n] for b, n in enumerate(counts)], axis=1)
    full = np.tile(columns, (batch, 1))  # Every query against every target of the batch.
    for b, block in enumerate(np.split(full.reshape(batch, queries, -1), np.cumsum(counts)[:-1],
                                       axis=-1)):
      scipy.optimize.linear_sum_assignment(block[b])


def padded_matching(cost):
  for problem in cost.reshape(-1, *cost.shape[2:]):
    scipy.optimize.linear_sum_assignment(problem)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'detr_shapes.py'))
  parser.add_argument('--repeats', type=int, default=20)
  args = parser.parse_args()
  config = _load_config(args.config)

  step_seconds, match_seconds = train_step_share(config, args.repeats)
  print(f'{os.path.basename(args.config)}: train step {1e3 * step_seconds:.1f} ms, '
        f'hungarian_match alone {1e3 * match_seconds:.2f} ms '
        f'({100 * match_seconds / step_seconds:.1f}% of the step)')

  cost, mask, counts = coco_like_problem()
  ours = jax.jit(matcher.hungarian_match)
  device_cost, device_mask = jnp.asarray(cost), jnp.asarray(mask)
  ours_seconds = model_stats.median_seconds(
      lambda: jax.block_until_ready(ours(device_cost, device_mask)), args.repeats)
  original_seconds = model_stats.median_seconds(lambda: original_matching(cost, counts), args.repeats)
  padded_seconds = model_stats.median_seconds(lambda: padded_matching(cost), max(args.repeats // 5, 1))
  print(f'COCO-sized matching (6 x 64 x 100 queries, {counts.mean():.1f} targets per image): '
        f'ours {1e3 * ours_seconds:.1f} ms, original {1e3 * original_seconds:.1f} ms '
        f'({original_seconds / ours_seconds:.1f}x ours), padded 100 x 100 '
        f'{1e3 * padded_seconds:.1f} ms ({padded_seconds / ours_seconds:.1f}x ours)')


if __name__ == '__main__':
  main()
