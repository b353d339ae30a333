"""Fake int8 quantization (kdseg.ops.fake_quant) against NumPy, in the
convolution seam, and in the trainer (`model.quantize`, a stage's
`quantize`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_tiny_config
from kdseg import build
from kdseg import config as config_lib
from kdseg import forward
from kdseg import main
from kdseg import stages as stages_lib
from kdseg import teachers as teachers_lib
from kdseg.ops import conv as conv_ops
from kdseg.ops import fake_quant


def _weights_numpy(kernel):
  scale = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(0) / 127.0
  return np.clip(np.round(kernel / scale), -127, 127) * scale


def _activations_numpy(x):
  lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
  scale = (hi - lo) / 255.0
  zero = np.round(-lo / scale)
  return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def test_weights_round_per_output_channel():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
  kernel[..., 2] *= 100.0  # One channel's range must not coarsen the others.
  got = np.asarray(fake_quant.weights_int8(jnp.asarray(kernel)))
  np.testing.assert_allclose(got, _weights_numpy(kernel), rtol=1e-6)
  for c in range(5):
    scale = np.abs(kernel[..., c]).max() / 127.0
    assert np.abs(got[..., c] - kernel[..., c]).max() <= scale / 2 + 1e-6
    levels = np.round(got[..., c] / scale)
    assert len(np.unique(levels)) <= 255 and np.abs(levels).max() == 127


def test_activations_round_over_the_batch_range_with_exact_zero():
  rng = np.random.default_rng(1)
  x = np.maximum(rng.normal(size=(2, 6, 7, 3)), 0).astype(np.float32)
  x[0, 0, 0, 0] = 0.0
  got = np.asarray(fake_quant.activations_int8(jnp.asarray(x)))
  np.testing.assert_allclose(got, _activations_numpy(x), rtol=1e-5,
                             atol=1e-7)
  assert got[0, 0, 0, 0] == 0.0
  assert len(np.unique(got)) <= 256
  assert np.abs(got - x).max() <= x.max() / 255 / 2 + 1e-6


def test_rounding_passes_gradients_straight_through():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  for fn in (fake_quant.weights_int8, fake_quant.activations_int8):
    grad = jax.grad(lambda v: jnp.sum(fn(v) * cotangent))(x)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(cotangent))


def test_convolutions_traced_inside_see_rounded_inputs_and_kernels():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 9, 9, 4)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)

  def convolve(a, k):
    return conv_ops.conv2d(a, k, padding=((1, 1), (1, 1)))

  # The mode is read at trace time, and jax.jit keeps one trace per function
  # and shapes: each call traces a function of its own.
  with fake_quant.quantizing('int8'):
    quantized = jax.jit(lambda a, k: convolve(a, k))(x, kernel)
  assert fake_quant.mode() == ''  # Restored on exit.
  plain = jax.jit(lambda a, k: convolve(a, k))(x, kernel)
  reference = jax.lax.conv_general_dilated(
      _activations_numpy(x), _weights_numpy(kernel), (1, 1),
      ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(np.asarray(quantized), np.asarray(reference),
                             rtol=1e-4, atol=1e-4)
  assert np.abs(np.asarray(quantized) - np.asarray(plain)).max() > 1e-3
  with pytest.raises(ValueError, match=r"Unknown quantization 'int4'"):
    with fake_quant.quantizing('int4'):
      pass


def test_stage_quantize_overrides_the_model_and_errors_name_the_key():
  config = make_tiny_config(**{'model.quantize': 'int8'})
  (stage,) = stages_lib.resolve(config)
  assert stage.quantize == 'int8'
  config.stages = ({'steps': 3, 'quantize': ''}, {})
  first, second = stages_lib.resolve(config)
  assert (first.quantize, second.quantize) == ('', 'int8')
  config.stages = ({'steps': 3}, {'quantize': 'int4'})
  with pytest.raises(ValueError, match=r"config\.stages\[1\]\.quantize: "
                     r"'int4'; valid: \['', 'int8'\]"):
    stages_lib.resolve(config)
  with pytest.raises(ValueError, match=r"config\.model\.quantize: 'fp8'"):
    config_lib.validate(make_tiny_config(**{'model.quantize': 'fp8'}))


def test_distillation_quantizes_the_student_and_not_the_teacher(
    tmp_path, monkeypatch):
  seen = {'student': set(), 'teacher': set()}
  student_apply = forward.student_apply
  teacher_forward = teachers_lib.TeacherSet.forward

  def record_student(*args, **kwargs):
    if kwargs.get('train'):  # Training steps; evaluation stays float.
      seen['student'].add(fake_quant.mode())
    return student_apply(*args, **kwargs)

  def record_teacher(self, *args, **kwargs):
    seen['teacher'].add(fake_quant.mode())
    return teacher_forward(self, *args, **kwargs)

  monkeypatch.setattr(forward, 'student_apply', record_student)
  monkeypatch.setattr(teachers_lib.TeacherSet, 'forward', record_teacher)
  teacher_dir = str(tmp_path / 'teacher')
  main.run(make_tiny_config(**{'model.name': 'tiny_deeplabv3',
                               'train.steps': 2}), teacher_dir)
  params = {}
  for quantize in ('', 'int8'):
    seen['student'].clear()
    seen['teacher'].clear()
    config = make_tiny_config(**{
        'mode': 'distill', 'teacher.checkpoint': teacher_dir,
        'model.quantize': quantize, 'train.steps': 2})
    workdir = str(tmp_path / f'q{quantize}')
    main.run(config, workdir)
    assert seen['student'] == {quantize}  # Every traced training forward.
    assert seen['teacher'] == {''}
    _, variables, _ = build.restore_student(config, workdir, 4)
    params = {**params, quantize: jax.device_get(variables['params'])}
  # Same seed, same batches: only the rounding differs.
  gaps = jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.abs(a - b).max()), params[''], params['int8']))
  assert max(gaps) > 1e-6
