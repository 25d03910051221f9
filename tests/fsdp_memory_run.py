"""Builds ViT-S/16's train state under FSDP on the visible devices and prints device 0's bytes.

Run by test_sharding.py with 8 forced CPU devices:  python tests/fsdp_memory_run.py
"""

import json

import flax.linen as nn
import jax

from helpers import load_config
from vit_jax import optim, sharding, train
from vit_jax.classification import ClassificationTask


def device_bytes(tree, device):
  return sum(shard.data.nbytes for x in jax.tree.leaves(tree) for shard in x.addressable_shards
             if shard.device == device)


def main():
  config = load_config('vit_finetune', 's16,cifar10')
  config.mesh = (('data', -1), ('model', 1))
  config.sharding_rules = (('batch', 'data'), ('embed', 'data'))
  rules = sharding.logical_rules(config.sharding_rules)
  mesh = sharding.make_mesh(config.mesh)
  task = ClassificationTask(config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    tx, _ = optim.make_optimizer(config.optim, config.total_steps)
    abstract, shardings = train.state_shardings(task, tx, jax.random.PRNGKey(0), mesh, rules)
    state = jax.jit(lambda r: train.init_state(task, tx, r), out_shardings=shardings)(
        jax.random.PRNGKey(0))
  specs = jax.tree.map(lambda s: s.spec, shardings.params)
  print(json.dumps({
      'devices': jax.device_count(),
      'total_param_bytes': sum(x.nbytes for x in jax.tree.leaves(state.params)),
      'device0_param_bytes': device_bytes(state.params, jax.devices()[0]),
      'predicted_param_bytes': sharding.bytes_per_device(abstract.params, specs, dict(mesh.shape)),
      'device0_momentum_bytes': device_bytes(state.opt_state, jax.devices()[0]),
  }))


if __name__ == '__main__':
  main()
