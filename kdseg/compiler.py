"""XLA compiler options that kdseg passes to every function it compiles.

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

Options are per compilation (`jax.jit(..., compiler_options=...)`), not
process-wide flags, so importing kdseg changes nothing for other code. Use
`jit` below, or pass `options()` to your own `jax.jit`, to get the same
compilation kdseg's trainer uses.

They apply only when JAX's default backend is the CPU, only on the jaxlib
versions where they were measured (`MEASURED_JAXLIB`; XLA's default list and
its libraries change between releases), and only if the jaxlib accepts them
(checked once by compiling a trivial function). `KDSEG_CPU_COMPILER_OPTIONS`
chooses: 'auto' (the default, as just said), 'on' (on any jaxlib that
accepts them) or 'off' (XLA's defaults). An explicit
`--xla_cpu_experimental_ynn_fusion_type` in `XLA_FLAGS` is the user's
choice and kdseg then passes nothing.
"""

import functools
import os
from typing import Any, Callable, Optional

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


def eigen_convolutions() -> bool:
  """Whether convolutions compiled by kdseg now run in XLA's Eigen kernels.

  `kdseg.ops.conv` picks its CPU gradient formulation by this: the
  rewrites that avoid YNNPACK's slow weight gradient are slower than plain
  XLA once convolutions no longer go to YNNPACK.
  """
  return options() is not None


def jit(fun: Callable, **kwargs) -> Callable:
  """`jax.jit(fun, **kwargs)` with kdseg's compiler options for this backend."""
  return jax.jit(fun, compiler_options=options(), **kwargs)
