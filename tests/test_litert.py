"""LiteRT (TFLite) models of the student: kdseg.litert and mode 'export'.

Tiny students at 32x32 are converted to float32 and full-integer int8
flatbuffers and run in the interpreter on synthetic scenes; their class maps
are compared with the JAX student's (`kdseg.inference.segment`).
"""

import functools
import json
import os

import jax
import numpy as np
import pytest

from conftest import make_tiny_config
from kdseg import checkpoint
from kdseg import config as config_lib
from kdseg.data import synthetic
from kdseg.data import tf_setup
from kdseg import inference
from kdseg import litert
from kdseg import main
from kdseg import models
from kdseg import optim
from kdseg import train_state
from kdseg.ops import conv

tf = tf_setup.import_tensorflow()

pytestmark = pytest.mark.skipif(
    not hasattr(getattr(tf, 'lite', None), 'TFLiteConverter'),
    reason='this TensorFlow build has no TFLite converter '
           '(tf.lite.TFLiteConverter), so no LiteRT model can be made')

SIZE = 32
NUM_CLASSES = 4
FLOAT32_MIN_AGREEMENT = 0.999
# Measured with the untrained tiny students of `_student` (seed 0, calibrated
# on 16 training scenes, 8 validation scenes): tiny_fcn 0.974, tiny_lraspp
# 0.986, tiny_deeplabv3 0.961 (with XLA's convolutions traced; 0.977, 0.988,
# 0.957 before); seeds 1 and 2: 0.924 to 0.997 (before). Untrained
# logits are close, so int8 rounding flips more pixels than in a trained
# student.
INT8_MIN_AGREEMENT = 0.90


def _scenes(split, num):
  return synthetic.make_scenes(num, height=SIZE, width=SIZE,
                               num_classes=NUM_CLASSES,
                               seed=synthetic.split_seed(0, split))


@functools.cache
def _student(name, seed=0):
  """A tiny student with NumPy-made variables (compiling its initialisers
  would take seconds): He-scaled kernels, small random biases, unit BN."""
  model = models.create(name, num_classes=NUM_CLASSES)
  images = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), np.float32)
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      scale = np.sqrt(2 / np.prod(leaf.shape[:-1]))
    elif name == 'bias':
      scale = 0.1
    else:  # BN statistics and scales: the identity.
      return np.full(leaf.shape, 1.0 if name in ('scale', 'var') else 0.0,
                     leaf.dtype)
    return (rng.normal(size=leaf.shape) * scale).astype(leaf.dtype)

  variables = jax.tree_util.tree_map_with_path(make, shapes)
  return model, {'params': variables['params'],
                 'batch_stats': variables.get('batch_stats', {})}


def _jax_classes(model, variables, images):
  return np.asarray(inference.jit_segment(model, variables, images))


def _signature(flatbuffer):
  interpreter = litert._interpreter(flatbuffer)  # pylint: disable=protected-access
  (source,), (target,) = (interpreter.get_input_details(),
                          interpreter.get_output_details())
  return (source['dtype'], tuple(source['shape']), target['dtype'],
          tuple(target['shape']))


@pytest.mark.parametrize('name', ['tiny_fcn', 'tiny_lraspp',
                                  'tiny_deeplabv3'])
def test_float32_and_int8_match_jax(name):
  model, variables = _student(name)
  calibration, _ = _scenes('train', 16)
  images, _ = _scenes('val', 8)
  expected = _jax_classes(model, variables, images)
  # Several classes, so that agreement is not won by a constant map.
  assert len(np.unique(expected)) >= 2
  agreement = {}
  for fmt in litert.FORMATS:
    flatbuffer = litert.convert(model, variables, size=(SIZE, SIZE), fmt=fmt,
                                calibration_images=calibration)
    assert _signature(flatbuffer) == (np.uint8, (1, SIZE, SIZE, 3),
                                      np.int32, (1, SIZE, SIZE))
    classes = litert.run(flatbuffer, images)
    assert classes.dtype == np.int32 and classes.shape == expected.shape
    agreement[fmt] = float(np.mean(classes == expected))
    if fmt == 'int8':
      # Only the cast of the uint8 input stays float.
      assert len(litert.float_tensors(flatbuffer)) == 1
  print(f'{name}: agreement {agreement}')
  assert agreement['float32'] >= FLOAT32_MIN_AGREEMENT
  assert agreement['int8'] >= INT8_MIN_AGREEMENT


def test_depthwise_convolutions_stay_whole_ops():
  # kdseg's CPU convolution formulation writes a depthwise convolution as
  # shifted products and sums; converted, each became its own int8 op,
  # rounded on its own, with the batch norm after it unfolded (a trained
  # CamVid student lost 14.5 mIoU points that way). LiteRT gets XLA's
  # grouped convolution instead, even where the fast path is switched on.
  model, variables = _student('tiny_lraspp')
  depthwise = [k for k in jax.tree.leaves(variables['params'])
               if k.ndim == 4 and k.shape[2] == 1 and k.shape[3] > 1]
  assert len(depthwise) == 5
  calibration, _ = _scenes('train', 16)
  with conv.implementation('fast'):
    flatbuffer = litert.convert(model, variables, size=(SIZE, SIZE),
                                fmt='int8', calibration_images=calibration)
  ops = litert.op_counts(flatbuffer)
  assert ops['DEPTHWISE_CONV_2D'] == len(depthwise), ops
  assert ops['STRIDED_SLICE'] == 0, ops  # No taps cut out of the input.


def test_bfloat16_student_converts_in_float32():
  # LiteRT has no bfloat16 convolutions: the model is converted computing in
  # float32, with the same (float32) weights. Measured: 0.997 of the pixels
  # equal the bfloat16 JAX student's.
  _, variables = _student('tiny_fcn')
  model = models.create('tiny_fcn', num_classes=NUM_CLASSES,
                        dtype=jax.numpy.bfloat16)
  images, _ = _scenes('val', 8)
  flatbuffer = litert.convert(model, variables, size=(SIZE, SIZE))
  classes = litert.run(flatbuffer, images)
  assert np.mean(classes == _jax_classes(model, variables, images)) >= 0.99


@pytest.mark.parametrize('padding', [((0, 0), (1, 1), (1, 1), (0, 0)),
                                     ((0, 0), (0, 2), (2, 1), (0, 0))])
def test_edge_padded_max_pool_equals_minus_inf_padding(padding):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 9, 3)) - 3.0
  params = dict(window_dimensions=(1, 3, 3, 1), window_strides=(1, 2, 2, 1),
                base_dilation=(1, 1, 1, 1), window_dilation=(1, 1, 1, 1))
  expected = jax.lax.reduce_window(x, -np.inf, jax.lax.max, padding=padding,
                                   **params)
  got = litert._edge_padded_max_pool(x, padding=padding, **params)  # pylint: disable=protected-access
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_int8_refuses_an_infinite_scale(monkeypatch):
  # Without the rewrite, the ResNet stem's -inf pool padding is what the
  # quantizer sees: the model must be refused, not written.
  monkeypatch.setattr(
      litert, '_edge_padded_max_pool',
      lambda x, **params: jax.lax.reduce_window_max_p.bind(x, **params))
  model, variables = _student('tiny_fcn')
  calibration, _ = _scenes('train', 4)
  with pytest.raises(ValueError, match='infinite constant'):
    litert.convert(model, variables, size=(SIZE, SIZE), fmt='int8',
                   calibration_images=calibration)


def test_int8_needs_uint8_calibration_images():
  model, variables = _student('tiny_fcn')
  with pytest.raises(ValueError, match='needs calibration_images'):
    litert.convert(model, variables, size=(SIZE, SIZE), fmt='int8')
  with pytest.raises(ValueError, match=r'calibration_images must be uint8'):
    litert.convert(model, variables, size=(SIZE, SIZE), fmt='int8',
                   calibration_images=np.zeros((2, SIZE, SIZE, 3), np.float32))


def _workdir_of(path, name):
  """A workdir whose checkpoint holds `_student(name)`'s variables."""
  config = make_tiny_config(**{'model.name': name})
  _, variables = _student(name)
  tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config))
  state = train_state.TrainState(
      step=np.int32(0), params=variables['params'],
      batch_stats=variables['batch_stats'],
      opt_state=tx.init(variables['params']), rng=jax.random.PRNGKey(3))
  manager = checkpoint.create_manager(path, async_save=False)
  checkpoint.save(manager, state, meta={'model': name}, miou=0.5)
  manager.close()
  return path, variables


def test_export_writes_and_checks_litert_models(tmp_path, capsys):
  # tiny_deeplabv3: a ResNet stem, so the -inf max pool is in the way.
  name = 'tiny_deeplabv3'
  workdir, variables = _workdir_of(str(tmp_path / 'run'), name)
  export_dir = str(tmp_path / 'export')
  config = make_tiny_config(**{
      'mode': 'export', 'model.name': name, 'export.dir': export_dir,
      'export.num_check_images': 4, 'export.calibration_images': 8})
  result = main.run(config, workdir)
  with open(os.path.join(workdir, 'export.json')) as f:
    assert json.load(f) == json.loads(json.dumps(result))

  entries = result['tflite']
  assert set(entries) == {'interpreter', 'float32', 'int8'}
  assert entries['int8']['calibration'] == {'split': 'train', 'images': 8}
  images, _ = _scenes('val', 4)  # The check's: the first of the val split.
  expected = _jax_classes(models.create(name, num_classes=NUM_CLASSES),
                          variables, images)
  for fmt in litert.FORMATS:
    entry = entries[fmt]
    assert entry['path'] == os.path.join(export_dir, f'student_{fmt}.tflite')
    assert os.path.getsize(entry['path']) == entry['bytes'] > 0
    # The recorded agreement is that of the written file on these images.
    classes = litert.run(entry['path'], images)
    assert entry['agreement'] == float(np.mean(classes == expected))
    assert 0.0 <= entry['miou'] <= 1.0
  assert entries['float32']['agreement'] >= FLOAT32_MIN_AGREEMENT
  assert entries['int8']['agreement'] >= INT8_MIN_AGREEMENT
  out = capsys.readouterr().out
  assert 'LiteRT float32 (student_float32.tflite' in out
  assert 'LiteRT int8 (student_int8.tflite' in out


def test_benchmark_times_the_litert_student(tmp_path, capsys):
  name = 'tiny_deeplabv3'
  workdir, variables = _workdir_of(str(tmp_path / 'run'), name)
  config = make_tiny_config(**{
      'mode': 'benchmark', 'model.name': name,
      'benchmark.models': ('student',), 'benchmark.resolution': (32, 48),
      'benchmark.warmup': 1, 'benchmark.steps': 3,
      'benchmark.litert': ('float32', 'int8')})
  result = main.run(config, workdir)
  on_device = result['litert']
  assert on_device['model'] == name and on_device['threads'] >= 1
  rows = on_device['rows']
  assert set(rows) == {'jax', 'litert_float32', 'litert_int8'}
  assert rows['jax']['size_bytes'] is None
  for row in rows.values():
    assert row['latency_ms_mean'] > 0
    assert row['images_per_s'] == pytest.approx(
        1e3 / row['latency_ms_mean'])
  # int8 weights take a quarter of float32's bytes: the file shrinks.
  float32 = litert.convert(models.create(name, num_classes=NUM_CLASSES),
                           variables, size=(32, 48))
  assert rows['litert_float32']['size_bytes'] == len(float32)
  assert 0 < rows['litert_int8']['size_bytes'] < len(float32)
  out = capsys.readouterr().out
  assert f'{name} at batch 1' in out and 'litert_int8' in out


def test_bad_tflite_format_is_a_config_error():
  assert tuple(config_lib.EXPORT_TFLITE) == litert.FORMATS
  config_lib.validate(make_tiny_config(**{'export.tflite': ()}))
  with pytest.raises(ValueError, match=(r"config\.export\.tflite: "
                                        r"\('float16',\); valid: .*"
                                        r"\['float32', 'int8'\]")):
    config_lib.validate(make_tiny_config(**{'export.tflite': ('float16',)}))
  with pytest.raises(ValueError, match=r"config\.benchmark\.litert: "):
    config_lib.validate(make_tiny_config(**{'benchmark.litert': ('fp8',)}))
