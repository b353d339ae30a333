"""Tests of kdseg.compiler: the XLA:CPU options kdseg compiles with."""

import re

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from kdseg import compiler
from kdseg import models
from kdseg import train_state

_ON_CPU = jax.default_backend() == 'cpu'
_ACCEPTED = _ON_CPU and compiler._accepted(
    tuple(sorted(compiler.CPU_OPTIONS.items())))
_MEASURED = compiler._jaxlib_version() in compiler.MEASURED_JAXLIB


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
  monkeypatch.delenv(compiler.ENV_VAR, raising=False)
  monkeypatch.setenv('XLA_FLAGS', '')


def _conv(x, k):
  return lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _ynn_fusions(fn, options, *args) -> int:
  """How many YNNPACK fusions XLA made of `fn(*args)`."""
  text = jax.jit(fn, compiler_options=options).lower(*args).compile().as_text()
  return len(re.findall(r'"kind":"__ynn_fusion"', text))


@pytest.mark.skipif(not _ON_CPU, reason='CPU compiler options')
def test_options_on_cpu():
  if _ACCEPTED and _MEASURED:
    assert compiler.options() == compiler.CPU_OPTIONS
    assert compiler.eigen_convolutions()
  else:
    # A jaxlib without the option: XLA's defaults, never a compile error.
    assert compiler.options() is None
    assert not compiler.eigen_convolutions()


@pytest.mark.skipif(not _ACCEPTED,
                    reason='this jaxlib does not take the YNNPACK option')
def test_options_move_convolutions_out_of_ynnpack():
  # The mechanism itself: XLA's default sends these convolutions to
  # YNNPACK; with kdseg's options none of them goes there.
  x = jnp.ones((2, 8, 8, 32))
  k = jnp.ones((3, 3, 32, 32))
  fn = jax.grad(lambda x, k: jnp.sum(_conv(x, k) ** 2), (0, 1))
  assert _ynn_fusions(fn, None, x, k) > 0
  assert _ynn_fusions(fn, compiler.CPU_OPTIONS, x, k) == 0


@pytest.mark.skipif(not _ACCEPTED,
                    reason='this jaxlib does not take the YNNPACK option')
@pytest.mark.parametrize('kind', ['reduce', 'dot'])
def test_options_keep_reductions_and_products_in_ynnpack(kind):
  # Only convolutions move: XLA's own reductions are about 2x slower.
  x = jnp.ones((64, 96, 128))
  if kind == 'reduce':
    fn = lambda x: jnp.sum(x * x, axis=(0, 1))
  else:
    fn = lambda x: jnp.einsum('abc,cd->abd', x, x[0].T)
  default = _ynn_fusions(fn, None, x)
  assert default > 0
  assert _ynn_fusions(fn, compiler.CPU_OPTIONS, x) == default


def test_unknown_options_are_refused_not_raised():
  assert not compiler._accepted(
      ((compiler.YNN_OPTION, 'LIBRARY_FUSION_TYPE_NO_SUCH_TYPE'),))
  assert not compiler._accepted((('xla_no_such_option_anywhere', '1'),))


@pytest.mark.skipif(not _ACCEPTED,
                    reason='this jaxlib does not take the YNNPACK option')
def test_auto_only_on_measured_jaxlib(monkeypatch):
  monkeypatch.setattr(compiler, '_jaxlib_version', lambda: (9, 99))
  assert compiler.options() is None
  monkeypatch.setenv(compiler.ENV_VAR, 'on')
  assert compiler.options() == compiler.CPU_OPTIONS
  monkeypatch.setattr(compiler, '_jaxlib_version', lambda: (0, 10))
  monkeypatch.setenv(compiler.ENV_VAR, 'auto')
  assert compiler.options() == compiler.CPU_OPTIONS


def test_off_switch(monkeypatch):
  monkeypatch.setenv(compiler.ENV_VAR, 'off')
  assert compiler.options() is None
  assert not compiler.eigen_convolutions()


def test_bad_setting_names_the_variable_and_choices(monkeypatch):
  monkeypatch.setenv(compiler.ENV_VAR, 'fastest')
  with pytest.raises(ValueError, match=r"KDSEG_CPU_COMPILER_OPTIONS='fastest'"
                     r".*\('auto', 'on', 'off'\)"):
    compiler.options()


def test_user_xla_flag_wins(monkeypatch):
  monkeypatch.setenv(
      'XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_'
      'INDIVIDUAL_CONVOLUTION')
  assert compiler.options() is None


@pytest.mark.skipif(not _ACCEPTED,
                    reason='this jaxlib does not take the YNNPACK option')
def test_same_numbers_either_way(monkeypatch):
  # A whole model's loss and gradients, with and without the options (and
  # with the conv formulation each implies): equal to float32 rounding.
  model = models.create('tiny_deeplabv3', num_classes=3, width=0.5)
  variables = train_state.init_variables(model, jax.random.PRNGKey(0),
                                         (24, 24, 3))
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 24, 24, 3))

  def loss(params):
    logits, _ = model.apply({'params': params,
                             'batch_stats': variables['batch_stats']},
                            images, train=False)
    return jnp.mean(jnp.tanh(logits))

  value_and_grad = jax.value_and_grad(loss)
  monkeypatch.setenv(compiler.ENV_VAR, 'on')
  assert compiler.eigen_convolutions()
  tuned = compiler.jit(value_and_grad)(variables['params'])
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(compiler.ENV_VAR, 'off')
    default = jax.jit(value_and_grad)(variables['params'])
  for a, b in zip(jax.tree.leaves(tuned), jax.tree.leaves(default)):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(np.abs(b).max(), 1e-6)
    np.testing.assert_allclose(a / scale, b / scale, rtol=0, atol=1e-5)
