"""`Source`: one split of a segmentation dataset, as the pipelines consume it.

A source yields *records* in a fixed order and knows how to decode a record
into an example `{'image': uint8 [H, W, 3], 'label': uint8/int32 [H, W]}`.
Keeping decoding separate lets the training pipeline shuffle and skip cheap
records (e.g. encoded PNG bytes from TFDS with `SkipDecoding`) and decode only
what it actually uses. Sources that can fetch record i directly (`lookup`) get
an exactly resumable pipeline with O(1) skipping; others are streamed.
"""

import dataclasses
from typing import Any, Callable, Optional, Sequence

import numpy as np

from kdseg.data import tf_setup

Record = Any  # A (nested) structure of tf.Tensors.


def identity(record: Record) -> Record:
  return record


@dataclasses.dataclass(frozen=True)
class Source:
  """One split of a segmentation dataset.

  Attributes:
    name: Dataset name, e.g. 'synthetic'.
    split: Split name, e.g. 'train'.
    num_examples: Number of records `read()` yields.
    num_classes: Number of valid classes; labels are in [0, num_classes) or
      equal to `ignore_index`.
    class_names: `num_classes` human-readable names.
    ignore_index: Label value of pixels that must not be scored.
    read: Returns a tf.data.Dataset of records, always in the same order.
    decode: Maps a record to an example dict {'image': uint8 [H, W, 3],
      'label': uint8 or int32 [H, W]}; traced by tf.data. Defaults to the
      identity (records are already examples).
    lookup: Optional random access: maps an int64 scalar tensor i to record i
      (the i-th record of `read()`); traced by tf.data.
  """
  name: str
  split: str
  num_examples: int
  num_classes: int
  class_names: tuple[str, ...]
  ignore_index: int
  read: Callable[[], Any]
  decode: Callable[[Record], dict[str, Any]] = identity
  lookup: Optional[Callable[[Any], Record]] = None

  def __post_init__(self):
    if len(self.class_names) != self.num_classes:
      raise ValueError(f'{len(self.class_names)} class names for '
                       f'{self.num_classes} classes.')
    if 0 <= self.ignore_index < self.num_classes:
      raise ValueError(f'ignore_index {self.ignore_index} is a valid class.')

  def as_dataset(self):
    """Returns a tf.data.Dataset of decoded examples in the source order."""
    tf = tf_setup.import_tensorflow()
    return self.read().map(self.decode, num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=True)


def _resized(source: Source, target_size: Callable[[Any], Any]) -> Source:
  """`source` with each example resized to `target_size(label_shape)`.

  Images bilinearly (antialiased when shrinking), labels by nearest
  neighbour, so no label value is invented.
  """

  def decode(record):
    tf = tf_setup.import_tensorflow()
    example = source.decode(record)
    image, label = example['image'], example['label']
    size = target_size(tf.shape(label)[:2])
    image = tf.image.resize(image, size, method='bilinear', antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    label = tf.image.resize(label[..., None], size, method='nearest')[..., 0]
    return {**example, 'image': image, 'label': label}

  return dataclasses.replace(source, decode=decode)


def rescale(source: Source, factor: float) -> Source:
  """The same split with every example resized by `factor` on decode.

  Used to train and evaluate at a lower resolution than the files (e.g.
  CamVid at half its 360x480 on a CPU); `factor=1` returns `source` itself.
  """
  if factor <= 0:
    raise ValueError(f'image scale must be positive, got {factor}.')
  if factor == 1:
    return source

  def target_size(shape):
    tf = tf_setup.import_tensorflow()
    return tf.cast(tf.round(tf.cast(shape, tf.float32) * factor), tf.int32)

  return _resized(source, target_size)


def resize(source: Source, size: Sequence[int]) -> Source:
  """The same split with every example resized to `size` (h, w) on decode.

  For data sets whose images vary in size (Oxford-IIIT Pet), so that they
  batch for evaluation; metrics are then computed at that size.
  """
  size = tuple(int(v) for v in size)
  if len(size) != 2 or min(size) <= 0:
    raise ValueError(f'image size must be two positive integers (h, w), '
                     f'got {size}.')
  return _resized(source, lambda shape: size)


def from_arrays(images: np.ndarray, labels: np.ndarray, *, num_classes: int,
                class_names: Optional[Sequence[str]] = None,
                ignore_index: int = 255, name: str = 'arrays',
                split: str = 'train') -> Source:
  """Wraps in-memory arrays (uint8 [N, H, W, 3], int [N, H, W]) as a Source.

  The arrays end up as constants in the tf.data graphs, so this is meant for
  small data sets (up to a few hundred MB).
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f'images must be uint8 [N, H, W, 3], got {images.dtype} '
                     f'{images.shape}.')
  if labels.shape != images.shape[:3]:
    raise ValueError(f'labels {labels.shape} do not match images '
                     f'{images.shape}.')
  if class_names is None:
    class_names = [f'class_{i}' for i in range(num_classes)]

  def read():
    tf = tf_setup.import_tensorflow()
    return tf.data.Dataset.from_tensor_slices({'image': images,
                                               'label': labels})

  def lookup(index):
    tf = tf_setup.import_tensorflow()
    return {'image': tf.gather(images, index),
            'label': tf.gather(labels, index)}

  return Source(name=name, split=split, num_examples=len(images),
                num_classes=num_classes, class_names=tuple(class_names),
                ignore_index=ignore_index, read=read, lookup=lookup)
