r"""Times kdseg's conv2d implementations: forward, input and weight gradients.

For each convolution shape, prints the median wall time (ms) of

  fwd   y = conv2d(x, k)
  dx    the input gradient (vjp with respect to x only)
  dw    the weight gradient (vjp with respect to k only)
  v&g   jax.value_and_grad of sum(conv2d(x, k) * g) with respect to (x, k)

for three compilations, each jitted, after one warm-up call, with
`block_until_ready`:

  xla      plain JAX: `lax.conv_general_dilated` and XLA's default options
           (YNNPACK runs the convolutions), all taps computed;
  ynn+vjp  kdseg's 'fast' formulation for YNNPACK (custom VJP) with XLA's
           default options, i.e. `KDSEG_CPU_COMPILER_OPTIONS=off`;
  kdseg    what kdseg compiles by default: `kdseg.compiler.options()`
           (Eigen runs the convolutions) and the formulation for it.

The last two use `kdseg.ops.conv.conv2d`, which also leaves out the products
with zero padding when large dilations make them a large share (the ASPP
cases at dilation 24 and 36).

They run alternately so that background load affects all alike. The last
column checks that each gives XLA's weight gradient.

Usage:
  python benchmarks/conv_grad.py [--runs 5] [--cases 64,depthwise]
"""

import argparse
import os
import statistics
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kdseg import compiler
from kdseg.ops import conv as conv_ops

# name -> (conv2d implementation, KDSEG_CPU_COMPILER_OPTIONS)
VARIANTS = {'xla': ('xla', 'off'), 'ynn+vjp': ('fast', 'off'),
            'kdseg': ('fast', 'auto')}


class Case(NamedTuple):
  name: str
  x_shape: tuple[int, int, int, int]  # [B, H, W, Cin]
  cout: int
  ksize: int
  stride: int = 1
  dilation: int = 1
  depthwise: bool = False


CASES = (
    Case('3x3 64->64', (8, 90, 120, 64), 64, 3),
    Case('3x3 256->256', (8, 45, 60, 256), 256, 3),
    Case('3x3 256->256 dil 12 (ASPP)', (8, 45, 60, 256), 256, 3, dilation=12),
    Case('3x3 256->256 dil 24 (ASPP)', (8, 45, 60, 256), 256, 3, dilation=24),
    Case('3x3 256->256 dil 36 (ASPP)', (8, 45, 60, 256), 256, 3, dilation=36),
    Case('3x3/2 64->128', (8, 90, 120, 64), 128, 3, stride=2),
    Case('1x1 1024->256', (8, 45, 60, 1024), 256, 1),
    Case('3x3 depthwise 144', (8, 90, 120, 144), 144, 3, depthwise=True),
    # MobileNetV3-Large's (LR-ASPP) at 256x256, batch 4: its first strided
    # depthwise layer and its last, 5x5 at dilation 2.
    Case('3x3/2 depthwise 64', (4, 128, 128, 64), 64, 3, stride=2,
         depthwise=True),
    Case('5x5 depthwise 960 dil 2', (4, 16, 16, 960), 960, 5, dilation=2,
         depthwise=True),
    Case('7x7/2 stem 3->64', (8, 360, 480, 3), 64, 7, stride=2),
)


def _functions(case: Case, options,
               plain: bool) -> tuple[dict[str, Callable], tuple]:
  """Returns the four jitted quantities of one implementation and args.

  `plain`: `lax.conv_general_dilated` itself rather than kdseg's conv2d.
  """
  rng = np.random.default_rng(0)
  cin = case.x_shape[-1]
  groups = cin if case.depthwise else 1
  k_shape = (case.ksize, case.ksize, cin // groups, case.cout)
  x = jnp.asarray(rng.standard_normal(case.x_shape, np.float32))
  k = jnp.asarray(rng.standard_normal(k_shape, np.float32) * 0.05)
  pad = case.dilation * (case.ksize - 1) // 2
  kwargs = dict(strides=(case.stride,) * 2, padding=((pad, pad),) * 2,
                dilation=(case.dilation,) * 2, groups=groups)
  if plain:
    conv = lambda x, k: jax.lax.conv_general_dilated(
        x, k, kwargs['strides'], kwargs['padding'],
        rhs_dilation=kwargs['dilation'],
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)
  else:
    conv = lambda x, k: conv_ops.conv2d(x, k, **kwargs)
  y = jax.eval_shape(conv, x, k)
  g = jnp.asarray(rng.standard_normal(y.shape, np.float32))
  fns = {
      'fwd': lambda x, k, g: conv(x, k),
      'dx': lambda x, k, g: jax.vjp(lambda x: conv(x, k), x)[1](g)[0],
      'dw': lambda x, k, g: jax.vjp(lambda k: conv(x, k), k)[1](g)[0],
      'v&g': jax.value_and_grad(lambda x, k, g: jnp.sum(conv(x, k) * g),
                                argnums=(0, 1)),
  }
  return ({name: jax.jit(fn, compiler_options=options)
           for name, fn in fns.items()}, (x, k, g))


def _compiled(case: Case, variant: str):
  impl, setting = VARIANTS[variant]
  saved = os.environ.get(compiler.ENV_VAR)
  os.environ[compiler.ENV_VAR] = setting
  try:
    with conv_ops.implementation(impl):
      fns, args = _functions(case, compiler.options(), variant == 'xla')
      # Trace and compile now, while the implementation and setting hold.
      return {n: f.lower(*args).compile() for n, f in fns.items()}, args
  finally:
    if saved is None:
      del os.environ[compiler.ENV_VAR]
    else:
      os.environ[compiler.ENV_VAR] = saved


def _time(fn, args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) * 1e3


def run_case(case: Case, runs: int) -> None:
  compiled = {v: _compiled(case, v) for v in VARIANTS}
  medians = {}
  for name in ('fwd', 'dx', 'dw', 'v&g'):
    times = {v: [] for v in VARIANTS}
    for impl, (fns, args) in compiled.items():
      jax.block_until_ready(fns[name](*args))  # warm-up
    for _ in range(runs):
      for impl, (fns, args) in compiled.items():
        times[impl].append(_time(fns[name], args))
    medians[name] = {i: statistics.median(t) for i, t in times.items()}
  dw = {i: np.asarray(fns['dw'](*args)) for i, (fns, args) in compiled.items()}
  err = {v: np.abs(dw[v] - dw['xla']).max() / np.abs(dw['xla']).max()
         for v in VARIANTS}
  print(f'{case.name} x={list(case.x_shape)}')
  for v in VARIANTS:
    cells = ''.join(f'{medians[n][v]:9.1f}' for n in medians)
    note = '' if v == 'xla' else f'   dw max rel diff {err[v]:.1e}'
    print(f'  {v:8s}{cells}{note}')
  speedup = ''.join(f'{medians[n]["xla"] / medians[n]["kdseg"]:8.2f}x'
                    for n in medians)
  print(f'  {"xla/kdseg":8s}{speedup}', flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--runs', type=int, default=5,
                      help='timed runs per quantity and implementation')
  parser.add_argument('--cases', default='',
                      help='comma-separated substrings of case names')
  args = parser.parse_args()
  wanted = [s for s in args.cases.split(',') if s]
  cases = [c for c in CASES if not wanted or any(w in c.name for w in wanted)]
  print(f'jax {jax.__version__}, backend {jax.default_backend()}, '
        f'{os.cpu_count()} CPUs, XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}'
        f', load average {os.getloadavg()[0]:.2f}')
  print(f'kdseg compiler options: {compiler.options()}')
  print(f'median of {args.runs} runs, ms; float32\n'
        f'  {"":8s}{"fwd":>9s}{"dx":>9s}{"dw":>9s}{"v&g":>9s}')
  start = time.perf_counter()
  for case in cases:
    run_case(case, args.runs)
  print(f'total {time.perf_counter() - start:.0f} s, load average now '
        f'{os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  main()
