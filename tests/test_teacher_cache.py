"""Tests of cached teacher logits (kdseg.teacher_cache) and their warp.

References: the image path of the same augmentation (tf.image.resize of a
coordinate image), NumPy loops over the warp's formula, and the online
teacher forward.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdseg import cache_teacher
from kdseg.config import defaults
from kdseg.data import decoded
from kdseg.data import pipeline
from kdseg.data import source as source_lib
from kdseg.data import tf_setup
from kdseg.data import transforms
from kdseg import forward
from kdseg import losses
from kdseg import models
from kdseg import teacher_cache
from kdseg import teachers
from kdseg import train_state
from kdseg import train_step

tf = tf_setup.import_tensorflow()


def _coordinate_image(h, w):
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  return np.stack([rows, cols, rows + cols], -1).astype(np.uint8)


@pytest.mark.parametrize('seed', range(6))
def test_warp_follows_the_image_exactly(seed):
  # Logits on the image's own grid whose values are the pixel coordinates:
  # warped, they must equal the augmented coordinate image (bilinear of a
  # linear function is exact; the image is rounded to uint8).
  h, w = 20, 24
  image = _coordinate_image(h, w)
  label = np.zeros((h, w), np.int32)
  out_image, out_label, out_logits = transforms.augment_train(
      tf.constant(image), tf.constant(label),
      seed=tf.constant([seed, 7], tf.int64), crop_size=(16, 18),
      scale_range=(0.5, 2.0), hflip=True, ignore_index=255,
      logits=tf.constant(image.astype(np.float16)), logits_size=(16, 18))
  inside = out_label.numpy() == 0
  assert inside.mean() > 0.2
  diff = np.abs(out_logits.numpy() - out_image.numpy().astype(np.float32))
  assert diff[inside].max() <= 0.5 + 1e-3


def _np_warp(logits, image_size, scaled_size, top, left, flip, crop, out):
  """The warp's formula with NumPy loops."""
  h, w, c = logits.shape
  result = np.zeros((*out, c))

  def coord(i, out_n, crop_n, offset, scaled_n, image_n, logits_n):
    crop_pos = (i + 0.5) * crop_n / out_n - 0.5
    image_pos = (crop_pos + offset + 0.5) * image_n / scaled_n - 0.5
    pos = (image_pos + 0.5) * logits_n / image_n - 0.5
    return min(max(pos, 0.0), logits_n - 1.0)

  for i in range(out[0]):
    for j in range(out[1]):
      jj = out[1] - 1 - j if flip else j
      y = coord(i, out[0], crop[0], top, scaled_size[0], image_size[0], h)
      x = coord(jj, out[1], crop[1], left, scaled_size[1], image_size[1], w)
      y0, x0 = int(np.floor(y)), int(np.floor(x))
      y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
      fy, fx = y - y0, x - x0
      result[i, j] = ((1 - fy) * (1 - fx) * logits[y0, x0] +
                      (1 - fy) * fx * logits[y0, x1] +
                      fy * (1 - fx) * logits[y1, x0] + fy * fx * logits[y1, x1])
  return result


@pytest.mark.parametrize('scaled,top,left,flip', [
    ((45, 60), 3, 20, False), ((45, 60), 10, 0, True),
    ((12, 17), 0, 0, True),  # Smaller than the crop: padded.
    ((90, 120), 41, 77, False)])
def test_warp_at_stride_matches_numpy(scaled, top, left, flip):
  logits = np.random.default_rng(0).normal(size=(4, 6, 3)).astype(np.float32)
  got = transforms.warp_logits(
      tf.constant(logits), image_size=tf.constant([30, 40]),
      scaled_size=tf.constant(scaled), top=tf.constant(top),
      left=tf.constant(left), flip=tf.constant(flip), crop_size=(24, 32),
      out_size=(3, 4)).numpy()
  want = _np_warp(logits, (30, 40), scaled, top, left, flip, (24, 32), (3, 4))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _source(n=6, size=32):
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  labels = rng.integers(0, 4, (n, size, size), dtype=np.uint8)
  return decoded.decode_once(source_lib.from_arrays(images, labels,
                                                    num_classes=4),
                             progress_bar=False)


def _teacher():
  model = models.create('tiny_deeplabv3', num_classes=4)
  variables = train_state.init_variables(model, jax.random.PRNGKey(0),
                                         (32, 32, 3))
  return model, variables


_SPEC = {'name': 'tiny_deeplabv3', 'options': {}, 'checkpoint': '/t',
         'step': 10, 'dtype': 'float32'}


def _no_augmentation_batch(source, lookup, size):
  return next(pipeline.build_train_dataset(
      source, batch_size=3, crop_size=(32, 32), seed=0, scale_range=(1, 1),
      hflip=False, teacher_logits=lookup, logits_size=size
  ).as_numpy_iterator())


def _cached(tmp_path, crop_size):
  """(source, teacher module, variables, lookup, logits size) of a cache."""
  source = _source()
  model, variables = _teacher()
  lookup, size, _ = teacher_cache.prepare(
      source, teacher_spec=_SPEC, teacher_module=model,
      teacher_variables=variables, teacher_dtype=jnp.float32,
      crop_size=crop_size, cache_dir=str(tmp_path), progress_bar=False)
  return source, model, variables, lookup, size


def test_cached_targets_equal_online_without_augmentation(tmp_path):
  source, model, variables, lookup, size = _cached(tmp_path, (32, 32))
  assert size == (4, 4)  # Output stride 8.
  batch = _no_augmentation_batch(source, lookup, size)
  online, _ = forward.make_teacher_forward(model, variables)(batch['image'])
  np.testing.assert_allclose(batch['teacher_logits'], online, rtol=2e-3,
                             atol=2e-3)  # float16 storage.
  # The first step's loss: the same from the cache as from the teacher.
  student = models.create('tiny_fcn', num_classes=4)
  config = defaults()
  config.loss.kd_weight = 1.0
  tx = __import__('optax').sgd(0.01)
  state = train_state.create_train_state(student, tx, jax.random.PRNGKey(1),
                                         (32, 32, 3))
  step = train_step.make_train_step(
      student, tx, lr_fn=lambda s: 0.01, temperature_fn=lambda s: 2.0,
      loss_config=config.loss, teachers=teachers.TeacherSet.single(model))
  run = jax.vmap(step, in_axes=(None, 0, None), out_axes=(None, None),
                 axis_name='data')
  one = lambda b: jax.tree.map(lambda x: jnp.asarray(x)[None], b)
  _, with_cache = run(state, one(batch), {'teacher': variables})
  no_cache = {k: v for k, v in batch.items() if k != 'teacher_logits'}
  _, online_metrics = run(state, one(no_cache), {'teacher': variables})
  assert with_cache['kd'] > 0
  np.testing.assert_allclose(with_cache['kd'], online_metrics['kd'],
                             rtol=2e-3)
  np.testing.assert_allclose(with_cache['loss'], online_metrics['loss'],
                             rtol=2e-3)


def test_augmented_targets_are_the_full_image_logits_warped(tmp_path):
  # The cache holds each example's full-image teacher logits: a pipeline fed
  # the cache and one fed logits computed here, online, on the whole images
  # give the same warped targets (the warp itself is checked above).
  source, model, variables, lookup, size = _cached(tmp_path, (24, 16))
  assert size == (3, 2)
  images = np.stack([source.lookup(tf.constant(i, tf.int64))['image'].numpy()
                     for i in range(6)])
  full, _ = forward.make_teacher_forward(model, variables)(
      ((images - np.array(transforms.MEAN_RGB)) /
       np.array(transforms.STDDEV_RGB)).astype(np.float32))
  online = tf.constant(np.asarray(full))
  options = dict(batch_size=6, crop_size=(24, 16), seed=5,
                 scale_range=(0.5, 2.0), logits_size=size)
  cached = list(pipeline.build_train_dataset(
      source, teacher_logits=lookup, **options).take(3).as_numpy_iterator())
  want = list(pipeline.build_train_dataset(
      source, teacher_logits=lambda i: tf.gather(online, i), **options
  ).take(3).as_numpy_iterator())
  for a, b in zip(cached, want):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
    assert a['teacher_logits'].shape == (6, 3, 2, 4)
    np.testing.assert_allclose(a['teacher_logits'], b['teacher_logits'],
                               rtol=2e-3, atol=2e-3)


def _counting(model, variables):
  calls = []
  fn = forward.make_teacher_forward(model, variables)

  def teacher_fn(images):
    calls.append(len(images))
    return fn(images)[0]

  return teacher_fn, calls


def test_stale_truncated_and_interrupted_caches(tmp_path):
  source = _source(n=11)
  model, variables = _teacher()
  teacher_fn, calls = _counting(model, variables)
  fp = teacher_cache.fingerprint(source)
  key = teacher_cache.cache_key(_SPEC, fp)
  folder = str(tmp_path / 'c')

  def failing(images):
    if sum(calls) >= 8:
      raise KeyboardInterrupt
    return teacher_fn(images)

  with pytest.raises(KeyboardInterrupt):
    teacher_cache.ensure(folder, key, source, failing, progress_bar=False)
  assert calls == [8] and not os.path.exists(os.path.join(folder, 'meta.json'))
  meta = teacher_cache.ensure(folder, key, source, teacher_fn,
                              progress_bar=False)
  assert calls == [8, 3]  # Resumed: only the last three examples.
  assert meta['num_examples'] == 11
  lookup = teacher_cache.lookup_fn(folder, meta)
  first = lookup(tf.constant(10, tf.int64)).numpy()
  # A complete cache is read, not rebuilt.
  teacher_cache.ensure(folder, key, source, teacher_fn, progress_bar=False)
  assert calls == [8, 3]
  # A truncated logits file is detected and rebuilt.
  path = os.path.join(folder, teacher_cache.LOGITS_FILE)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) - 10)
  meta = teacher_cache.ensure(folder, key, source, teacher_fn,
                              progress_bar=False)
  assert calls == [8, 3, 8, 3]
  np.testing.assert_array_equal(
      teacher_cache.lookup_fn(folder, meta)(tf.constant(10, tf.int64)).numpy(),
      first)
  # Another teacher step or other decoded data: another key.
  assert teacher_cache.cache_key({**_SPEC, 'step': 11}, fp) != key
  smaller = decoded.decode_once(source_lib.rescale(source, 0.5),
                                progress_bar=False)
  assert teacher_cache.fingerprint(smaller) != fp
  with open(os.path.join(folder, 'meta.json')) as f:
    assert json.load(f)['key'] == key


def test_trainer_distils_from_the_cache_and_refuses_features(tiny_config,
                                                             tmp_path):
  from kdseg import train as train_lib
  teacher_dir = str(tmp_path / 'teacher')
  train_lib.train(tiny_config(**{'model.name': 'tiny_deeplabv3',
                                 'train.steps': 2}), teacher_dir)
  config = tiny_config(mode='distill', **{
      'teacher.checkpoint': teacher_dir, 'teacher.cache': True,
      'teacher.cache_dir': str(tmp_path / 'cache'), 'train.steps': 2})
  result = train_lib.train(config, str(tmp_path / 'student'))
  assert result['step'] == 2
  (folder,) = os.listdir(tmp_path / 'cache')
  with open(tmp_path / 'cache' / folder / 'meta.json') as f:
    meta = json.load(f)
  assert meta['num_examples'] == 32
  # Mode cache_teacher finds the same cache (nothing rebuilt) and sizes it:
  # 32 examples of 4 x 4 logits (stride 8 on 32 x 32) x 4 classes x 2 bytes.
  config.mode = 'cache_teacher'
  report = cache_teacher.run(config, str(tmp_path / 'unused'))
  assert report['folder'] == str(tmp_path / 'cache' / folder)
  assert report['bytes'] == meta['bytes'] == 32 * 4 * 4 * 4 * 2
  config.mode = 'distill'
  config.loss.terms = {'pw': {'loss': 'pairwise'}}
  with pytest.raises(ValueError, match=r"teacher.cache: term 'pw' compares "
                     r"the teacher's 'head' features"):
    train_lib.train(config, str(tmp_path / 'student2'))
