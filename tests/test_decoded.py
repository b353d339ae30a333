"""Tests of kdseg.data.decoded: decode once, in memory or on disk.

The reference is always the source read the old way (decoded on every read,
through `source.decode`), compared array for array.
"""

import dataclasses
import os

import numpy as np
import pytest

from kdseg import data
from kdseg.data import decoded
from kdseg.data import source as source_lib
from kdseg.data import tf_setup
from test_data import _assert_batches_equal  # pylint: disable=g-bad-import-order
from test_data import _take

tf = tf_setup.import_tensorflow()

# Both forms: in memory (a budget far above the data) and on disk (0).
FORMS = {'memory': 2**30, 'disk': 0}


def _varied_source(num_examples=7, ignore_index=255, num_classes=4):
  """Examples of different sizes, with a decode step that does real work.

  Records are (image, label) bytes, decoded by a reshape and a +1 on the
  labels, so a decode that were skipped or applied twice shows.
  """
  rng = np.random.default_rng(0)
  shapes = [(5 + i % 3, 6 + 2 * (i % 2)) for i in range(num_examples)]
  images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for h, w in shapes]
  labels = [rng.integers(0, num_classes - 1, (h, w), dtype=np.int32)
            for h, w in shapes]
  labels[2][0, 0] = ignore_index - 1  # Stored ignore_index - 1 -> ignored.

  def read():
    return tf.data.Dataset.from_generator(
        lambda: ({'image': im.tobytes(), 'label': lab.tobytes(),
                  'shape': np.array(im.shape[:2])}
                 for im, lab in zip(images, labels)),
        output_signature={'image': tf.TensorSpec([], tf.string),
                          'label': tf.TensorSpec([], tf.string),
                          'shape': tf.TensorSpec([2], tf.int64)})

  def decode(record):
    image_bytes, label_bytes, shape = (record['image'], record['label'],
                                       record['shape'])
    image = tf.reshape(tf.io.decode_raw(image_bytes, tf.uint8),
                       tf.concat([shape, [3]], 0))
    label = tf.reshape(tf.io.decode_raw(label_bytes, tf.int32), shape) + 1
    return {'image': image, 'label': label}

  source = source_lib.Source(
      name='varied', split='train', num_examples=num_examples,
      num_classes=num_classes,
      class_names=tuple(f'c{i}' for i in range(num_classes)),
      ignore_index=ignore_index, read=read, decode=decode)
  expected = [(im, lab + 1) for im, lab in zip(images, labels)]
  return source, expected


@pytest.mark.parametrize('form', FORMS)
def test_examples_equal_the_source_of_varied_sizes(form, tmp_path):
  source, expected = _varied_source()
  out = decoded.decode_once(source, memory_budget_bytes=FORMS[form],
                            cache_dir=str(tmp_path))
  assert out.lookup is not None
  assert (out.num_examples, out.num_classes, out.ignore_index) == (7, 4, 255)
  for i in (3, 0, 6, 2):
    example = out.lookup(tf.constant(i, tf.int64))
    np.testing.assert_array_equal(example['image'].numpy(), expected[i][0])
    np.testing.assert_array_equal(example['label'].numpy(), expected[i][1])
  read = list(out.as_dataset().as_numpy_iterator())
  assert len(read) == 7
  for (image, label), example in zip(expected, read):
    np.testing.assert_array_equal(example['image'], image)
    np.testing.assert_array_equal(example['label'], label)
  # Labels fit a byte (4 classes, ignore 255): stored as uint8.
  assert read[0]['label'].dtype == np.uint8
  # On disk only with a zero budget, in a fresh sub-folder of cache_dir.
  written = [f for _, _, files in os.walk(tmp_path) for f in files]
  assert sorted(written) == ([] if form == 'memory'
                             else ['images.u8', 'labels.bin'])


def test_wide_labels_stay_int32():
  source, expected = _varied_source(ignore_index=300, num_classes=4)
  out = decoded.decode_once(source, memory_budget_bytes=0)
  label = out.lookup(tf.constant(2, tf.int64))['label'].numpy()
  assert label.dtype == np.int32
  np.testing.assert_array_equal(label, expected[2][1])
  assert label[0, 0] == 300


@pytest.mark.parametrize('form', FORMS)
def test_training_batches_identical_and_resume(form, tmp_path):
  # A random-access source whose decode resizes (as image_scale does).
  images = np.random.default_rng(1).integers(0, 256, (20, 12, 16, 3),
                                             dtype=np.uint8)
  labels = (np.arange(20 * 12 * 16).reshape(20, 12, 16) % 3).astype(np.uint8)
  source = data.rescale(source_lib.from_arrays(images, labels, num_classes=3),
                        0.75)
  out = decoded.decode_once(source, memory_budget_bytes=FORMS[form],
                            cache_dir=str(tmp_path))
  options = dict(batch_size=3, crop_size=(8, 10), seed=4, photometric=True)
  before = _take(data.build_train_dataset(source, **options), 12)
  after = _take(data.build_train_dataset(out, **options), 12)
  _assert_batches_equal(before, after)
  # Several epochs (20 examples, 36 drawn) and a resumed pipeline.
  resumed = _take(data.build_train_dataset(out, start_step=5, **options), 7)
  _assert_batches_equal(resumed, after[5:])
  # Evaluation batches too.
  eval_before, n = data.build_eval_dataset(source, batch_size=6)
  eval_after, m = data.build_eval_dataset(out, batch_size=6)
  assert n == m == 20
  _assert_batches_equal(list(eval_before.as_numpy_iterator()),
                        list(eval_after.as_numpy_iterator()))


def test_streamed_source_becomes_random_access():
  images = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones(
      (1, 4, 4, 3), np.uint8)
  labels = np.zeros((6, 4, 4), np.uint8)
  source = dataclasses.replace(
      source_lib.from_arrays(images, labels, num_classes=2), lookup=None)
  out = decoded.decode_once(source)
  for i in (5, 1):
    np.testing.assert_array_equal(
        out.lookup(tf.constant(i, tf.int64))['image'].numpy(), images[i])
  # One epoch of the random-access path: every example exactly once.
  batch = _take(data.build_train_dataset(out, batch_size=6, crop_size=(4, 4),
                                         seed=0, scale_range=(1, 1)), 1)[0]
  pixels = batch['image'] * np.array(data.pipeline.STDDEV_RGB) + np.array(
      data.pipeline.MEAN_RGB)
  assert sorted(np.round(pixels[:, 0, 0, 0]).astype(int)) == list(range(6))


def test_bad_decode_and_budget_are_refused():
  images = np.zeros((2, 4, 4, 3), np.uint8)
  source = source_lib.from_arrays(images, np.zeros((2, 4, 4), np.uint8),
                                  num_classes=2)
  with pytest.raises(ValueError, match='memory budget'):
    decoded.decode_once(source, memory_budget_bytes=-1)
  as_float = dataclasses.replace(source, decode=lambda r: {
      'image': tf.cast(r['image'], tf.float32), 'label': r['label']})
  with pytest.raises(ValueError, match=r'example 0: decode must give uint8'):
    decoded.decode_once(as_float)
