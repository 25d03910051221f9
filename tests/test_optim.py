"""The optimizer builder against independent references: the original ViT schedule formulas and
torch.optim on the same gradients."""

import math

import jax
import ml_collections
import numpy as np
import optax
import pytest
import torch

from vit_jax.framework import durations, optim
from vit_jax.framework.errors import UserError

LR, WARMUP, TOTAL = 0.03, 50, 500


def _schedule(**kwargs):
  return optim.make_schedule(LR, dict(warmup_steps=WARMUP, **kwargs), TOTAL)


def _vit_reference(step, decay):
  """vision_transformer's utils.create_learning_rate_schedule, written out."""
  progress = min(max((step - WARMUP) / (TOTAL - WARMUP), 0.0), 1.0)
  return LR * decay(progress) * min(1.0, step / WARMUP)


@pytest.mark.parametrize('step', [0, 1, 25, 49, 50, 51, 100, 275, 499, 500])
def test_warmup_cosine_matches_original_formula(step):
  expected = _vit_reference(step, lambda p: 0.5 * (1 + math.cos(math.pi * p)))
  assert float(_schedule(name='warmup_cosine')(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9)  # float32


@pytest.mark.parametrize('step', [0, 10, 50, 200, 500])
def test_warmup_linear_to_end_value(step):
  end = 1e-5
  expected = _vit_reference(step, lambda p: (end + (LR - end) * (1 - p)) / LR)
  assert float(_schedule(name='warmup_linear', end_value=end)(step)) == pytest.approx(
      expected, rel=1e-5)


@pytest.mark.parametrize('step', [50, 100, 300, 500])
def test_warmup_poly_as_mmsegmentation(step):
  end, power = 1e-5, 0.9
  expected = (LR - end) * (1 - (step - WARMUP) / (TOTAL - WARMUP)) ** power + end
  got = float(_schedule(name='warmup_poly', end_value=end, power=power)(step))
  assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize('step, drops', [(60, 0), (199, 0), (200, 1), (399, 1), (400, 2)])
def test_warmup_step_decay(step, drops):
  schedule = _schedule(name='warmup_step', boundaries=(200, 400), decay_factor=0.1)
  assert float(schedule(step)) == pytest.approx(LR * 0.1**drops, rel=1e-6)


@pytest.mark.parametrize('step, drops', [(399, 0), (400, 1), (500, 1)])
def test_step_decay_at_a_fraction_of_the_run_as_detr(step, drops):
  # DETR: x0.1 at epoch 400 of 500; the run's step count is known only at run time.
  schedule = optim.make_schedule(LR, dict(name='warmup_step', boundary_fractions=(0.8,)), TOTAL)
  assert float(schedule(step)) == pytest.approx(LR * 0.1**drops, rel=1e-6)


@pytest.mark.parametrize('batch_size, drop_step', [(64, 739_294), (32, 1_478_588)])
def test_step_decay_in_epochs_follows_the_batch_size(batch_size, drop_step):
  # DETR: x0.1 at epoch 400 of COCO's 118,287 images, whatever the batch size.
  epochs = durations.Epochs(118_287, batch_size)
  schedule = optim.make_schedule(
      LR, dict(name='warmup_step', warmup_epochs=1, boundary_epochs=(400,)), 10**7, epochs)
  assert drop_step == math.ceil(400 * 118_287 / batch_size)
  assert float(schedule(drop_step - 1)) == pytest.approx(LR, rel=1e-6)
  assert float(schedule(drop_step)) == pytest.approx(LR * 0.1, rel=1e-6)
  assert float(schedule(epochs.to_steps(1) // 2)) == pytest.approx(LR / 2, rel=1e-3)


@pytest.mark.parametrize('schedule, message', [
    (dict(warmup_steps=5, warmup_epochs=1), 'warmup_steps and config.optim.schedule.warmup_epochs'),
    (dict(name='warmup_step', boundaries=(5,), boundary_epochs=(1,)),
     'boundaries and boundary_epochs'),
    (dict(name='warmup_step', boundary_epochs=(1,)), 'boundary_epochs needs the training set size'),
])
def test_schedule_duration_mistakes(schedule, message):
  with pytest.raises(UserError, match=message):
    optim.make_schedule(LR, schedule, TOTAL)


def _run_both(optim_config, torch_groups, steps=3, seed=0):
  """Applies the same gradients with our optimizer and with torch; returns both param trees."""
  rng = np.random.default_rng(seed)
  params = {'backbone': {'kernel': rng.normal(size=(4, 3)).astype(np.float32),
                         'bias': rng.normal(size=(3,)).astype(np.float32)},
            'head': {'kernel': rng.normal(size=(3, 2)).astype(np.float32),
                     'bias': rng.normal(size=(2,)).astype(np.float32)}}
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
           for _ in range(steps)]

  tx, _ = optim.make_optimizer(ml_collections.ConfigDict(optim_config), total_steps=steps)
  ours, state = params, tx.init(params)
  for g in grads:
    updates, state = tx.update(g, state, ours)
    ours = optax.apply_updates(ours, updates)

  tensors = {f'{m}/{n}': torch.tensor(v, requires_grad=True)
             for m, layer in params.items() for n, v in layer.items()}
  torch_opt = torch_groups(tensors)
  for g in grads:
    for name, tensor in tensors.items():
      module, leaf = name.split('/')
      tensor.grad = torch.tensor(g[module][leaf])
    torch_opt.step()
  theirs = {m: {n: tensors[f'{m}/{n}'].detach().numpy() for n in layer}
            for m, layer in params.items()}
  return ours, theirs


def _assert_close(ours, theirs):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ours, theirs)


def test_nesterov_momentum_with_l2_matches_torch_sgd():
  ours, theirs = _run_both(
      dict(name='nesterov', lr=0.1, momentum=0.9, weight_decay=1e-2, wd_mask='.*'),
      lambda t: torch.optim.SGD(t.values(), lr=0.1, momentum=0.9, nesterov=True,
                                weight_decay=1e-2))
  _assert_close(ours, theirs)


def test_momentum_decays_only_masked_params_like_torch_param_groups():
  ours, theirs = _run_both(
      dict(name='momentum', lr=0.1, momentum=0.9, weight_decay=1e-2, wd_mask='.*/kernel'),
      lambda t: torch.optim.SGD(
          [{'params': [v for k, v in t.items() if k.endswith('kernel')], 'weight_decay': 1e-2},
           {'params': [v for k, v in t.items() if k.endswith('bias')], 'weight_decay': 0.0}],
          lr=0.1, momentum=0.9))
  _assert_close(ours, theirs)


def test_adamw_with_backbone_lr_group_matches_torch():
  # DETR's recipe: AdamW lr 1e-4, backbone 1e-5, weight decay 1e-4 on every parameter.
  ours, theirs = _run_both(
      dict(name='adamw', lr=1e-4, weight_decay=1e-4, wd_mask='.*',
           lr_mults=(('backbone/.*', 0.1),)),
      lambda t: torch.optim.AdamW(
          [{'params': [v for k, v in t.items() if k.startswith('backbone')], 'lr': 1e-5},
           {'params': [v for k, v in t.items() if k.startswith('head')]}],
          lr=1e-4, weight_decay=1e-4, eps=1e-8))
  _assert_close(ours, theirs)


def test_adam_matches_torch():
  ours, theirs = _run_both(dict(name='adam', lr=1e-3, b1=0.9, b2=0.999),
                           lambda t: torch.optim.Adam(t.values(), lr=1e-3))
  _assert_close(ours, theirs)


def _clipped(optimizer_class, clip: float):
  """A torch optimizer whose step first clips its parameters' gradients to global norm `clip`."""
  class Clipped(optimizer_class):
    def step(self):
      torch.nn.utils.clip_grad_norm_(self.param_groups[0]['params'], clip)
      super().step()
  return Clipped


def test_clipping_matches_torch_clip_grad_norm():
  clip = 0.5
  ours, theirs = _run_both(dict(name='sgd', lr=0.1, grad_clip_norm=clip),
                           lambda t: _clipped(torch.optim.SGD, clip)(t.values(), lr=0.1))
  _assert_close(ours, theirs)


def test_zero_multiplier_freezes_a_group():
  ours, _ = _run_both(dict(name='adam', lr=1e-2, lr_mults=(('head/.*', 0.0),)),
                      lambda t: torch.optim.Adam(t.values(), lr=1e-2))
  start, _ = _run_both(dict(name='sgd', lr=0.0), lambda t: torch.optim.SGD(t.values(), lr=0.0))
  _assert_close(ours['head'], start['head'])
  assert not np.allclose(ours['backbone']['kernel'], start['backbone']['kernel'])


def test_frozen_group_stays_out_of_the_clipping_norm_like_torch():
  # DETR's recipe: the stem and layer1 frozen (requires_grad False in the original: no gradient,
  # so clip_grad_norm_ sees only the trained parameters), AdamW with clipping at 0.1.
  clip = 0.1
  ours, theirs = _run_both(
      dict(name='adamw', lr=1e-2, weight_decay=1e-4, wd_mask='.*', grad_clip_norm=clip,
           lr_mults=(('backbone/.*', 0.0),)),
      lambda t: _clipped(torch.optim.AdamW, clip)(
          [v for k, v in t.items() if k.startswith('head')], lr=1e-2, weight_decay=1e-4,
          eps=1e-8))
  _assert_close(ours, theirs)
  # The optimizer state is laid out as without freezing: checkpoints keep their array names.
  state = lambda mults: optim.make_optimizer(ml_collections.ConfigDict(dict(
      name='adamw', lr=1e-2, grad_clip_norm=clip, lr_mults=mults)), 3)[0].init(ours)
  assert (jax.tree.structure(state((('backbone/.*', 0.0),)))
          == jax.tree.structure(state((('backbone/.*', 0.5),))))


def test_accum_steps_leave_the_optimizer_alone():
  """Accumulation is the train loop's (tests/test_accumulation.py): with accum_steps set, the
  optimizer still updates on every call and its state holds no gradient accumulator."""
  tx, _ = optim.make_optimizer(ml_collections.ConfigDict(dict(name='sgd', lr=1.0,
                                                               accum_steps=2)), 10)
  params = {'w': np.zeros((2,), np.float32)}
  state = tx.init(params)
  assert not any(np.ndim(leaf) for leaf in jax.tree.leaves(state))  # Plain SGD: no arrays.
  updates, _ = tx.update({'w': np.full((2,), 3.0, np.float32)}, state, params)
  np.testing.assert_allclose(optax.apply_updates(params, updates)['w'], [-3.0, -3.0])


def test_unknown_names_are_clear_errors():
  with pytest.raises(UserError, match='unknown config.optim.name'):
    optim.make_optimizer(ml_collections.ConfigDict(dict(name='lamb', lr=1.0)), 10)
  with pytest.raises(UserError, match='unknown config.optim.schedule.name'):
    optim.make_schedule(1.0, dict(name='exp'), 10)


def test_absolute_weight_decay_is_big_visions_update():
  """wd_times_lr=False: big_vision's chain (clip, Adam, x lr, + wd x param on kernels, x the
  schedule's shape, x -1), by hand in float64: update = -s_t (lr adam_t + wd param) for kernels,
  -s_t lr adam_t for biases, s_t = t / warmup during the warmup."""
  lr, wd, warmup, b1, b2, eps = 1e-3, 1e-4, 4, 0.9, 0.999, 1e-8
  rng = np.random.default_rng(0)
  params = {'kernel': rng.normal(size=(3, 2)), 'bias': rng.normal(size=(2,))}
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape), params) for _ in range(3)]
  tx, _ = optim.make_optimizer(ml_collections.ConfigDict(dict(
      name='adamw', lr=lr, weight_decay=wd, wd_times_lr=False, wd_mask='.*kernel', b1=b1, b2=b2,
      eps=eps, schedule=dict(name='warmup_cosine', warmup_steps=warmup))), total_steps=100)
  ours = jax.tree.map(lambda p: p.astype(np.float32), params)
  state = tx.init(ours)
  expected = dict(params)
  moments = {k: (np.zeros_like(p), np.zeros_like(p)) for k, p in params.items()}
  for t, g in enumerate(grads):
    updates, state = tx.update(jax.tree.map(lambda x: x.astype(np.float32), g), state, ours)
    ours = optax.apply_updates(ours, updates)
    shape = t / warmup  # optax evaluates the schedule at the count before the step.
    for key, param in expected.items():
      m, v = moments[key]
      m, v = b1 * m + (1 - b1) * g[key], b2 * v + (1 - b2) * g[key] ** 2
      moments[key] = m, v
      adam = (m / (1 - b1 ** (t + 1))) / (np.sqrt(v / (1 - b2 ** (t + 1))) + eps)
      decay = wd * param if key == 'kernel' else 0.0
      expected[key] = param - shape * (lr * adam + decay)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), ours,
               expected)
  with pytest.raises(UserError, match='wd_times_lr=False'):
    optim.make_optimizer(ml_collections.ConfigDict(dict(
        name='adam', lr=lr, weight_decay=wd, wd_times_lr=False)), 10)
