"""XLA compiler options that kdseg passes to the inference functions it compiles.

On the CPU, XLA (jax 0.10) hands float32 convolutions to the YNNPACK library
by default. YNNPACK runs them, and above all their weight gradients, 2-3x
slower than XLA's Eigen convolutions on the machines measured (see
BENCHMARKS.md): a DeepLabV3-ResNet50 forward pass takes about 2x longer and a
3x3 convolution's weight gradient about 3x longer. The compile option
`xla_cpu_experimental_ynn_fusion_type` lists the operation kinds that go to
YNNPACK. XLA's default list is matrix products, convolutions and reductions
(found by comparing compiled HLO); kdseg passes the same list without
convolutions. Reductions must stay: XLA's own reductions made a MobileNetV3
training step 2x slower.

Only inference compiles get them (`jit(..., inference=True)`: the frozen
teacher's forward pass, evaluation, prediction, the benchmark mode). With
convolutions in Eigen, XLA (jaxlib 0.10.2) computed wrong gradients for whole
ResNet models in train mode (batch statistics): against a float64 reference,
errors up to 28% of a gradient's largest entry for DeepLabV3-ResNet50 and
29% for DeepLabV3-ResNet18, where XLA's default options give 4e-4. Single
convolutions, small conv + batch-norm stacks and eval-mode models (values and
gradients) agree to float32 rounding. Until the cause is found, training
steps compile with XLA's defaults.

Options are per compilation (`jax.jit(..., compiler_options=...)`), not
process-wide flags, so importing kdseg changes nothing for other code.

They apply only when JAX's default backend is the CPU, only on the jaxlib
versions where they were measured (`MEASURED_JAXLIB`; XLA's default list and
its libraries change between releases), and only if the jaxlib accepts them
(checked once by compiling a trivial function). `KDSEG_CPU_COMPILER_OPTIONS`
chooses: 'auto' (the default, as just said), 'on' (on any jaxlib that
accepts them) or 'off' (XLA's defaults). An explicit
`--xla_cpu_experimental_ynn_fusion_type` in `XLA_FLAGS` is the user's
choice and kdseg then passes nothing.
"""

import contextlib
import functools
import os
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
from jaxlib import version as jaxlib_version

ENV_VAR = 'KDSEG_CPU_COMPILER_OPTIONS'
_CHOICES = ('auto', 'on', 'off')
# jaxlib (major, minor) releases whose XLA:CPU these options were measured on.
MEASURED_JAXLIB = ((0, 10),)
YNN_OPTION = 'xla_cpu_experimental_ynn_fusion_type'
# XLA's default list (jax 0.10.2) minus
# LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
CPU_OPTIONS = {YNN_OPTION: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,'
                           'LIBRARY_FUSION_TYPE_REDUCE'}


def _jaxlib_version() -> tuple[int, int]:
  major, minor = jaxlib_version.__version__.split('.')[:2]
  return int(major), int(minor)


def _setting() -> str:
  value = os.environ.get(ENV_VAR, 'auto').strip().lower() or 'auto'
  if value not in _CHOICES:
    raise ValueError(f'{ENV_VAR}={value!r} is not one of {_CHOICES}; unset it '
                     'or set it to one of them.')
  return value


@functools.lru_cache(maxsize=None)
def _accepted(items: tuple[tuple[str, str], ...]) -> bool:
  """Whether this jaxlib's CPU compiler takes these options."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(items)).lower(
        jnp.zeros((), jnp.float32)).compile()
  except Exception:  # pylint: disable=broad-except
    # An unknown option or enum value is an INVALID_ARGUMENT at compile
    # time; a jax without `compiler_options` raises TypeError. Either way:
    # compile with the defaults.
    return False
  return True


def options() -> Optional[dict[str, Any]]:
  """The compiler options for the default backend now, or None for none."""
  setting = _setting()
  if setting == 'off' or jax.default_backend() != 'cpu':
    return None
  if setting == 'auto' and _jaxlib_version() not in MEASURED_JAXLIB:
    return None
  if YNN_OPTION in os.environ.get('XLA_FLAGS', ''):
    return None
  if not _accepted(tuple(sorted(CPU_OPTIONS.items()))):
    return None
  return dict(CPU_OPTIONS)


# Set while `jit(..., inference=True)` traces a function it compiles with the
# options (tracing runs the Python function, in the calling thread).
_eigen_tracing = False


def eigen_convolutions() -> bool:
  """Whether the function being traced will run convolutions in Eigen.

  `kdseg.ops.conv` picks its CPU formulation by this: the rewrites that
  avoid YNNPACK's slow weight gradient are slower than plain XLA once
  convolutions no longer go to YNNPACK.
  """
  return _eigen_tracing


@contextlib.contextmanager
def tracing_for_eigen() -> Iterator[None]:
  """Marks functions traced inside as compiled with `options()`."""
  global _eigen_tracing
  previous, _eigen_tracing = _eigen_tracing, True
  try:
    yield
  finally:
    _eigen_tracing = previous


def jit(fun: Callable, *, inference: bool = False, **kwargs) -> Callable:
  """`jax.jit(fun, **kwargs)`; with kdseg's options if `inference`.

  Args:
    fun: the function to compile.
    inference: whether `fun` computes no gradients of models in train mode
      (see the module docstring for why only those get the options).
    **kwargs: passed to `jax.jit`.
  """
  compiler_options = options() if inference else None
  if compiler_options is None:
    return jax.jit(fun, **kwargs)

  @functools.wraps(fun)
  def traced(*args, **fun_kwargs):
    with tracing_for_eigen():
      return fun(*args, **fun_kwargs)

  return jax.jit(traced, compiler_options=compiler_options, **kwargs)
