"""Builds a train state under FSDP on the visible devices and prints what device 0 holds.

Run by test_sharding.py with 8 forced CPU devices:  python tests/fsdp_memory_run.py MODEL
MODEL: 'vit' (ViT-S/16) or 'detr' (DETR-R50, whose backbone convolutions FSDP shards too).
"""

import json
import sys

import flax.linen as nn
import jax

from detr_jax.detection import DetectionTask
from helpers import load_config
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import optim, sharding, train



def _detr_config():
  config = load_config('detr_coco', 'r50')
  # Its lr drop is given in epochs, which need a dataset size; the layout does not depend on it.
  config.optim.schedule.update(boundary_epochs=None, boundaries=(600,))
  return config


FSDP = (('batch', 'data'), ('embed', 'data'))
MODELS = {
    'vit': (lambda: load_config('vit_finetune', 's16,cifar10'), ClassificationTask, FSDP),
    'detr': (_detr_config, DetectionTask, FSDP + (('conv_out', 'data'),)),
}


def device_bytes(tree, device):
  return sum(shard.data.nbytes for x in jax.tree.leaves(tree) for shard in x.addressable_shards
             if shard.device == device)


def main(model):
  make_config, make_task, rules = MODELS[model]
  config = make_config()
  config.mesh = (('data', -1), ('model', 1))
  config.sharding_rules = rules
  rules = sharding.logical_rules(config.sharding_rules)
  mesh = sharding.make_mesh(config.mesh)
  task = make_task(config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    # DETR's configs count epochs; the schedule's length does not change the layout.
    tx, _ = optim.make_optimizer(config.optim, config.get('total_steps') or 1000)
    abstract, shardings = train.state_shardings(task, tx, jax.random.PRNGKey(0), mesh, rules)
    state = jax.jit(lambda r: train.init_state(task, tx, r), out_shardings=shardings)(
        jax.random.PRNGKey(0))
  specs = jax.tree.map(lambda s: s.spec, shardings.params)
  device0 = jax.devices()[0]
  sharded = [x for x in jax.tree.leaves(state.params) if not x.sharding.is_fully_replicated]
  print(json.dumps({
      'devices': jax.device_count(),
      'total_param_bytes': sum(x.nbytes for x in jax.tree.leaves(state.params)),
      'device0_param_bytes': device_bytes(state.params, device0),
      'predicted_param_bytes': sharding.bytes_per_device(abstract.params, specs, dict(mesh.shape)),
      'sharded_param_bytes': sum(x.nbytes for x in sharded),
      'device0_sharded_param_bytes': device_bytes(sharded, device0),
      'device0_momentum_bytes': device_bytes(state.opt_state, device0),
      'specs': sharding.describe(state.params),
  }))


if __name__ == '__main__':
  main(*sys.argv[1:])
