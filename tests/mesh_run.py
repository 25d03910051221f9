"""Trains the tiny digits ViT under one sharding strategy and prints what the test compares.

Run by test_sharding.py in a subprocess, because the device count (XLA_FLAGS) is fixed when jax
starts:  python tests/mesh_run.py STRATEGY WORKDIR
"""

import glob
import json
import os
import sys

import flax.linen as nn
import jax
import tensorflow as tf

from helpers import tiny_digits_config
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import optim, sharding, train

STRATEGIES = {
    'single': ((('data', 1), ('model', 1)), (('batch', 'data'),)),
    'data_parallel': ((('data', -1), ('model', 1)), (('batch', 'data'),)),
    'fsdp': ((('data', -1), ('model', 1)), (('batch', 'data'), ('embed', 'data'))),
    'tensor_parallel': ((('data', 4), ('model', 2)),
                        (('batch', 'data'), ('mlp', 'model'), ('heads', 'model'))),
}


def train_losses(workdir):
  losses = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == 'train_loss':
          losses[event.step] = float(tf.make_ndarray(value.tensor))
  return [losses[step] for step in sorted(losses)]


def main(strategy, workdir):
  mesh_axes, rules = STRATEGIES[strategy]
  # No warmup and a large lr, so that the loss really moves in a few steps.
  config = tiny_digits_config(**{'model.dropout_rate': 0.0, 'total_steps': 10, 'optim.lr': 1e-2,
                                 'optim.schedule.warmup_steps': 0})
  config.mesh, config.sharding_rules = mesh_axes, rules
  task = ClassificationTask(config)
  train.train_and_evaluate(config, workdir, task)

  # The layout the loop used, rebuilt with the loop's own functions.
  mesh = sharding.make_mesh(mesh_axes)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    tx, _ = optim.make_optimizer(config.optim, config.total_steps)
    _, shardings = train.state_shardings(task, tx, jax.random.PRNGKey(0), mesh, rules)
    state = jax.jit(lambda r: train.init_state(task, tx, r), out_shardings=shardings)(
        jax.random.PRNGKey(0))
  layouts = {name: spec for name, spec in sharding.describe(state.params).items()}
  shard_shapes = {
      jax.tree_util.keystr(p, simple=True, separator='/'): list(x.addressable_shards[0].data.shape)
      for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
  adam_mu = state.opt_state[1][0].mu  # chain(clip, adamw(...)) -> adamw's ScaleByAdamState.
  mu_shard = adam_mu['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel']
  print(json.dumps({'devices': jax.device_count(), 'losses': train_losses(workdir),
                    'specs': layouts, 'shard_shapes': shard_shapes,
                    'mu_shard_shape': list(mu_shard.addressable_shards[0].data.shape)}))


if __name__ == '__main__':
  main(*sys.argv[1:])
