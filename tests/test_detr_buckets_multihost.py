"""DETR's padding buckets on several hosts: every process emits batches of the same shapes in the
same order, a window's examples come out once each, at their own bucket wherever the processes'
rows allow, and one process plans as the single-host regrouping did.

Processes are simulated (each its rows of every global batch, and a stand-in for the all-gather)
and, once, run for real: two jax.distributed processes on 127.0.0.1 (this file is their script:
python tests/test_detr_buckets_multihost.py PROCESS_ID PORT OUTPUT.npz).
"""

import collections
import itertools
import subprocess
import sys

import numpy as np
import pytest

from detr_jax import padding_buckets, padding_report
from helpers import augmented_shapes_task, canvas_batch, free_port, multihost_env
from vit_jax.framework.errors import UserError

# Sorted by area; the canvas is 96x96.
BUCKETS = ((32, 96), (96, 32), (64, 96), (96, 64))
# Image sizes and their buckets: (32, 96), (96, 32), (64, 96), (96, 64), (64, 96), (32, 96).
SIZES = [(32, 64), (64, 32), (48, 96), (96, 48), (64, 64), (20, 90)]


def _plan_as_one_host_did(sizes, batch_size, buckets):
  """The single-host plan as it was before several hosts (the reference for P = 1)."""
  waiting, batches = {}, []
  for i, size in enumerate(sizes):
    bucket = padding_buckets.bucket_of(size, buckets)
    waiting.setdefault(bucket, []).append(i)
    if len(waiting[bucket]) == batch_size:
      batches.append((bucket, waiting.pop(bucket)))

  def key(i):
    bucket = padding_buckets.bucket_of(sizes[i], buckets)
    return (bucket[0] > bucket[1], list(buckets).index(bucket), i)

  rest = sorted((i for indices in waiting.values() for i in indices), key=key)
  for start in range(0, len(rest), batch_size):
    chunk = rest[start:start + batch_size]
    batches.append((padding_buckets.bucket_of(np.max([sizes[i] for i in chunk], 0), buckets),
                    chunk))
  return batches


@pytest.mark.parametrize('batch_size', [1, 3, 8])
def test_one_process_plans_as_the_single_host_regrouping_did(batch_size):
  rng = np.random.default_rng(batch_size)
  for _ in range(20):
    sizes = [SIZES[i] for i in rng.integers(len(SIZES), size=4 * batch_size)]
    expected = _plan_as_one_host_did(sizes, batch_size, BUCKETS)
    assert padding_buckets.plan(sizes, batch_size, BUCKETS) == expected
    assert padding_buckets.global_plan([sizes], batch_size, BUCKETS) == [
        (shape, [rows]) for shape, rows in expected]


def test_two_processes_plan_by_hand():
  a, b = (32, 64), (64, 32)  # Buckets 32x96 and 96x32; together they need 64x96.
  # Stream order: batch 0 is process 0's rows 0-1 then process 1's rows 0-1; batch 1 rows 2-3.
  # The 32x96 batch fills when process 1's row 2 comes: rows 0, 1 of process 0 and 0, 2 of 1.
  assert padding_buckets.global_plan([[a, a, b, b], [a, b, a, b]], 2, BUCKETS) == [
      ((32, 96), [[0, 1], [0, 2]]), ((96, 32), [[2, 3], [1, 3]])]
  # Process 1 has one example of the 96x32 bucket too few: the leftovers share the 64x96 bucket.
  assert padding_buckets.global_plan([[a, a, a, a], [a, b, b, a]], 2, BUCKETS) == [
      ((32, 96), [[0, 1], [0, 3]]), ((64, 96), [[2, 3], [1, 2]])]


def _rows(global_batches, num_processes):
  """Each process's rows of each global batch, as input_pipeline gives them."""
  local = len(global_batches[0]['_mask']) // num_processes
  return [[{key: value[p * local:(p + 1) * local] for key, value in batch.items()}
           for batch in global_batches] for p in range(num_processes)]


def _simulated_gathers(local_streams, window):
  """Per process, a stand-in for `padding_buckets.all_processes`: every process's sizes of the
  next window (filler as 0x0), after checking that the caller passes its own."""
  windows = []
  for start in range(0, len(local_streams[0]), window):
    windows.append(np.stack([np.concatenate(
        [padding_buckets.image_sizes(b['pixel_mask']) * (b['_mask'][:, None] > 0)
         for b in stream[start:start + window]]) for stream in local_streams]))

  def gather_for(process):
    calls = iter(windows)

    def gather(local_sizes):
      everyone = next(calls)
      np.testing.assert_array_equal(local_sizes, everyone[process])
      return everyone
    return gather
  return [gather_for(p) for p in range(len(local_streams))]


def _check_examples(batch, sizes, shape):
  """Each real example whole (pixels = its id) and zeros beyond its image; its id."""
  ids = []
  for i in np.nonzero(batch['_mask'])[0]:
    image_id = int(batch['image_id'][i])
    h, w = sizes[image_id - 1]
    assert (batch['image'][i, :h, :w] == image_id).all()
    assert batch['image'][i].sum() == image_id * h * w * 3
    assert (batch['boxes'][i] == image_id).all()
    ids.append(image_id)
  assert batch['image'].shape[1:3] == batch['pixel_mask'].shape[1:] == shape
  return ids


@pytest.mark.parametrize('num_processes', [2, 4])
def test_processes_emit_equal_shapes_and_each_example_once_at_its_bucket_when_rows_allow(
    num_processes):
  rng = np.random.default_rng(num_processes)
  batch_size, window, num_batches = 8, 4, 12
  local = batch_size // num_processes
  ids = np.arange(1, batch_size * num_batches + 1)
  sizes = [SIZES[i] for i in rng.choice(len(SIZES), len(ids), p=[.3, .2, .2, .1, .1, .1])]
  plain = [canvas_batch(sizes[i:i + batch_size], ids[i:i + batch_size], (96, 96))
           for i in range(0, len(ids), batch_size)]
  rows = _rows(plain, num_processes)
  gathers = _simulated_gathers(rows, window)
  streams = [list(padding_buckets.train_stream(iter(rows[p]), BUCKETS, window, process_index=p,
                                               gather=gathers[p]))
             for p in range(num_processes)]
  assert [len(stream) for stream in streams] == [num_batches] * num_processes
  own = lambda image_id: padding_buckets.bucket_of(sizes[image_id - 1], BUCKETS)
  total_own = total_expected = 0
  for first in range(0, num_batches, window):
    seen, own_bucket_batches = [], 0
    for j in range(first, first + window):
      shapes = {stream[j]['image'].shape for stream in streams}
      assert len(shapes) == 1, shapes  # Every process, the same shape (batch rows included).
      shape = shapes.pop()[1:3]
      batch_ids = sum((_check_examples(stream[j], sizes, shape) for stream in streams), [])
      assert len(batch_ids) == batch_size
      # The smallest bucket holding the batch's images.
      assert shape == padding_buckets.bucket_of(
          np.max([sizes[i - 1] for i in batch_ids], 0), BUCKETS)
      own_bucket_batches += all(own(i) == shape for i in batch_ids)
      seen += batch_ids
    window_ids = ids[first * batch_size:(first + window) * batch_size]
    assert sorted(seen) == window_ids.tolist()
    # Full batches of a bucket: as many as the process with the fewest of it has rows for.
    expected = sum(min(sum(own(i) == bucket for batch in rows[p][first:first + window]
                           for i in batch['image_id']) for p in range(num_processes)) // local
                   for bucket in BUCKETS)
    assert own_bucket_batches >= expected
    total_own, total_expected = total_own + own_bucket_batches, total_expected + expected
  assert 0 < total_expected < num_batches  # The windows did have both kinds of batch.

  # A resume inside the second window: the same batches from there on every process.
  for p in range(num_processes):
    gather = _simulated_gathers([r[window:] for r in rows], window)[p]
    resumed = padding_buckets.train_stream(iter(rows[p][window:]), BUCKETS, window, skip=3,
                                           process_index=p, gather=gather)
    for a, b in itertools.zip_longest(resumed, streams[p][window + 3:]):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def _eval_rows(sizes, ids, batch_size, num_processes):
  """Each process's eval batches as eval_batches makes them: its strided part of the split,
  then filler up to the largest part's whole local batches."""
  local = batch_size // num_processes
  parts = [list(range(p, len(ids), num_processes)) for p in range(num_processes)]
  count = -(-max(map(len, parts)) // local) * local
  streams = []
  for part in parts:
    part_sizes = [sizes[i] for i in part] + [(0, 0)] * (count - len(part))
    part_ids = [ids[i] for i in part] + [0] * (count - len(part))
    streams.append([canvas_batch(part_sizes[i:i + local], part_ids[i:i + local], (96, 96))
                    for i in range(0, count, local)])
  return streams


@pytest.mark.parametrize('num_processes, window', [(1, 1), (1, 3), (2, 1), (2, 3), (4, 2)])
def test_eval_scores_every_example_once_at_its_own_bucket_on_every_process(num_processes,
                                                                            window):
  rng = np.random.default_rng(window)
  batch_size, num_examples = 8, 61  # 61: uneven parts, filler on every process.
  sizes = [SIZES[i] for i in rng.choice(len(SIZES), num_examples, p=[.3, .2, .2, .1, .1, .1])]
  ids = list(range(1, num_examples + 1))
  rows = _eval_rows(sizes, ids, batch_size, num_processes)
  gathers = _simulated_gathers(rows, window)
  own = lambda image_id: padding_buckets.bucket_of(sizes[image_id - 1], BUCKETS)
  streams = []
  for p in range(num_processes):
    emitted = []

    def pulled(batches, p=p, emitted=emitted):
      """The batches, checking when each window is asked for that this process holds fewer
      than a local batch of any bucket (the memory bound)."""
      for i, batch in enumerate(batches):
        if i % window == 0:
          held = collections.Counter(own(image_id) for b in batches[:i]
                                     for image_id in b['image_id'] if image_id)
          held.subtract(own(image_id) for image_id in emitted)
          assert max(held.values(), default=0) < batch_size // num_processes
        yield batch

    streams.append([])
    for batch in padding_buckets.eval_stream(pulled(rows[p]), BUCKETS, window,
                                             process_index=p, gather=gathers[p]):
      streams[-1].append(batch)
      emitted += batch['image_id'][batch['_mask'] > 0].tolist()
  assert len({len(stream) for stream in streams}) == 1
  seen = []
  for batches in zip(*streams):
    shapes = {batch['image'].shape for batch in batches}
    assert len(shapes) == 1, shapes
    shape = shapes.pop()[1:3]
    for batch in batches:
      batch_ids = _check_examples(batch, sizes, shape)
      assert all(padding_buckets.bucket_of(sizes[i - 1], BUCKETS) == shape for i in batch_ids)
      assert not batch['image'][batch['_mask'] == 0].any()
      seen += batch_ids
  assert sorted(seen) == ids
  # One batch per bucket more than full batches need, at most, on one process; several
  # processes add part-filled batches, but each holds some real examples.
  full = sum(-(-sum(padding_buckets.bucket_of(s, BUCKETS) == b for s in sizes) // batch_size)
             for b in BUCKETS)
  if num_processes == 1:
    assert len(streams[0]) == full
  assert all(sum(batch['_mask'].sum() for batch in batches) > 0 for batches in zip(*streams))


def test_padding_report_on_hosts_on_hand_counted_sizes():
  landscape, portrait = (480, 640), (640, 480)
  sizes = np.array([portrait, landscape, landscape, portrait])
  report = lambda processes: padding_report.rows(
      sizes, (landscape, portrait), batch_size=2, window=2, fixed=(1333, 1333),
      seed=0, processes=processes)[-1]
  # One host: each window's two batches hold one orientation each.
  assert report(1).pixels_per_image == 480 * 640
  # Two hosts take alternate rows: the order (seed 0: images 2, 0, 1, 3, so landscape,
  # portrait, landscape, portrait) gives host 0 both landscape images and host 1 both portrait
  # ones, so no batch can hold one bucket: both take the 640x640 canvas.
  np.testing.assert_array_equal(np.random.default_rng(0).permutation(4), [2, 0, 1, 3])
  row = report(2)
  assert (row.name, row.pixels_per_image, row.shapes) == (
      'buckets, batch 2 grouped in windows of 2 on 2 hosts', 640 * 640, 1)
  with pytest.raises(UserError, match='positive divisor of the batch size 2'):
    report(3)


TRAIN_BATCHES, RESUME_AT = 8, 6  # Two windows of 4; the resume is inside the second.


@pytest.mark.slow
def test_two_jax_processes_emit_equal_shapes_and_together_one_process_examples(tmp_path):
  env = multihost_env(1)
  port = free_port()
  outputs = [str(tmp_path / f'{p}.npz') for p in range(2)]
  jobs = [subprocess.Popen([sys.executable, __file__, str(p), str(port), outputs[p]], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for p in range(2)]
  try:
    results = [job.communicate(timeout=120) for job in jobs]
  finally:
    for job in jobs:
      job.kill()
  for job, (_, err) in zip(jobs, results):
    assert job.returncode == 0, err[-3000:]
  saved = [dict(np.load(path)) for path in outputs]

  task = augmented_shapes_task()
  one = list(itertools.islice(task.train_input(0), TRAIN_BATCHES))

  def key(batch, i):  # An example by its own pixels and boxes.
    h, w = padding_buckets.image_sizes(batch['pixel_mask'][i:i + 1])[0]
    return batch['image'][i, :h, :w].tobytes() + batch['boxes'][i].tobytes()

  window = task.config.input.bucket_window
  shapes_seen = set()
  for first in range(0, TRAIN_BATCHES, window):
    ours, theirs = [], []
    for j in range(first, first + window):
      batches = [{k: s[f'train_{k}_{j}'] for k in ('image', 'pixel_mask', 'boxes')}
                 for s in saved]
      assert batches[0]['image'].shape == batches[1]['image'].shape
      shapes_seen.add(batches[0]['image'].shape[1:3])
      ours += [key(b, i) for b in batches for i in range(len(b['image']))]
      theirs += [key(one[j], i) for i in range(len(one[j]['image']))]
    assert sorted(ours) == sorted(theirs)
  assert len(shapes_seen) >= 2  # Bucketed, not the canvas throughout.
  for s in saved:  # The resumed stream: the same batches as from the start.
    for j in range(RESUME_AT, TRAIN_BATCHES):
      np.testing.assert_array_equal(s[f'resumed_image_{j}'], s[f'train_image_{j}'])
  # Eval: equal shapes, every validation image once.
  count = len([k for k in saved[0] if k.startswith('eval_image_id_')])
  assert count == len([k for k in saved[1] if k.startswith('eval_image_id_')])
  image_ids = []
  for j in range(count):
    assert saved[0][f'eval_image_{j}'].shape == saved[1][f'eval_image_{j}'].shape
    for s in saved:
      image_ids += s[f'eval_image_id_{j}'][s[f'eval__mask_{j}'] > 0].tolist()
  assert sorted(image_ids) == list(range(1, task.config.input.shapes.num_eval + 1))


def _run_process(process_id, port, output):
  """One of the two processes: its train batches from the start and resumed, its eval batches."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(f'127.0.0.1:{port}', 2, int(process_id), initialization_timeout=60)
  task = augmented_shapes_task()
  saved = {}
  for j, batch in enumerate(itertools.islice(task.train_input(0), TRAIN_BATCHES)):
    saved.update({f'train_{k}_{j}': v for k, v in batch.items()})
  batch_size = task.config.input.batch_size
  resumed = task.train_input(RESUME_AT * batch_size)
  for j, batch in enumerate(itertools.islice(resumed, TRAIN_BATCHES - RESUME_AT), RESUME_AT):
    saved[f'resumed_image_{j}'] = batch['image']
  for j, batch in enumerate(task.eval_input()):
    saved.update({f'eval_{k}_{j}': v for k, v in batch.items()})
  np.savez(output, **saved)


if __name__ == '__main__':
  _run_process(*sys.argv[1:])
