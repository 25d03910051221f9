"""Input shared by every task: where examples come from, the train stream, exact eval batches.

A `Source` is one split as this host reads it: raw examples (images still encoded, so that
skipping is cheap) in a fixed order. On top of it:

- `train_batches`: an endless, deterministic stream. Epoch e is the source shuffled with seed
  (seed, e); augmentation randomness is a function of (seed, example index). Resuming at
  example N skips at most one epoch of raw records and yields exactly the batches an
  uninterrupted run would have. `repeats` (DeiT's repeated augmentation) shows each example
  several times an epoch with different seeds; a batch hook (Mixup) runs after batching.
- `eval_batches`: every example once, padded with zeros to whole batches, with `_mask` (1 real,
  0 padding); every host yields the same number of batches so that multi-host evals line up.

Which global batches a run sees does not depend on the number of processes for sources that
can show every host the whole split: in-memory arrays (`read_all`: one global stream, each host
keeps its rows of every batch) and TFDS datasets prepared in array_record format (`RecordReader`:
one global order per epoch, each host reads its rows of every batch by index). Other TFDS
datasets (tfrecord) are read in per-host parts (`tfds.even_splits`), shuffled on each host: their
batches change with the process count.
"""

import atexit
import dataclasses
import functools
import gc
import math
import multiprocessing.pool
import os
import weakref
from typing import Callable, Iterator, Optional, Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from vit_jax.framework import paths
from vit_jax.framework.errors import UserError

Example = dict[str, tf.Tensor]

# config.input.normalization -> (mean, std) per channel of pixels / 255: the original ViT's
# [-1, 1], DeiT's ImageNet statistics (timm's defaults; DeiT and Segmenter's DeiT backbones).
NORMALIZATIONS = {'vit': ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                  'deit': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}

# The TF runtime must leave accelerators to JAX.
tf.config.set_visible_devices([], 'GPU')


@dataclasses.dataclass(frozen=True)
class Source:
  """One split as this host sees it."""
  read: Callable[[], tf.data.Dataset]  # Raw examples of this host, in a fixed order.
  num_examples: int  # Examples on this host.
  global_num_examples: int  # Examples on all hosts: the split's size, the same on every host.
  max_examples_per_host: int  # The largest host's count; sets how many eval batches all run.
  shuffle_buffer: int  # Buffer for per-epoch shuffling (the whole split when it fits).
  # In-memory sources can show every host the whole split; training then draws one global
  # stream and each host keeps its slice of every batch: the batches do not depend on the
  # number of processes. TFDS sources are too big for that: in array_record, `read` is a
  # `RecordReader` and each host reads its rows by index; otherwise each reads its own part.
  read_all: Optional[Callable[[], tf.data.Dataset]] = None
  # Per-example work deferred until the example is known to be this host's and not skipped,
  # e.g. reading an image file from its path.
  load: Callable[[Example], Example] = lambda example: example


@dataclasses.dataclass(frozen=True)
class RecordReader:
  """A `Source.read` with random access: a split whose records can be read by index (TFDS in
  array_record). Called, it reads this host's part as any `read` does; `at` reads any records of
  the whole split, which lets training draw one global order that no process count changes.
  A task that converts examples keeps it with `map_examples`; wrapping `read` in a plain
  function loses it (training then reads per-host parts)."""
  num_records: int  # Records in the whole split.
  at: Callable[[tf.data.Dataset], tf.data.Dataset]  # int64 record indices -> raw examples.

  def __call__(self) -> tf.data.Dataset:
    return self.at(tf.data.Dataset.from_tensor_slices(host_part(self.num_records)))


def map_examples(source: Source, convert: Callable[[Example], Example]) -> Source:
  """`source` with `convert` applied to every raw example it reads, on every path: a
  `RecordReader` stays one (wrapping `read` in a plain function would lose the random access)."""
  mapped = lambda ds: ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
  if isinstance(source.read, RecordReader):
    at = source.read.at
    read = dataclasses.replace(source.read, at=lambda indices: mapped(at(indices)))
  else:
    read = lambda old=source.read: mapped(old())
  read_all = None if source.read_all is None else lambda old=source.read_all: mapped(old())
  return dataclasses.replace(source, read=read, read_all=read_all)


def host_part(num_examples: int, index: Optional[int] = None,
              count: Optional[int] = None) -> np.ndarray:
  """Indices of this host's examples: a strided slice, so sorted lists stay balanced."""
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  return np.arange(index, num_examples, count)


def array_source(arrays: dict[str, np.ndarray], shuffle_buffer: int = 0) -> Source:
  """A source from in-memory arrays (or lists of file paths), split across hosts."""
  total = len(next(iter(arrays.values())))
  count = jax.process_count()
  part = host_part(total)
  local = {k: np.asarray(v)[part] for k, v in arrays.items()}
  return Source(read=lambda: tf.data.Dataset.from_tensor_slices(local),
                num_examples=len(part), global_num_examples=total,
                max_examples_per_host=math.ceil(total / count),
                shuffle_buffer=shuffle_buffer or max(total, 1),
                read_all=lambda: tf.data.Dataset.from_tensor_slices(arrays))


def tfds_source(name: str, split: str, data_dir: Optional[str] = None,
                decoders: Optional[dict] = None, shuffle_buffer: int = 10_000,
                hint: str = '') -> Source:
  """A TFDS split: read by index when it is stored in array_record (`RecordReader`), else in
  `tfds.even_splits` parts, one per host. Never downloads: a missing dataset is an error that
  says how to provide it (`hint` adds task-specific advice)."""
  where = data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    if data_dir and not paths.tensorflow_reaches(data_dir):
      # TensorFlow reads the records and cannot reach this storage (an emulator, s3://): it
      # reads a local copy of the dataset's version folder instead.
      local = paths.local_stand_in(data_dir)
      paths.copy_to_local(str(builder.data_dir), paths.local_stand_in(str(builder.data_dir)))
      builder = tfds.builder(name, data_dir=local)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f'dataset {name!r} is neither a TFDS dataset nor built in {where}: build it '
                    f'there or pass --config.input.data_dir=DIR. {hint}'.strip()) from None
  if tfds.core.FileFormat.ARRAY_RECORD in builder.info.available_file_formats():
    reader = _array_record_reader(builder, split, decoders)
    count = jax.process_count()
    return Source(read=reader, num_examples=len(host_part(reader.num_records)),
                  global_num_examples=reader.num_records,
                  max_examples_per_host=math.ceil(reader.num_records / count),
                  shuffle_buffer=shuffle_buffer)
  parts = tfds.even_splits(split, n=jax.process_count())

  def read_part(part):
    try:
      return builder.as_dataset(split=part, shuffle_files=False, decoders=decoders,
                                read_config=tfds.ReadConfig(add_tfds_id=False))
    except AssertionError:  # TFDS' way of saying the data was never prepared.
      raise UserError(f'dataset {name!r} (split {split!r}) has no data in {where}: prepare it '
                      f'with `tfds build {name} --data_dir=DIR` and pass '
                      f'--config.input.data_dir=DIR. {hint}'.strip()) from None

  counts = [_count(read_part(p)) for p in parts]
  local_part = parts[jax.process_index()]
  return Source(read=lambda: read_part(local_part), num_examples=counts[jax.process_index()],
                global_num_examples=sum(counts), max_examples_per_host=max(counts),
                shuffle_buffer=shuffle_buffer)


def _array_record_reader(builder, split: str, decoders: Optional[dict]) -> RecordReader:
  """Records of a TFDS split in array_record, fetched by index as serialized bytes, then parsed
  and decoded in tf.data as `as_dataset` does, so examples look the same on both paths."""
  records = builder.as_data_source(
      split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES, file_format='array_record')
  features = builder.info.features
  parser = tfds.core.example_parser.ExampleParser(features.get_serialized_info())

  def fetch(indices: np.ndarray) -> np.ndarray:
    # One Python call per chunk of records, which array_record reads in one batched read.
    return np.array(records.__getitems__(indices.tolist()), dtype=object)

  def at(indices: tf.data.Dataset) -> tf.data.Dataset:
    raw = indices.batch(64).map(
        lambda i: tf.ensure_shape(tf.numpy_function(fetch, [i], tf.string, stateful=False), [None]),
        num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    return raw.map(lambda r: features.decode_example(parser.parse_example(r), decoders=decoders),
                   num_parallel_calls=tf.data.AUTOTUNE)

  return RecordReader(num_records=len(records), at=at)


def _count(ds: tf.data.Dataset) -> int:
  n = int(ds.cardinality())
  return n if n >= 0 else int(ds.reduce(0, lambda c, _: c + 1))


# Formats `tf.io.decode_image` reads, as PIL names them.
DECODABLE_FORMATS = ('JPEG', 'PNG', 'GIF', 'BMP')


BAD_IMAGE_ACTIONS = ('skip', 'stop')  # config.input.on_bad_image


def readable_images(paths: Sequence[str], on_bad_image: str, where: str) -> np.ndarray:
  """Which of `paths` tf.data can decode (a bool per path). A file that is empty, truncated,
  not an image or in a format TF does not read is found now, before training, so that none
  stops a run halfway: 'skip' logs a count and the first few, 'stop' raises a UserError naming
  them. The list is fixed before training, so the stream stays deterministic and resumable."""
  if on_bad_image not in BAD_IMAGE_ACTIONS:
    raise UserError(f'unknown config.input.on_bad_image {on_bad_image!r}: choose one of '
                    f'{BAD_IMAGE_ACTIONS}')
  with multiprocessing.pool.ThreadPool(os.cpu_count()) as pool:  # PIL decodes without the GIL.
    readable = np.array(pool.map(_decodes, paths, chunksize=256), bool)  # Chunks: few tasks.
  bad = [path for path, ok in zip(paths, readable) if not ok]
  if bad:
    examples = ', '.join(sorted(bad)[:3])
    if on_bad_image == 'stop':
      raise UserError(f'{len(bad)} image(s) in {where} do not decode: {examples}; fix or remove '
                      'them, or pass --config.input.on_bad_image=skip')
    logging.warning('Skipping %d of %d images in %s that do not decode, e.g. %s.', len(bad),
                    len(paths), where, examples)
  return readable


def _decodes(path: str) -> bool:
  try:
    with paths.open(path, 'rb') as f, Image.open(f) as image:
      if image.format not in DECODABLE_FORMATS:
        return False
      if image.format == 'JPEG':
        image.draft('RGB', (1, 1))  # Decodes at 1/8 scale: cheap, still finds truncation.
        image.load()
      else:
        image.verify()  # Reads every chunk (a PNG's checksums) without decoding pixels.
    return True
  except Exception:  # pylint: disable=broad-except  # PIL: OSError, SyntaxError, ValueError...
    return False


def train_batches(source: Source, preprocess: Callable[[Example, tf.Tensor], Example],
                  batch_size: int, start_example: int = 0, seed: int = 0,
                  prefetch: int = 2, process_index: Optional[int] = None,
                  process_count: Optional[int] = None, repeats: int = 1,
                  batch_preprocess: Optional[Callable[[Example, tf.Tensor], Example]] = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """This host's part of the global training stream, from global example `start_example`.

  `preprocess(example, seed)` gets a stateless seed (shape [2], int64) unique to the example;
  `batch_size` is the global batch size. `process_index` and `process_count` (default: jax's)
  let one process compute what another would read. `batch_preprocess(batch, seeds)`, if given,
  runs on each host batch after batching, with its examples' seeds ([local batch, 2]), e.g.
  Mixup on groups of rows.

  `repeats` > 1 is repeated augmentation (DeiT's RASampler, reference/deit.md §3.3): an epoch
  keeps its length in examples but holds the first 1/repeats of its shuffled order, each
  example `repeats` times, every copy with its own seed (so its own augmentation). Within each
  global batch the rows are sorted by copy number, so an example's copies lie about
  batch_size / repeats rows apart and go to different devices, as DeiT deals them to different
  GPUs; the layout depends on the global batch only, not on the process count. Sources read in
  per-host parts repeat each host's examples in a row instead.
  """
  if repeats < 1:
    raise UserError(f'config.input.repeats is {repeats}: use 1 (off) or more')
  count = jax.process_count() if process_count is None else process_count
  if batch_size % count:
    raise UserError(f'batch size {batch_size} is not divisible by the {count} hosts')
  if source.num_examples == 0:
    raise UserError('the training split is empty on this host')
  local_batch = batch_size // count
  host = jax.process_index() if process_index is None else process_index

  def shuffled(read):
    return lambda e: read().shuffle(source.shuffle_buffer, seed=seed * 1_000_003 + e,
                                    reshuffle_each_iteration=False)

  def epoch(read, length):
    """Epoch e: the shuffled examples, each `repeats` times, cut to `length` examples."""
    if repeats == 1:
      return shuffled(read)
    return lambda e: shuffled(read)(e).flat_map(
        lambda ex: tf.data.Dataset.from_tensors(ex).repeat(repeats)).take(length)

  def host_rows(batch, positions, length):
    """This host's rows of a global batch, after sorting the rows by copy number."""
    if repeats > 1:
      order = tf.argsort(positions % length % repeats, stable=True)
      batch = tf.nest.map_structure(lambda t: tf.gather(t, order), batch)
    return tf.nest.map_structure(lambda t: t[host * local_batch:(host + 1) * local_batch], batch)

  def augment(example, index):
    example_seed = tf.stack([tf.constant(seed, tf.int64), index])
    example = preprocess(source.load(example), example_seed)
    return example if batch_preprocess is None else (example, example_seed)

  if source.read_all is not None:  # One global stream; this host keeps its slice of each batch.
    total = _count(source.read_all())
    first_epoch, offset = divmod(start_example, total)
    examples = tf.data.Dataset.range(first_epoch, 2**62).flat_map(
        epoch(source.read_all, total))
    indices = tf.data.Dataset.range(start_example, 2**62)
    ds = tf.data.Dataset.zip(examples.skip(offset), indices).batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda *batch: host_rows(batch, batch[1], total)).unbatch()
  elif isinstance(source.read, RecordReader):  # One global order; this host reads its rows.
    # Global example index -> its epoch and record (no skipping); each host takes its rows of
    # every global batch of indices.
    num_records = source.read.num_records
    indices = tf.data.Dataset.range(start_example, 2**62).batch(batch_size).map(
        lambda i: host_rows(i, i, num_records)).unbatch()
    record_of = _record_of(num_records, seed, repeats)
    records = indices.batch(local_batch).map(
        lambda i: tf.ensure_shape(tf.numpy_function(record_of, [i], tf.int64, stateful=False),
                                  [None])).unbatch()
    ds = tf.data.Dataset.zip(source.read.at(records), indices)
  else:  # This host's own part, shuffled on its own; indices made unique across hosts.
    logging.info('The training split is read in per-host parts (a TFDS dataset not in '
                 'array_record, or a read wrapped without map_examples): the global batches '
                 'depend on the number of processes. Prepare the dataset with '
                 'file_format=array_record for batches that do not.')
    local_start = start_example // count
    first_epoch, offset = divmod(local_start, source.num_examples)
    examples = tf.data.Dataset.range(first_epoch, 2**62).flat_map(
        epoch(source.read, source.num_examples))
    indices = tf.data.Dataset.range(local_start, 2**62).map(lambda i: i * count + host)
    ds = tf.data.Dataset.zip(examples.skip(offset), indices)
  ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True)
  if batch_preprocess is not None:
    ds = ds.map(batch_preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  return NumpyBatches(_deterministic(ds.prefetch(prefetch)))


def _record_of(num_records: int, seed: int,
               repeats: int = 1) -> Callable[[np.ndarray], np.ndarray]:
  """Global example indices -> record indices: epoch e is one permutation of all records, drawn
  with seed (seed, e), the same on every host; with `repeats`, its first records each
  `repeats` times in a row."""

  @functools.lru_cache(maxsize=2)  # The epoch being read and the next one.
  def order(epoch: int) -> np.ndarray:
    return np.random.default_rng([seed % 2**63, epoch]).permutation(num_records)

  def record_of(indices: np.ndarray) -> np.ndarray:
    epochs, offsets = np.divmod(indices, num_records)
    records = np.empty_like(indices)
    for epoch in np.unique(epochs):
      records[epochs == epoch] = order(int(epoch))[offsets[epochs == epoch] // repeats]
    return records

  return record_of


def eval_batches(source: Source, preprocess: Callable[[Example], Example],
                 batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Every example of this host once, then zero padding up to whole batches; `_mask` marks real
  examples. All hosts yield ceil(max_examples_per_host / local batch) batches."""
  local_batch = batch_size // jax.process_count()
  if local_batch == 0 or batch_size % jax.process_count():
    raise UserError(f'eval batch size {batch_size} must be a positive multiple of the '
                    f'{jax.process_count()} hosts')
  num_batches = math.ceil(source.max_examples_per_host / local_batch)
  real = source.read().map(lambda ex: preprocess(source.load(ex)),
                           num_parallel_calls=tf.data.AUTOTUNE)
  real = real.map(lambda ex: dict(ex, _mask=tf.constant(1, tf.int32)))
  padding = tf.data.Dataset.from_tensors(
      tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), real.element_spec)).repeat()
  ds = real.concatenate(padding).take(num_batches * local_batch).batch(local_batch)
  return NumpyBatches(_deterministic(ds.prefetch(2)))


def _deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


class NumpyBatches:
  """A dataset's elements as numpy, read ahead by tf.data until `close()` frees its iterator."""

  def __init__(self, ds: tf.data.Dataset):
    self._iterator = ds.as_numpy_iterator()
    _OPEN.add(self)

  def __iter__(self) -> 'NumpyBatches':
    return self

  def __next__(self):
    if self._iterator is None:
      raise StopIteration
    return next(self._iterator)

  def close(self) -> None:
    self._iterator = None


# Every tf.data iterator must be freed before Python finalizes. The Python functions in a map
# (tf.numpy_function: label maps, array_record reads) run on TF's threads, reading ahead; once
# finalizing has begun, a thread that asks for the GIL is ended on the spot, and the iterator's
# destructor waits forever for the call that thread was making: the process hangs at exit,
# holding the run lock. atexit runs before that, while the threads still can: every iterator
# still open is closed, and the garbage cycles that can hold one (a failed run's exception and
# its frames) are collected.
_OPEN: 'weakref.WeakSet[NumpyBatches]' = weakref.WeakSet()


@atexit.register
def _free_iterators_before_exit() -> None:
  for batches in list(_OPEN):
    batches.close()
  gc.collect()
