"""tf.data input pipelines for training and evaluation.

Both pipelines yield dicts {'image': float32 [B, H, W, 3] normalised,
'label': int32 [B, H, W]}; use `.as_numpy_iterator()` to get NumPy batches.
`B` is the per-process batch size: each process builds its own pipeline with
its `process_index` and feeds its local devices.

Training order is a pure function of (seed, epoch), and each example's
augmentation a pure function of (seed, epoch, example index), so a pipeline
built with `start_step=k` yields exactly the batches k, k + 1, ... of a fresh
one, without augmenting (or, for random-access sources, even reading) the
skipped examples.
"""

from typing import Any, Callable, Optional, Sequence

from kdseg.data import source as source_lib
from kdseg.data import tf_setup
from kdseg.data import transforms

# Re-exported so that pipeline users need a single import.
Source = source_lib.Source
MEAN_RGB = transforms.MEAN_RGB
STDDEV_RGB = transforms.STDDEV_RGB
augment_train = transforms.augment_train
normalize = transforms.normalize

# Independent random streams derived from the user seed.
_SHUFFLE_STREAM = 1
_AUGMENT_STREAM = 2


def _key(seed: int, stream: int):
  """A stateless seed (int64 [2]) for one random stream of `seed`."""
  tf = tf_setup.import_tensorflow()
  return tf.constant([seed % 2**63, stream], tf.int64)


def _check_process(process_index: int, process_count: int):
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in '
                     f'[0, {process_count}).')


def _indexed_positions(source: Source, *, seed: int, start: int,
                       per_process: int, process_index: int,
                       process_count: int):
  """(epoch, index, record) from position `start` on, via random access.

  Epoch e visits the examples in the order of a seeded permutation of all of
  them; process p takes the permuted slots p, p + P, p + 2P, ... so within an
  epoch processes see disjoint examples. Skipping is free: position t of this
  process's stream is computed directly.
  """
  tf = tf_setup.import_tensorflow()
  shuffle_key = _key(seed, _SHUFFLE_STREAM)
  max_index = tf.constant(source.num_examples - 1, tf.int64)

  def locate(t):
    epoch = t // per_process
    slot = (t % per_process) * process_count + process_index
    index = tf.random.experimental.index_shuffle(
        slot, seed=tf.random.experimental.stateless_fold_in(shuffle_key, epoch),
        max_index=max_index)
    return epoch, index, source.lookup(index)

  return tf.data.Dataset.counter(start).map(locate)


def _streamed_positions(source: Source, *, seed: int, start: int,
                        per_process: int, process_index: int,
                        process_count: int, shuffle_buffer: Optional[int]):
  """(epoch, index, record) from position `start` on, by streaming `read()`.

  Each process owns a fixed shard (records p, p + P, ...) and reshuffles it
  every epoch with a buffer seeded by (seed, epoch). Resuming starts directly
  at the right epoch and skips at most one epoch of (undecoded) records.
  tf.data's shuffle also mixes in TensorFlow's global seed, so for exact
  resumption leave `tf.random.set_seed` alone or set it alike in every run.
  """
  tf = tf_setup.import_tensorflow()
  shuffle_key = _key(seed, _SHUFFLE_STREAM)
  shard = (source.read().enumerate()
           .take(per_process * process_count)
           .shard(process_count, process_index))
  buffer_size = shuffle_buffer or per_process

  def epoch_records(epoch):
    epoch_seed = tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(shuffle_key, epoch),
        minval=0, maxval=2**62, dtype=tf.int64)
    records = shard.shuffle(buffer_size, seed=epoch_seed,
                            reshuffle_each_iteration=False)
    return records.map(lambda index, record: (epoch, index, record))

  first_epoch, skip = divmod(start, per_process)
  return tf.data.Dataset.counter(first_epoch).flat_map(epoch_records).skip(skip)


def _normalize_batch(batch):
  return {**batch, 'image': normalize(batch['image'])}


def _deterministic(ds):
  tf = tf_setup.import_tensorflow()
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def build_train_dataset(source: Source, *, batch_size: int,
                        crop_size: Sequence[int], seed: int,
                        ignore_index: Optional[int] = None,
                        process_index: int = 0, process_count: int = 1,
                        start_step: int = 0,
                        scale_range: Sequence[float] = (0.5, 2.0),
                        hflip: bool = True, photometric: bool = False,
                        shuffle_buffer: Optional[int] = None,
                        prefetch: int = 2,
                        teacher_logits: Optional[Callable[[Any], Any]] = None,
                        logits_size: Optional[Sequence[int]] = None):
  """Infinite, shuffled, augmented training batches for one process.

  Every epoch, each process sees `source.num_examples // process_count`
  examples, disjoint from the other processes' (the remainder is left out of
  that epoch). With random access the examples are dealt out to processes
  anew every epoch; streamed sources keep a fixed shard per process (records
  p, p + P, ...). Batches straddle epoch boundaries, as with repeat-then-batch.

  Args:
    source: Training split. Uses random access (`source.lookup`) when
      available, otherwise streams `source.read()`.
    batch_size: Per-process batch size B.
    crop_size: Training crop (h, w).
    seed: Non-negative seed of the shuffling and augmentation.
    ignore_index: Label of padded pixels; defaults to `source.ignore_index`.
    process_index: This process's index in [0, process_count).
    process_count: Number of processes reading disjoint data.
    start_step: Number of batches to skip, for exact resumption.
    scale_range: Random rescaling range, see `augment_train`.
    hflip: Random horizontal flips.
    photometric: Small random brightness/contrast/saturation jitter.
    shuffle_buffer: Shuffle buffer of the streaming path (records, not
      decoded examples); defaults to the whole shard, i.e. a full permutation.
      Ignored for random-access sources, which always permute fully.
    prefetch: Number of batches to prefetch.
    teacher_logits: Optional map from an int64 example index to that whole
      example's cached teacher logits [h, w, C] (`kdseg.teacher_cache`);
      they follow the example's scale, crop and flip (`warp_logits`). Needs
      random access (`source.lookup`).
    logits_size: (h, w) of the warped logits: the teacher's output size on
      a crop.

  Returns:
    A tf.data.Dataset of {'image': float32 [B, h, w, 3] normalised,
    'label': int32 [B, h, w]}, plus 'teacher_logits' float32
    [B, *logits_size, C] with `teacher_logits`.
  """
  tf = tf_setup.import_tensorflow()
  _check_process(process_index, process_count)
  if seed < 0:
    raise ValueError(f'seed must be non-negative, got {seed}.')
  per_process = source.num_examples // process_count
  if per_process < 1:
    raise ValueError(f'{source.num_examples} examples for {process_count} '
                     'processes.')
  ignore_index = source.ignore_index if ignore_index is None else ignore_index
  positions = dict(seed=seed, start=start_step * batch_size,
                   per_process=per_process, process_index=process_index,
                   process_count=process_count)
  if teacher_logits is not None and (source.lookup is None or
                                     logits_size is None):
    raise ValueError('Cached teacher logits need a random-access source '
                     '(decode it once: kdseg.data.decode_once) and '
                     'logits_size.')
  if source.lookup is not None:
    ds = _indexed_positions(source, **positions)
  else:
    ds = _streamed_positions(source, shuffle_buffer=shuffle_buffer, **positions)

  augment_key = _key(seed, _AUGMENT_STREAM)

  def augment(epoch, index, record):
    example = source.decode(record)
    key = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(augment_key, epoch), index)
    options = dict(seed=key, crop_size=crop_size, scale_range=scale_range,
                   hflip=hflip, ignore_index=ignore_index,
                   photometric=photometric)
    if teacher_logits is None:
      image, label = augment_train(example['image'], example['label'],
                                   **options)
      return {'image': image, 'label': label}
    image, label, logits = augment_train(
        example['image'], example['label'], logits=teacher_logits(index),
        logits_size=logits_size, **options)
    return {'image': image, 'label': label, 'teacher_logits': logits}

  ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.map(_normalize_batch, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  return _deterministic(ds.prefetch(prefetch))


def build_eval_dataset(source: Source, *, batch_size: int,
                       ignore_index: Optional[int] = None,
                       pad_to: Optional[Sequence[int]] = None,
                       process_index: int = 0, process_count: int = 1,
                       prefetch: int = 2):
  """Full-resolution, unaugmented batches of this process's shard.

  Process p gets examples p, p + P, p + 2P, ... in source order. Every process
  yields the same number of batches, ceil(ceil(N / P) / B) (collectives in the
  eval step need that); the tail is filled with padding examples whose labels
  are all `ignore_index`, so they do not change any metric that skips ignored
  pixels. The real examples come first.

  Args:
    source: Evaluation split.
    batch_size: Per-process batch size B.
    ignore_index: Label of padding; defaults to `source.ignore_index`.
    pad_to: Optional (h, w): pad every example at the bottom/right to this size
      (image with the mean, label with `ignore_index`). Needed when image sizes
      vary; an example larger than `pad_to` raises an error.
    process_index: This process's index in [0, process_count).
    process_count: Number of processes.
    prefetch: Number of batches to prefetch.

  Returns:
    dataset: tf.data.Dataset of {'image': float32 [B, H, W, 3] normalised,
      'label': int32 [B, H, W]}.
    num_real: Number of real (non-padding) examples this process yields; they
      are the first `num_real` rows of the concatenated batches.
  """
  tf = tf_setup.import_tensorflow()
  _check_process(process_index, process_count)
  if source.num_examples < 1:
    raise ValueError('Empty evaluation source.')
  ignore_index = source.ignore_index if ignore_index is None else ignore_index
  num_real = len(range(process_index, source.num_examples, process_count))
  per_process = -(-source.num_examples // process_count)
  num_batches = -(-per_process // batch_size)

  def standardize(example):
    image = tf.cast(example['image'], tf.float32)
    label = tf.cast(example['label'], tf.int32)
    if pad_to is not None:
      tf.debugging.assert_less_equal(
          tf.shape(label), tf.constant(pad_to, tf.int32),
          message=f'Example larger than pad_to={tuple(pad_to)}.')
      image, label = transforms.pad_to_size(image, label, pad_to,
                                 ignore_index=ignore_index)
      image = tf.ensure_shape(image, [*pad_to, 3])
      label = tf.ensure_shape(label, pad_to)
    return {'image': image, 'label': label}

  def padding_example(example):
    # Same shape as a real example; mean image, nothing to score.
    return {'image': tf.zeros_like(example['image']) + tf.constant(MEAN_RGB),
            'label': tf.fill(tf.shape(example['label']), ignore_index)}

  real = source.as_dataset().shard(process_count, process_index).map(
      standardize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  padding = (source.as_dataset().take(1).map(standardize)
             .map(padding_example)
             .repeat(num_batches * batch_size - num_real))
  ds = real.concatenate(padding).batch(batch_size, drop_remainder=True)
  ds = ds.map(_normalize_batch, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  return _deterministic(ds.prefetch(prefetch)), num_real
