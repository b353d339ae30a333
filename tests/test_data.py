"""Tests of kdseg.data: synthetic scenes, augmentation and tf.data pipelines."""

import dataclasses
import subprocess
import sys
import time

import numpy as np
import pytest

from kdseg import data
from kdseg.data import pipeline
from kdseg.data import source as source_lib
from kdseg.data import synthetic
from kdseg.data import tf_setup
from kdseg.data import transforms

tf = tf_setup.import_tensorflow()

IGNORE = 255


def _augment(image, label, seed=(1, 2), **kwargs):
  options = dict(crop_size=label.shape, scale_range=(1.0, 1.0), hflip=False,
                 ignore_index=IGNORE)
  options.update(kwargs)
  out_image, out_label = transforms.augment_train(
      tf.constant(image), tf.constant(label),
      seed=tf.constant(seed, tf.int64), **options)
  return out_image.numpy(), out_label.numpy()


def _indexed_source(num_examples, height=8, width=8):
  """Images whose every pixel is their index; labels are index % 3."""
  index = np.arange(num_examples)
  images = np.broadcast_to(index[:, None, None, None].astype(np.uint8),
                           (num_examples, height, width, 3))
  labels = np.broadcast_to((index % 3)[:, None, None].astype(np.uint8),
                           (num_examples, height, width))
  return source_lib.from_arrays(images, labels, num_classes=3)


def _stream_only(source):
  return dataclasses.replace(source, lookup=None)


def _example_indices(batch):
  """Recovers the example index of each row from normalised constant images."""
  pixels = batch['image'] * np.array(transforms.STDDEV_RGB) + np.array(
      transforms.MEAN_RGB)
  return np.round(pixels[:, 0, 0, 0]).astype(int).tolist()


def _take(ds, n):
  it = ds.as_numpy_iterator()
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


# ---------------------------------------------------------------- synthetic --


def test_tensorflow_is_lazy_and_gpu_free():
  code = ('import sys, kdseg.data; '
          'assert "tensorflow" not in sys.modules, "eager TF import"')
  subprocess.run([sys.executable, '-c', code], check=True)
  assert not tf.config.get_visible_devices('GPU')


def test_scenes_are_deterministic_per_seed():
  a = synthetic.make_scenes(6, seed=3)
  b = synthetic.make_scenes(6, seed=3)
  c = synthetic.make_scenes(6, seed=4)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])
  assert not np.array_equal(a[1], c[1])


def test_scene_depends_only_on_seed_and_index():
  images, labels = synthetic.make_scenes(6, seed=5)
  image, label = synthetic.make_scenes(1, seed=5, start=4)
  np.testing.assert_array_equal(image[0], images[4])
  np.testing.assert_array_equal(label[0], labels[4])
  image, label = synthetic.make_scene(2, seed=5)
  np.testing.assert_array_equal(image, images[2])
  np.testing.assert_array_equal(label, labels[2])


@pytest.mark.parametrize('height,width,num_classes', [(64, 64, 5),
                                                      (48, 80, 7), (32, 32, 2)])
def test_scene_shapes_dtypes_and_label_range(height, width, num_classes):
  images, labels = synthetic.make_scenes(
      20, height=height, width=width, num_classes=num_classes, seed=0)
  assert images.shape == (20, height, width, 3) and images.dtype == np.uint8
  assert labels.shape == (20, height, width) and labels.dtype == np.uint8
  assert labels.min() == 0 and labels.max() == num_classes - 1


def test_invalid_num_classes():
  with pytest.raises(ValueError, match='num_classes'):
    synthetic.make_scene(0, num_classes=len(synthetic.CLASS_NAMES) + 1)


def test_every_class_is_common():
  _, labels = synthetic.make_scenes(300, seed=0)
  num_classes = 5
  pixel_share = np.bincount(labels.ravel(), minlength=num_classes) / labels.size
  image_share = np.mean(
      [[(lab == k).any() for k in range(num_classes)] for lab in labels], 0)
  assert pixel_share[0] < 0.8
  assert (pixel_share[1:] > 0.04).all(), pixel_share
  assert (image_share[1:] > 0.4).all(), image_share
  assert len(synthetic.CLASS_NAMES) >= num_classes


def test_colour_alone_does_not_identify_the_class():
  """Per-pixel RGB classifiers fitted on one seed stay near chance on another.

  Class means should coincide and the class posteriors given a colour should
  be nearly flat; shape and texture are what identify a class.
  """
  num_classes = 5

  def pixels(seed):
    images, labels = synthetic.make_scenes(200, seed=seed)
    return images.reshape(-1, 3).astype(np.float64), labels.reshape(-1)

  x, y = pixels(0)
  x_test, y_test = pixels(1)
  means = np.stack([x[y == k].mean(0) for k in range(num_classes)])
  spread = min(x[y == k].std(0).mean() for k in range(num_classes))
  # Class mean colours are close together relative to the colour spread of
  # any single class (what is left is sampling noise: a class's mean averages
  # only a few hundred random instance colours).
  gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)
  assert gaps.max() < 0.5 * spread, (gaps.max(), spread)

  def balanced_accuracy(scores):
    pred = scores.argmax(1)
    return np.mean([(pred[y_test == k] == k).mean()
                    for k in range(num_classes)])

  # Nearest class mean colour and a per-class Gaussian (QDA) on RGB; chance
  # level is 1 / num_classes = 0.2.
  nearest_mean = -np.linalg.norm(x_test[:, None] - means[None], axis=-1)
  assert balanced_accuracy(nearest_mean) < 0.3
  log_likelihood = []
  for k in range(num_classes):
    cov = np.cov(x[y == k].T)
    d = x_test - means[k]
    log_likelihood.append(
        -0.5 * np.einsum('ni,ij,nj->n', d, np.linalg.inv(cov), d) -
        0.5 * np.linalg.slogdet(cov)[1])
  assert balanced_accuracy(np.stack(log_likelihood, 1)) < 0.45


def test_make_scenes_is_fast():
  start = time.perf_counter()
  synthetic.make_scenes(200, seed=0)
  assert time.perf_counter() - start < 2.0


# ----------------------------------------------------------------- registry --


def test_get_source_synthetic_splits():
  train = data.get_source('synthetic', 'train', num_examples=16, seed=1)
  val = data.get_source('synthetic', 'val', num_examples=8, seed=1)
  assert (train.num_examples, val.num_examples) == (16, 8)
  assert train.num_classes == 5 and train.ignore_index == IGNORE
  assert train.class_names == synthetic.CLASS_NAMES[:5]
  train_images = np.stack([ex['image'] for ex in
                           train.as_dataset().as_numpy_iterator()])
  val_images = np.stack([ex['image'] for ex in
                         val.as_dataset().as_numpy_iterator()])
  assert train_images.shape == (16, 64, 64, 3)
  # Splits are different streams; the same split and seed is reproducible.
  assert not np.array_equal(train_images[:8], val_images)
  again = data.get_source('synthetic', 'train', num_examples=16, seed=1)
  np.testing.assert_array_equal(
      next(again.as_dataset().as_numpy_iterator())['image'], train_images[0])


def test_get_source_errors():
  with pytest.raises(ValueError, match='synthetic'):
    data.get_source('nope', 'train')
  with pytest.raises(ValueError, match="'train', 'val'"):
    data.get_source('synthetic', 'test')


# ------------------------------------------------------------- augmentation --


def test_normalize_matches_hand_computed_values():
  image = np.array([[[0, 128, 255]]], np.uint8)
  out = transforms.normalize(tf.constant(image)).numpy()
  expected = [(0 - 123.675) / 58.395, (128 - 116.28) / 57.12,
              (255 - 103.53) / 57.375]
  np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)
  np.testing.assert_allclose(expected, [-2.1179039, 0.2051821, 2.64], atol=1e-6)
  assert out.dtype == np.float32


def test_augment_identity_at_scale_one_full_crop_no_flip():
  images, labels = synthetic.make_scenes(1, height=40, width=56, seed=0)
  image, label = _augment(images[0], labels[0], photometric=False)
  np.testing.assert_array_equal(image, images[0])
  np.testing.assert_array_equal(label, labels[0])
  assert image.dtype == np.uint8 and label.dtype == np.int32


def test_augment_flips_image_and_label_together():
  # The label is a function of the column (so of the red channel), and the
  # image is asymmetric: any misaligned flip breaks label == red // 64.
  width = 16
  red = np.broadcast_to(np.arange(width) * 16, (8, width)).astype(np.uint8)
  image = np.stack([red, np.zeros_like(red), np.full_like(red, 7)], -1)
  label = (red // 64).astype(np.uint8)
  flipped = 0
  for s in range(16):
    out_image, out_label = _augment(image, label, seed=(s, 0), hflip=True)
    np.testing.assert_array_equal(out_label, out_image[..., 0] // 64)
    if np.array_equal(out_image, image[:, ::-1]):
      flipped += 1
      np.testing.assert_array_equal(out_label, label[:, ::-1])
    else:
      np.testing.assert_array_equal(out_image, image)
      np.testing.assert_array_equal(out_label, label)
  assert 0 < flipped < 16


def test_augment_pads_with_ignore_index_and_mean():
  image = np.full((10, 12, 3), 200, np.uint8)
  label = np.ones((10, 12), np.uint8)
  for ignore in (IGNORE, 77):
    out_image, out_label = _augment(image, label, crop_size=(16, 20),
                                    ignore_index=ignore)
    assert out_label.shape == (16, 20)
    # Scale 1 and a crop larger than the image: the crop is the whole padded
    # image, padded at the bottom and right.
    np.testing.assert_array_equal(out_label[:10, :12], 1)
    assert (out_label[10:] == ignore).all()
    assert (out_label[:, 12:] == ignore).all()
    np.testing.assert_array_equal(out_image[:10, :12], 200)
    mean_pixel = np.round(transforms.MEAN_RGB).astype(np.uint8)
    np.testing.assert_array_equal(out_image[10:], np.broadcast_to(
        mean_pixel, (6, 20, 3)))


@pytest.mark.parametrize('crop_size', [(48, 40), (96, 96)])
def test_augment_shapes_and_label_values(crop_size):
  images, labels = synthetic.make_scenes(4, seed=2)
  for i in range(4):
    out_image, out_label = _augment(images[i], labels[i], seed=(i, 9),
                                    crop_size=crop_size,
                                    scale_range=(0.5, 2.0), hflip=True,
                                    photometric=True)
    assert out_image.shape == (*crop_size, 3) and out_image.dtype == np.uint8
    assert out_label.shape == crop_size and out_label.dtype == np.int32
    assert set(np.unique(out_label)) <= set(range(5)) | {IGNORE}


def test_augment_is_a_function_of_the_seed():
  images, labels = synthetic.make_scenes(1, seed=0)
  options = dict(crop_size=(40, 40), scale_range=(0.5, 2.0), hflip=True,
                 photometric=True)
  a = _augment(images[0], labels[0], seed=(3, 4), **options)
  b = _augment(images[0], labels[0], seed=(3, 4), **options)
  c = _augment(images[0], labels[0], seed=(3, 5), **options)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])


# ------------------------------------------------------------------- train --


@pytest.fixture(scope='module')
def synthetic_train():
  return data.get_source('synthetic', 'train', num_examples=24, height=32,
                         width=32)


def _train(source, **kwargs):
  options = dict(batch_size=5, crop_size=(24, 24), seed=0)
  options.update(kwargs)
  return pipeline.build_train_dataset(source, **options)


@pytest.mark.parametrize('random_access', [True, False])
def test_train_batches(synthetic_train, random_access):
  source = synthetic_train if random_access else _stream_only(synthetic_train)
  batch = _take(_train(source, photometric=True), 1)[0]
  assert batch['image'].shape == (5, 24, 24, 3)
  assert batch['image'].dtype == np.float32
  assert batch['label'].shape == (5, 24, 24)
  assert batch['label'].dtype == np.int32
  assert set(np.unique(batch['label'])) <= set(range(5)) | {IGNORE}
  assert abs(batch['image'].mean()) < 1.5  # Normalised.


@pytest.mark.parametrize('random_access', [True, False])
def test_train_determinism_and_exact_resume(synthetic_train, random_access):
  source = synthetic_train if random_access else _stream_only(synthetic_train)
  # 24 examples, batches of 5: batches straddle epochs, and step 7 starts in
  # the middle of the second epoch.
  fresh = _take(_train(source), 10)
  _assert_batches_equal(fresh, _take(_train(source), 10))
  for start_step in (3, 7):
    resumed = _take(_train(source, start_step=start_step), 10 - start_step)
    _assert_batches_equal(resumed, fresh[start_step:])
  other = _take(_train(source, seed=1), 1)[0]
  assert not np.array_equal(other['image'], fresh[0]['image'])


@pytest.mark.parametrize('random_access', [True, False])
def test_train_epochs_are_permutations(random_access):
  source = _indexed_source(12)
  source = source if random_access else _stream_only(source)
  batches = _take(_train(source, batch_size=4, crop_size=(8, 8),
                         scale_range=(1.0, 1.0), hflip=False), 9)
  order = sum((_example_indices(b) for b in batches), [])
  epochs = [order[i:i + 12] for i in range(0, 36, 12)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(12))
  assert epochs[0] != epochs[1] and epochs[0] != list(range(12))
  np.testing.assert_array_equal(
      batches[0]['label'][:, 0, 0], np.array(_example_indices(batches[0])) % 3)


@pytest.mark.parametrize('random_access', [True, False])
def test_train_processes_see_disjoint_covering_shards(random_access):
  source = _indexed_source(12)
  source = source if random_access else _stream_only(source)
  per_process = []
  for process_index in range(2):
    batches = _take(_train(source, batch_size=2, crop_size=(8, 8),
                           scale_range=(1.0, 1.0), hflip=False,
                           process_index=process_index, process_count=2), 6)
    order = sum((_example_indices(b) for b in batches), [])
    per_process.append([order[:6], order[6:]])  # Two epochs of 6.
  for epoch in range(2):
    a, b = per_process[0][epoch], per_process[1][epoch]
    assert len(set(a)) == 6 and len(set(b)) == 6
    assert not set(a) & set(b)
    assert set(a) | set(b) == set(range(12))


def test_train_rejects_bad_process_index(synthetic_train):
  with pytest.raises(ValueError, match='process_index'):
    _train(synthetic_train, process_index=2, process_count=2)


# -------------------------------------------------------------------- eval --


def test_eval_pads_last_batches_with_ignored_examples():
  source = _indexed_source(10, height=6, width=7)
  counts, seen = [], []
  for process_index in range(3):
    ds, num_real = pipeline.build_eval_dataset(
        source, batch_size=3, process_index=process_index, process_count=3)
    batches = list(ds.as_numpy_iterator())
    counts.append(len(batches))
    labels = np.concatenate([b['label'] for b in batches])
    indices = sum((_example_indices(b) for b in batches), [])
    assert labels.shape == (6, 6, 7) and labels.dtype == np.int32
    assert num_real == len(range(process_index, 10, 3))
    # Real examples first, in source order; then all-ignore padding.
    assert indices[:num_real] == list(range(process_index, 10, 3))
    np.testing.assert_array_equal(labels[:num_real, 0, 0],
                                  np.array(indices[:num_real]) % 3)
    assert (labels[num_real:] == IGNORE).all()
    seen += indices[:num_real]
  assert counts == [2, 2, 2]  # ceil(ceil(10 / 3) / 3) for every process.
  assert sorted(seen) == list(range(10))


def test_eval_full_resolution_and_pad_to():
  source = data.get_source('synthetic', 'val', num_examples=5, height=20,
                           width=30)
  images, labels = synthetic.make_scenes(
      5, height=20, width=30, seed=synthetic.split_seed(0, 'val'))
  ds, num_real = pipeline.build_eval_dataset(source, batch_size=4)
  batches = list(ds.as_numpy_iterator())
  assert num_real == 5 and len(batches) == 2
  np.testing.assert_allclose(
      batches[0]['image'], transforms.normalize(images[:4]).numpy())
  np.testing.assert_array_equal(batches[1]['label'][0], labels[4])
  assert (batches[1]['label'][1:] == IGNORE).all()

  ds, _ = pipeline.build_eval_dataset(source, batch_size=4, pad_to=(24, 32))
  batch = next(ds.as_numpy_iterator())
  assert batch['image'].shape == (4, 24, 32, 3)
  np.testing.assert_array_equal(batch['label'][:, :20, :30], labels[:4])
  assert (batch['label'][:, 20:] == IGNORE).all()
  assert (batch['label'][:, :, 30:] == IGNORE).all()
  np.testing.assert_allclose(batch['image'][:, 20:], 0, atol=0.01)
