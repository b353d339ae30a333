"""Tests of kdseg.ops.conv: the 'fast' path against XLA and a NumPy loop."""

import itertools
import os
import subprocess
import sys

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from kdseg.ops import conv as conv_ops


def _xla_conv(x, kernel, strides, padding, dilation, groups):
  """Independent reference: plain XLA convolution, differentiated by JAX."""
  return lax.conv_general_dilated(
      x, kernel, window_strides=strides, padding=padding,
      rhs_dilation=dilation, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=groups)


def _fast_conv(x, kernel, strides, padding, dilation, groups):
  with conv_ops.implementation('fast'):
    return conv_ops.conv2d(x, kernel, strides=strides, padding=padding,
                           dilation=dilation, groups=groups)


def _value_and_grads(fn, x, kernel, dy, **kw):
  """Returns (y, dx, dw) of `fn` for the cotangent `dy`, under jit."""
  @jax.jit
  def run(x, kernel, dy):
    y, vjp = jax.vjp(lambda x, k: fn(x, k, **kw), x, kernel)
    return (y,) + vjp(dy)
  return run(x, kernel, dy)


def _inputs(seed, x_shape, k_shape, dtype=np.float32):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(x_shape).astype(dtype)
  k = (rng.standard_normal(k_shape) / np.sqrt(np.prod(k_shape[:3]))).astype(
      dtype)
  return jnp.asarray(x), jnp.asarray(k), rng


def _assert_close(actual, expected, tol):
  actual = np.asarray(actual, np.float32)
  expected = np.asarray(expected, np.float32)
  assert actual.shape == expected.shape
  # Relative to the largest magnitude: sums of many terms cancel locally.
  scale = max(np.abs(expected).max(), 1e-6)
  np.testing.assert_allclose(actual / scale, expected / scale, rtol=0,
                             atol=tol)


@pytest.fixture(params=['ynnpack', 'eigen'])
def regime(request, monkeypatch):
  """Which library XLA:CPU runs convolutions in, as `conv2d` sees it.

  The 'fast' formulation differs between the two (kdseg.compiler); both must
  give XLA's numbers whichever library then runs them.
  """
  monkeypatch.setattr(conv_ops.compiler, 'eigen_convolutions',
                      lambda: request.param == 'eigen')
  return request.param


def _use_strategy(kind, monkeypatch):
  """Forces the weight-gradient strategy named by `kind` ('dense-taps')."""
  if kind == 'dense-taps':
    monkeypatch.setattr(conv_ops, '_MAX_BLOCKED_CHANNELS', 0)


# Dense 3x3 and 7x7 kernels have two weight-gradient strategies ('blocked'
# XLA convolutions for few channels, per-tap matrix products otherwise); 1x1
# kernels always use the latter.
_GRID = [
    (ksize, stride, dilation, kind)
    for ksize in (1, 3, 7) for stride in (1, 2) for dilation in (1, 2)
    for kind in (('dense', 'depthwise') if ksize == 1 else
                 ('dense', 'dense-taps', 'depthwise'))
]


@pytest.mark.parametrize('ksize,stride,dilation,kind', _GRID)
def test_matches_xla(ksize, stride, dilation, kind, monkeypatch, regime):
  _use_strategy(kind, monkeypatch)
  b, h, w, cin = 2, 13, 11, 4
  groups = cin if kind == 'depthwise' else 1
  cout = 4 if kind == 'depthwise' else 6
  x, k, rng = _inputs(ksize * 100 + stride * 10 + dilation,
                      (b, h, w, cin), (ksize, ksize, cin // groups, cout))
  # Asymmetric padding, different on H and W.
  reach = dilation * (ksize - 1)
  padding = ((reach // 2, reach - reach // 2 + 1), (reach // 2 + 1, 0))
  kw = dict(strides=(stride, stride), padding=padding,
            dilation=(dilation, dilation), groups=groups)
  y_ref = jax.eval_shape(lambda x, k: _xla_conv(x, k, **kw), x, k)
  dy = jnp.asarray(rng.standard_normal(y_ref.shape).astype(np.float32))
  expected = _value_and_grads(_xla_conv, x, k, dy, **kw)
  actual = _value_and_grads(_fast_conv, x, k, dy, **kw)
  for name, a, e in zip(('y', 'dx', 'dw'), actual, expected):
    assert a.dtype == e.dtype, name
    _assert_close(a, e, 2e-6)


@pytest.mark.parametrize('batch,cin,cout,groups,padding', [
    (2, 4, 8, 2, ((1, 1), (1, 1))),  # general groups
    (2, 3, 6, 3, ((1, 0), (2, 1))),  # depthwise, channel multiplier 2
    (2, 4, 4, 1, ((-1, 2), (0, -1))),  # negative (cropping) padding
    (2, 4, 4, 4, ((6, 6), (6, 6))),  # ASPP-like: dilation beyond the image
    (18, 5, 20, 1, ((1, 1), (0, 2))),  # more than one block of examples/Cout
])
def test_matches_xla_special_cases(batch, cin, cout, groups, padding, regime):
  dilation = (6, 6) if padding[0][0] == 6 else (1, 2)
  x, k, rng = _inputs(cin * cout + groups, (batch, 7, 8, cin),
                      (3, 3, cin // groups, cout))
  kw = dict(strides=(1, 2), padding=padding, dilation=dilation, groups=groups)
  y_ref = jax.eval_shape(lambda x, k: _xla_conv(x, k, **kw), x, k)
  dy = jnp.asarray(rng.standard_normal(y_ref.shape).astype(np.float32))
  expected = _value_and_grads(_xla_conv, x, k, dy, **kw)
  actual = _value_and_grads(_fast_conv, x, k, dy, **kw)
  for a, e in zip(actual, expected):
    _assert_close(a, e, 2e-6)


def _numpy_conv_and_grads(x, k, dy, strides, padding, dilation, groups):
  """Direct loops over every output element: y, dx and dw in float64."""
  x, k, dy = (np.asarray(a, np.float64) for a in (x, k, dy))
  (pt, pb), (pl, pr) = padding
  xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  b, ho, wo, cout = dy.shape
  kh, kw, cin_g, _ = k.shape
  cout_g = cout // groups
  y = np.zeros(dy.shape)
  dxp = np.zeros(xp.shape)
  dw = np.zeros(k.shape)
  for n, oh, ow, o, i, j, c in itertools.product(
      range(b), range(ho), range(wo), range(cout), range(kh), range(kw),
      range(cin_g)):
    r = oh * strides[0] + i * dilation[0]
    s = ow * strides[1] + j * dilation[1]
    ch = (o // cout_g) * cin_g + c
    y[n, oh, ow, o] += xp[n, r, s, ch] * k[i, j, c, o]
    dxp[n, r, s, ch] += k[i, j, c, o] * dy[n, oh, ow, o]
    dw[i, j, c, o] += xp[n, r, s, ch] * dy[n, oh, ow, o]
  dx = dxp[:, pt:pt + x.shape[1], pl:pl + x.shape[2]]
  return y, dx, dw


def _assert_matches_numpy_loops(x, k, rng, **kw):
  """y, dx and dw of the fast path against `_numpy_conv_and_grads`."""
  y_shape = jax.eval_shape(lambda x, k: _xla_conv(x, k, **kw), x, k).shape
  dy = rng.standard_normal(y_shape).astype(np.float32)
  expected = _numpy_conv_and_grads(x, k, dy, **kw)
  actual = _value_and_grads(_fast_conv, x, k, jnp.asarray(dy), **kw)
  for a, e in zip(actual, expected):
    _assert_close(a, e, 1e-6)


@pytest.mark.parametrize('groups,cout', [(1, 3), (2, 2)],
                         ids=['dense', 'depthwise'])
def test_matches_numpy_loops(groups, cout, regime):
  x, k, rng = _inputs(7, (1, 7, 6, 2), (3, 3, 2 // groups, cout))
  _assert_matches_numpy_loops(
      x, k, rng, strides=(2, 1), padding=((1, 2), (0, 2)), dilation=(1, 2),
      groups=groups)


def _random_geometries(count, seed):
  """Random small convolutions, many with taps that read only padding."""
  rng = np.random.default_rng(seed)
  while count:
    size = [int(v) for v in rng.integers(1, 7, 2)]
    taps = [int(v) for v in rng.integers(1, 5, 2)]
    strides = [int(v) for v in rng.integers(1, 4, 2)]
    dilation = [int(v) for v in rng.integers(1, 9, 2)]
    padding = [tuple(int(p) for p in rng.integers(0, d * (t - 1) + 3, 2))
               for d, t in zip(dilation, taps)]
    if any(n + lo + hi - d * (t - 1) < 1 for n, (lo, hi), d, t in zip(
        size, padding, dilation, taps)):
      continue  # no output
    count -= 1
    yield size, taps, strides, dilation, padding


def test_drop_padding_taps_keeps_values_numpy():
  """Over random geometries, the reduced convolution equals the original.

  Both sides by NumPy loops. The two are equal as linear functions of (x,
  kernel), so their gradients are too (autodiff of the crop and slice maps
  them back).
  """
  dropped = 0
  for size, taps, strides, dilation, padding in _random_geometries(60, 0):
    x, k, _ = _inputs(1, (1, *size, 2), (*taps, 2, 1))
    spec = conv_ops._ConvSpec(strides=tuple(strides), padding=tuple(padding),
                              dilation=tuple(dilation), groups=1)
    x2, k2, spec2 = conv_ops.drop_padding_taps(x, k, spec)
    dropped += k2.shape[:2] != k.shape[:2]
    for p in spec2.padding:
      assert min(p) >= 0
    kw = dict(strides=strides, dilation=dilation, groups=1)
    ref_shape = jax.eval_shape(
        lambda x, k: _xla_conv(x, k, padding=padding, **kw), x, k).shape
    dy = np.zeros(ref_shape)
    expected = _numpy_conv_and_grads(x, k, dy, padding=padding, **kw)[0]
    actual = _numpy_conv_and_grads(x2, k2, dy, padding=spec2.padding,
                                   **kw)[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)
  assert dropped >= 20  # the geometry draw does exercise the reduction


def test_depthwise_input_grad_numpy():
  """The transposed depthwise convolution written out, against NumPy loops.

  Called directly, so that geometries with taps reading only padding (which
  `conv2d` would first remove) reach it too: padding beyond the kernel's
  reach makes it crop dy instead of padding it.
  """
  for size, taps, strides, dilation, padding in _random_geometries(40, 1):
    x, k, rng = _inputs(2, (2, *size, 3), (*taps, 1, 3))
    kw = dict(strides=tuple(strides), padding=tuple(padding),
              dilation=tuple(dilation), groups=3)
    y_shape = jax.eval_shape(lambda x, k: _xla_conv(x, k, **kw), x, k).shape
    dy = rng.standard_normal(y_shape).astype(np.float32)
    expected = _numpy_conv_and_grads(x, k, dy, **kw)[1]
    spec = conv_ops._ConvSpec(**kw)
    actual = conv_ops._depthwise_input_grad(jnp.asarray(dy), k, x.shape, spec)
    _assert_close(actual, expected, 1e-6)


@pytest.mark.parametrize('batch_first', [False, True],
                         ids=['one-sum', 'batch-first'])
def test_depthwise_fast_path_numpy(batch_first, monkeypatch, regime):
  """y, dx and dw of depthwise convolutions over random geometries.

  Both ways of summing the weight gradient: over all of (B, H', W') at once,
  or over the batch first (forced here; kdseg picks it for large maps).
  """
  monkeypatch.setattr(conv_ops, '_PARTIAL_SUM_MIN_BATCH',
                      1 if batch_first else 10**9)
  monkeypatch.setattr(conv_ops, '_PARTIAL_SUM_MAX_FLOATS', 10**9)
  for size, taps, strides, dilation, padding in _random_geometries(8, 2):
    x, k, rng = _inputs(3, (2, *size, 3), (*taps, 1, 3))
    _assert_matches_numpy_loops(x, k, rng, strides=tuple(strides),
                                padding=tuple(padding),
                                dilation=tuple(dilation), groups=3)
  # A channel multiplier of 2 (its input gradient is left to autodiff).
  x, k, rng = _inputs(4, (2, 5, 6, 2), (3, 3, 1, 4))
  _assert_matches_numpy_loops(x, k, rng, strides=(2, 1), padding=((1, 1),) * 2,
                              dilation=(1, 2), groups=2)


@pytest.mark.parametrize('groups', [1, 4])
def test_aspp_dilation_beyond_the_image(groups, regime):
  """DeepLabV3's ASPP at dilation 36 on a 32x32 map is its centre tap."""
  x, k, rng = _inputs(11, (2, 32, 32, 4), (3, 3, 4 // groups, 4))
  kw = dict(strides=(1, 1), padding=((36, 36), (36, 36)), dilation=(36, 36),
            groups=groups)
  jaxpr = jax.make_jaxpr(lambda x, k: _fast_conv(x, k, **kw))(x, k).jaxpr
  users = [e for e in jaxpr.eqns if jaxpr.invars[1] in e.invars]
  # The kernel is only read through its centre tap.
  assert [e.primitive.name for e in users] == ['slice']
  assert users[0].outvars[0].aval.shape == (1, 1, 4 // groups, 4)
  dy = jnp.asarray(rng.standard_normal((2, 32, 32, 4)).astype(np.float32))
  expected = _value_and_grads(_xla_conv, x, k, dy, **kw)
  actual = _value_and_grads(_fast_conv, x, k, dy, **kw)
  for a, e in zip(actual, expected):
    _assert_close(a, e, 2e-6)
  # Only the centre tap reads the image; the others get exactly zero.
  dw = np.asarray(actual[2])
  assert np.all(dw[[0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 2, 0, 2, 0, 1, 2]] == 0)
  assert np.abs(dw[1, 1]).min() > 0


@pytest.mark.parametrize('cin,groups', [(2, 1), (4, 2), (3, 3)],
                         ids=['dense', 'grouped', 'depthwise'])
def test_banded_matches_xla(cin, groups, monkeypatch, regime):
  """Every convolution with more than one band split into regions (forced),
  over random geometries, against XLA in value and both gradients.

  Half of them have stride 1, whose input gradient is a banded convolution
  of its own (`_banded_conv`); strided ones differentiate the regions.
  """
  monkeypatch.setattr(conv_ops, '_MAX_BANDED_FRACTION', 1.0)
  split = 0
  for n, (size, taps, strides, dilation, padding) in enumerate(
      _random_geometries(6, 10 + groups)):
    size = [s + 3 for s in size]
    strides = (1, 1) if n % 2 else strides
    x, k, rng = _inputs(n, (2, *size, cin), (*taps, cin // groups, 6))
    kw = dict(strides=strides, padding=padding, dilation=dilation,
              groups=groups)
    y_ref = jax.eval_shape(lambda x, k: _xla_conv(x, k, **kw), x, k)
    if y_ref.shape[1] * y_ref.shape[2] == 0:
      continue
    jaxpr = str(jax.make_jaxpr(lambda x, k: _fast_conv(x, k, **kw))(x, k))
    split += 'concatenate' in jaxpr
    dy = jnp.asarray(rng.standard_normal(y_ref.shape).astype(np.float32))
    expected = _value_and_grads(_xla_conv, x, k, dy, **kw)
    actual = _value_and_grads(_fast_conv, x, k, dy, **kw)
    for a, e in zip(actual, expected):
      _assert_close(a, e, 2e-6)
  assert split >= 3


@pytest.mark.parametrize('impl', ['xla', 'fast'])
def test_no_outputs(impl):
  """A kernel larger than the padded input gives an empty result."""
  x, k, _ = _inputs(0, (1, 2, 2, 1), (3, 3, 1, 1))
  with conv_ops.implementation(impl):
    y = conv_ops.conv2d(x, k)
  assert y.shape == (1, 0, 0, 1)


def test_banded_matches_numpy_loops(monkeypatch):
  monkeypatch.setattr(conv_ops, '_MAX_BANDED_FRACTION', 1.0)
  x, k, rng = _inputs(9, (1, 9, 8, 2), (3, 3, 2, 2))
  _assert_matches_numpy_loops(
      x, k, rng, strides=(2, 1), padding=((5, 4), (3, 6)), dilation=(4, 3),
      groups=1)


@pytest.mark.parametrize('size,dilation,split', [
    ((32, 32), 12, False),  # 56% of the products read the map: not worth it
    ((32, 32), 24, True),   # 25%
    ((45, 60), 24, True),   # 47%
    ((45, 60), 6, False),
])
def test_banded_only_where_it_pays(size, dilation, split):
  x = jax.ShapeDtypeStruct((1, *size, 8), jnp.float32)
  k = jax.ShapeDtypeStruct((3, 3, 8, 8), jnp.float32)
  pad = ((dilation, dilation), (dilation, dilation))
  jaxpr = str(jax.make_jaxpr(lambda x, k: _fast_conv(
      x, k, strides=(1, 1), padding=pad, dilation=(dilation, dilation),
      groups=1))(x, k))
  assert ('concatenate' in jaxpr) == split


@pytest.mark.parametrize('ksize,kind', [
    (3, 'dense'), (3, 'dense-taps'), (3, 'depthwise'), (1, 'dense')])
def test_bfloat16(ksize, kind, monkeypatch, regime):
  _use_strategy(kind, monkeypatch)
  groups = 8 if kind == 'depthwise' else 1
  x, k, rng = _inputs(3, (2, 12, 10, 8), (ksize, ksize, 8 // groups, 8))
  pad = ksize // 2
  kw = dict(strides=(1, 1), padding=((pad, pad), (2 * pad, 0)),
            dilation=(1, 1), groups=groups)
  dy = jnp.asarray(rng.standard_normal((2, 12, 10, 8)).astype(np.float32))
  bf = lambda a: a.astype(jnp.bfloat16)
  actual = _value_and_grads(_fast_conv, bf(x), bf(k), bf(dy), **kw)
  # Reference: float32 maths on the same (rounded) bfloat16 values.
  f32 = lambda a: bf(a).astype(jnp.float32)
  expected = _value_and_grads(_xla_conv, f32(x), f32(k), f32(dy), **kw)
  for a, e in zip(actual, expected):
    assert a.dtype == jnp.bfloat16
    # Float32 accumulation: only the final rounding to bfloat16 remains.
    _assert_close(a, e, 1e-2)


def test_jit_vmap_and_grad_of_sum(regime):
  x, k, _ = _inputs(5, (3, 2, 9, 9, 4), (3, 3, 4, 5))
  kw = dict(strides=(2, 2), padding=((1, 1), (1, 1)))

  def loss(conv, x, k):
    per_example = jax.vmap(lambda xi: conv(xi, k, dilation=(1, 1), groups=1,
                                           **kw))(x)
    return jnp.sum(jnp.tanh(per_example))

  expected = jax.jit(jax.grad(lambda x, k: loss(_xla_conv, x, k), (0, 1)))(
      x, k)
  actual = jax.jit(jax.grad(lambda x, k: loss(_fast_conv, x, k), (0, 1)))(
      x, k)
  for a, e in zip(actual, expected):
    _assert_close(a, e, 2e-6)


def _uses_custom_vjp(x, k, groups=1):
  pad = k.shape[0] // 2
  jaxpr = jax.make_jaxpr(lambda x, k: conv_ops.conv2d(
      x, k, padding=((pad, pad), (pad, pad)), groups=groups))(x, k)
  return 'custom_vjp' in str(jaxpr)


def test_implementation_switch(regime):
  x, k, _ = _inputs(0, (1, 5, 5, 2), (3, 3, 2, 2))
  k1 = k[:1, :1]
  kd = k[:, :, :1]
  with conv_ops.implementation('xla'):
    assert not _uses_custom_vjp(x, k)
    assert not _uses_custom_vjp(x, k1)
    assert not _uses_custom_vjp(x, kd, groups=2)
  with conv_ops.implementation('fast'):
    # Dense kxk convolutions need no rewrite once Eigen runs them.
    assert _uses_custom_vjp(x, k) == (regime == 'ynnpack')
    assert _uses_custom_vjp(x, k1)
    assert _uses_custom_vjp(x, kd, groups=2)
  with conv_ops.implementation('auto'):
    on_cpu = jax.default_backend() == 'cpu'
    assert _uses_custom_vjp(x, kd, groups=2) == on_cpu
    assert conv_ops.uses_fast_path() == on_cpu
  with pytest.raises(ValueError, match='Unknown conv2d implementation'):
    conv_ops.set_implementation('eigen')


def test_environment_variable():
  code = ('from kdseg.ops import conv; '
          'print(conv.get_implementation(), conv.uses_fast_path())')
  env = dict(os.environ, KDSEG_CONV_IMPL='xla', JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', code], env=env, check=True,
                       capture_output=True, text=True).stdout
  assert out.split() == ['xla', 'False']
