"""Decode once: a split's examples decoded a single time, then read back raw.

Training reads every example once per epoch. When records are encoded images
(PNG, JPEG) and `image_scale` / `image_size` resize them on decode, each epoch
pays the decoder and the antialiased resize again, which on a small CPU is
slower than the model's step. `decode_once` runs `source.decode` once per
example and returns a `Source` whose records are the decoded examples, with
random access:

- in memory when the decoded split fits `memory_budget_bytes`: one flat
  uint8 buffer of all images and one of all labels, as TensorFlow constants,
  sliced per example (variable image sizes work);
- otherwise on disk, in two flat files under `cache_dir` read through NumPy
  memory maps (the page cache keeps hot parts in memory).

The decoded source's examples equal the original's bit for bit, and its
record i is the original's record i, so a random-access source yields the
same training batches before and after (the augmentation seed depends only on
(seed, epoch, index)). A streamed source (no `lookup`) becomes random access:
its epochs then follow the permutation of the random-access path instead of
a shuffle buffer.
"""

import atexit
import dataclasses
import os
import shutil
import tempfile
from typing import Optional

import numpy as np

from kdseg import progress
from kdseg.data import source as source_lib
from kdseg.data import tf_setup

# Default: decoded splits up to this size stay in memory (CamVid at half
# resolution is 63 MB, Cityscapes at 1/8 about 390 MB).
DEFAULT_MEMORY_BUDGET_BYTES = 2 * 1024**3


@dataclasses.dataclass(frozen=True)
class _Index:
  """Where example i lives in the flat buffers: pixel offset and (H, W)."""
  offsets: np.ndarray  # int64 [N + 1], pixel offsets (labels; images x3).
  shapes: np.ndarray  # int64 [N, 2].
  label_dtype: np.dtype


def _label_dtype(source: source_lib.Source) -> np.dtype:
  # uint8 holds every label value when classes and ignore index fit a byte.
  if source.num_classes <= 256 and 0 <= source.ignore_index < 256:
    return np.dtype(np.uint8)
  return np.dtype(np.int32)


def _examples(source: source_lib.Source, desc: str, bar_on: bool):
  """Yields (image uint8 [H, W, 3], label [H, W]) in source order."""
  bar = progress.bar(total=source.num_examples, desc=desc, enabled=bar_on)
  try:
    for example in source.as_dataset().as_numpy_iterator():
      bar.update(1)
      yield example['image'], example['label']
  finally:
    bar.close()


def _check_example(source, i, image, label):
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'{source.name}/{source.split} example {i}: decode must '
                     f'give uint8 [H, W, 3] images, got {image.dtype} '
                     f'{image.shape}.')
  if label.shape != image.shape[:2]:
    raise ValueError(f'{source.name}/{source.split} example {i}: label '
                     f'{label.shape} and image {image.shape} sizes differ.')


def _decode_to_memory(source, label_dtype, desc, bar_on):
  images, labels, shapes = [], [], []
  for i, (image, label) in enumerate(_examples(source, desc, bar_on)):
    _check_example(source, i, image, label)
    images.append(image.reshape(-1))
    labels.append(label.astype(label_dtype).reshape(-1))
    shapes.append(label.shape)
  return np.concatenate(images), np.concatenate(labels), shapes


def _decode_to_disk(source, label_dtype, folder, desc, bar_on):
  shapes = []
  with open(os.path.join(folder, 'images.u8'), 'wb') as fi, \
       open(os.path.join(folder, 'labels.bin'), 'wb') as fl:
    for i, (image, label) in enumerate(_examples(source, desc, bar_on)):
      _check_example(source, i, image, label)
      fi.write(np.ascontiguousarray(image).tobytes())
      fl.write(np.ascontiguousarray(label.astype(label_dtype)).tobytes())
      shapes.append(label.shape)
  images = np.memmap(os.path.join(folder, 'images.u8'), np.uint8, 'r')
  labels = np.memmap(os.path.join(folder, 'labels.bin'), label_dtype, 'r')
  return images, labels, shapes


def _make_index(shapes, label_dtype) -> _Index:
  shapes = np.asarray(shapes, np.int64).reshape(-1, 2)
  offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])])
  return _Index(offsets=offsets.astype(np.int64), shapes=shapes,
                label_dtype=label_dtype)


def _memory_lookup(images: np.ndarray, labels: np.ndarray, index: _Index):
  """Random access into flat buffers held as TensorFlow constants."""
  tf = tf_setup.import_tensorflow()
  # Created eagerly, now: tf.data functions capture them by reference.
  flat_images = tf.constant(images)
  flat_labels = tf.constant(labels)
  offsets = tf.constant(index.offsets)
  shapes = tf.constant(index.shapes)

  def lookup(i):
    start, shape = offsets[i], shapes[i]
    size = shape[0] * shape[1]
    image = tf.reshape(flat_images[3 * start:3 * (start + size)],
                       tf.concat([shape, [3]], 0))
    label = tf.reshape(flat_labels[start:start + size], shape)
    return {'image': image, 'label': label}

  return lookup


def _disk_lookup(images: np.ndarray, labels: np.ndarray, index: _Index):
  """Random access into memory-mapped flat files (through NumPy)."""
  tf = tf_setup.import_tensorflow()

  def read(i):
    start, end = index.offsets[i], index.offsets[i + 1]
    h, w = index.shapes[i]
    return (np.asarray(images[3 * start:3 * end]).reshape(h, w, 3),
            np.asarray(labels[start:end]).reshape(h, w))

  def lookup(i):
    image, label = tf.numpy_function(
        read, [i], (tf.uint8, tf.as_dtype(index.label_dtype)), stateful=False)
    image.set_shape([None, None, 3])
    label.set_shape([None, None])
    return {'image': image, 'label': label}

  return lookup


def decoded_bytes(num_pixels: int, label_dtype: np.dtype) -> int:
  """Bytes that `num_pixels` decoded pixels take (RGB image plus label)."""
  return num_pixels * (3 + np.dtype(label_dtype).itemsize)


def decode_once(source: source_lib.Source, *,
                memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
                cache_dir: Optional[str] = None,
                first_shape: Optional[tuple[int, int]] = None,
                progress_bar: bool = True) -> source_lib.Source:
  """`source` decoded now, once, with random access to its decoded examples.

  Args:
    source: A split; `source.decode` is run once per example, in order.
    memory_budget_bytes: Keep the decoded split in memory when its estimate
      (from the first example's size times the number of examples, or from
      `first_shape`) is at most this; otherwise write it under `cache_dir`.
      0 forces the on-disk form.
    cache_dir: Folder for the on-disk form; a fresh temporary folder,
      removed when the process exits, by default. A given folder gets a fresh
      sub-folder, also removed at exit.
    first_shape: Optional (H, W) to estimate the size without decoding.
    progress_bar: Show a progress bar while decoding.

  Returns:
    A Source with the same name, split, classes and examples, whose records
    are the decoded examples (`decode` is the identity) and which has
    `lookup`.
  """
  if memory_budget_bytes < 0:
    raise ValueError(f'memory budget must be >= 0 bytes, got '
                     f'{memory_budget_bytes}.')
  tf = tf_setup.import_tensorflow()
  label_dtype = _label_dtype(source)
  if first_shape is None:
    first = next(iter(source.as_dataset().take(1).as_numpy_iterator()))
    first_shape = first['label'].shape[:2]
  estimate = decoded_bytes(int(np.prod(first_shape)) * source.num_examples,
                           label_dtype)
  desc = f'decoding {source.name}/{source.split} once'
  if estimate <= memory_budget_bytes:
    images, labels, shapes = _decode_to_memory(source, label_dtype, desc,
                                               progress_bar)
    index = _make_index(shapes, label_dtype)
    lookup = _memory_lookup(images, labels, index)
    where = 'memory'
  else:
    if cache_dir:
      os.makedirs(cache_dir, exist_ok=True)
    folder = tempfile.mkdtemp(prefix='kdseg_decoded_', dir=cache_dir or None)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    images, labels, shapes = _decode_to_disk(source, label_dtype, folder, desc,
                                             progress_bar)
    index = _make_index(shapes, label_dtype)
    lookup = _disk_lookup(images, labels, index)
    where = folder
  if len(shapes) != source.num_examples:
    raise ValueError(f'{source.name}/{source.split}: read {len(shapes)} '
                     f'examples, the source says {source.num_examples}.')
  total = decoded_bytes(int(index.offsets[-1]), label_dtype)
  progress.write(f'{source.name}/{source.split}: {len(shapes)} examples '
                 f'decoded once, {total / 2**20:.1f} MiB in {where}.')

  def read():
    return tf.data.Dataset.range(source.num_examples).map(
        lookup, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  return dataclasses.replace(source, read=read, decode=source_lib.identity,
                             lookup=lookup)
