"""2-D convolution used by every kdseg model (NHWC activations, HWIO kernels).

`conv2d` has the semantics of `lax.conv_general_dilated` with
`('NHWC', 'HWIO', 'NHWC')` dimension numbers, explicit padding, kernel
(rhs) dilation and `feature_group_count=groups`. Both of its implementations
first drop the kernel taps that read only zero padding for every output
(`drop_padding_taps`: large ASPP dilations on small feature maps), which is
exact and saves their work on every backend. The implementations:

* 'xla': `lax.conv_general_dilated`, differentiated by JAX. Right for GPU/TPU.
* 'fast': the same values, formulated for XLA:CPU (jax 0.10). What is fast
  there depends on which library runs the convolutions, which
  `kdseg.compiler` decides:
    - Eigen (kdseg's compiler options, the default on the CPU): dense kxk
      convolutions are plain XLA in all three passes; 1x1 convolutions keep
      XLA's forward and input gradient and compute the weight gradient as
      one matrix product (about 2x faster than XLA's); depthwise ones are
      rewritten as below (XLA runs them 10-40x slower).
    - YNNPACK (XLA's default; `KDSEG_CPU_COMPILER_OPTIONS=off`, or a jaxlib
      the options were not measured on): a `jax.custom_vjp` routes around its
      slow paths, as YNNPACK runs most weight gradients 3-10x and depthwise
      convolutions 5-10x slower than a forward convolution:
      - kxk dense convolutions keep XLA's forward and input gradient (fast) and
        replace the weight gradient by either
          * XLA's own weight-gradient convolution split into blocks of <= 16
            examples and <= 16 output channels, when Cin * Cout <= 128 * 128:
            XLA:CPU gives such small convolutions to Eigen, about 2x faster
            than YNNPACK on this shape; or
          * one matrix product per kernel tap (larger channel counts),
            `dw[i, j] = x_tap(i, j).reshape(-1, Cin)^T @ dy.reshape(-1, Cout)`,
            where `x_tap(i, j)` [B, H', W', Cin] is the strided window of the
            padded input that tap (i, j) reads;
      - 1x1 convolutions are matrix products in all three passes;
      - depthwise convolutions (`groups == Cin`) are sums over taps of shifted,
        per-channel scaled inputs (forward, and the input gradient as the
        transposed convolution: dy spread, padded once and summed over taps
        with the flipped kernel) and one multi-operand reduction over all
        taps (weight gradient; `_depthwise_weight_grad` says why);
      - other grouped convolutions use XLA's forward and input gradient and a
        per-tap, per-group matrix product for the weight gradient.
  Matrix products and reductions accumulate in float32 whatever the input
  dtype; results are cast back to the dtypes of `x` and `kernel`.
  In both, a convolution that would spend at least half of its products on
  zero padding (ASPP dilations 24 and 36 on 45x60 or smaller maps) is split
  into regions of outputs that read the input with the same taps, one
  unpadded convolution each (`_banded_forward`); at stride 1 its input
  gradient is split the same way (`_banded_conv`).

The default, 'auto', uses 'fast' when `jax.default_backend() == 'cpu'` and
'xla' elsewhere. Override it with `set_implementation`, the `implementation`
context manager, or the environment variable `KDSEG_CONV_IMPL` ('auto' |
'xla' | 'fast', read at import). The choice is made when a function is
traced: a function that `jax.jit` has already traced keeps the
implementation it was traced with.

Only first-order reverse-mode differentiation (`jax.grad`, `jax.vjp`) of the
'fast' path is supported, which is all that training needs; forward-mode
(`jax.jvp`, `jax.linearize`) and higher-order derivatives are not.
"""

import contextlib
import dataclasses
import functools
import os
from typing import Iterator, NamedTuple, Sequence

import jax
from jax import lax
import jax.numpy as jnp

from kdseg import compiler
from kdseg.ops import fake_quant

_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')
_IMPLEMENTATIONS = ('auto', 'xla', 'fast')


def _check_implementation(name: str) -> str:
  if name not in _IMPLEMENTATIONS:
    raise ValueError(f'Unknown conv2d implementation {name!r}; expected one '
                     f'of {_IMPLEMENTATIONS}.')
  return name


_implementation = _check_implementation(
    os.environ.get('KDSEG_CONV_IMPL', 'auto').strip().lower() or 'auto')


def set_implementation(name: str) -> None:
  """Selects 'auto' (fast path on CPU only), 'xla' or 'fast' for `conv2d`."""
  global _implementation
  _implementation = _check_implementation(name)


def get_implementation() -> str:
  """Returns the configured implementation name ('auto', 'xla' or 'fast')."""
  return _implementation


@contextlib.contextmanager
def implementation(name: str) -> Iterator[None]:
  """Context manager that sets the implementation and restores it on exit."""
  previous = get_implementation()
  set_implementation(name)
  try:
    yield
  finally:
    set_implementation(previous)


def uses_fast_path() -> bool:
  """Whether `conv2d` traced now would use the 'fast' implementation."""
  if _implementation == 'auto':
    return jax.default_backend() == 'cpu'
  return _implementation == 'fast'


@dataclasses.dataclass(frozen=True)
class _ConvSpec:
  """Static (hashable) convolution parameters."""
  strides: tuple[int, int]
  padding: tuple[tuple[int, int], tuple[int, int]]
  dilation: tuple[int, int]
  groups: int
  # Whether XLA runs convolutions in Eigen (kdseg's CPU compiler options,
  # `kdseg.compiler`) rather than YNNPACK: decided once per call so that the
  # forward and backward passes agree.
  eigen: bool = False


def conv2d(x: jax.Array, kernel: jax.Array, *, strides: Sequence[int] = (1, 1),
           padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0)),
           dilation: Sequence[int] = (1, 1), groups: int = 1) -> jax.Array:
  """Convolves `x` [B, H, W, Cin] with `kernel` [kh, kw, Cin // groups, Cout].

  Args:
    x: input activations [B, H, W, Cin].
    kernel: HWIO kernel [kh, kw, Cin // groups, Cout], same dtype as `x`.
    strides: (sh, sw) window strides.
    padding: ((pt, pb), (pl, pr)) explicit zero padding of H and W.
    dilation: (dh, dw) kernel (rhs) dilation.
    groups: feature groups; `groups == Cin` is a depthwise convolution.

  Returns:
    [B, H', W', Cout] with H' = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    and likewise W'.
  """
  # Quantization-aware training rounds what the convolution sees.
  x, kernel = fake_quant.apply(x, kernel)
  spec = _ConvSpec(
      strides=tuple(int(s) for s in strides),
      padding=tuple((int(lo), int(hi)) for lo, hi in padding),
      dilation=tuple(int(d) for d in dilation),
      groups=int(groups),
      eigen=compiler.eigen_convolutions())
  return _conv(x, kernel, spec)


def _conv(x: jax.Array, kernel: jax.Array, spec: _ConvSpec) -> jax.Array:
  x, kernel, spec = drop_padding_taps(x, kernel, spec)
  if not uses_fast_path():
    return _xla_conv(x, kernel, spec)
  bands = _bands_worth_splitting(x.shape, kernel.shape, spec)
  if bands is None:
    return _fast_dispatch(x, kernel, spec)
  if spec.strides == (1, 1):
    return _banded_conv(x, kernel, spec, bands)
  return _banded_forward(x, kernel, spec, bands)


def _fast_dispatch(x: jax.Array, kernel: jax.Array,
                   spec: _ConvSpec) -> jax.Array:
  """The 'fast' formulation of one convolution (module docstring)."""
  if spec.eigen and spec.groups == 1 and not _is_pointwise(kernel, spec):
    # Eigen's kxk convolutions are fast in all three passes.
    return _xla_conv(x, kernel, spec)
  # Shape/dtype validation with XLA's own error messages; also tells us the
  # output shape, and sends degenerate (empty) convolutions to XLA.
  out = jax.eval_shape(functools.partial(_xla_conv, spec=spec), x, kernel)
  if any(d == 0 for d in out.shape) or x.size == 0:
    return _xla_conv(x, kernel, spec)
  return _fast_conv(x, kernel, spec)


class _Band(NamedTuple):
  """Consecutive outputs along one axis that read the input with the same
  kernel taps: outputs [start, stop) read it with taps [first, last)."""
  start: int
  stop: int
  first: int
  last: int


def _bands(size: int, taps: int, stride: int, dilation: int, pad_lo: int,
           pad_hi: int) -> list[_Band]:
  """Splits one axis's outputs by which kernel taps read the input.

  Along an axis of `size` input positions, tap `i` of output `o` reads
  position `o * stride + i * dilation - pad_lo`; the taps that land inside
  the input form a contiguous range (positions grow with `i`), empty (0, 0)
  when an output reads only padding.
  """
  outputs = (size + pad_lo + pad_hi - dilation * (taps - 1) - 1) // stride + 1
  bands = []
  for o in range(max(outputs, 0)):
    reading = [i for i in range(taps)
               if 0 <= o * stride + i * dilation - pad_lo < size]
    first, last = (reading[0], reading[-1] + 1) if reading else (0, 0)
    if bands and bands[-1][2:] == (first, last):
      bands[-1] = bands[-1]._replace(stop=o + 1)
    else:
      bands.append(_Band(o, o + 1, first, last))
  return bands


def _reading_taps(size: int, taps: int, stride: int, dilation: int,
                  pad_lo: int, pad_hi: int) -> tuple[int, int]:
  """[first, last) hull of the taps that read the input for some output.

  (0, 0) when no tap ever reads it.
  """
  reading = [b for b in _bands(size, taps, stride, dilation, pad_lo, pad_hi)
             if b.last > b.first]
  if not reading:
    return (0, 0)
  return (min(b.first for b in reading), max(b.last for b in reading))


# Splitting a convolution into regions that each use only their reading taps
# pays when at most this fraction of its multiply-adds reads the input:
# measured on a 2-core AVX-512 CPU, DeepLabV3's ASPP (2048 -> 256, 3x3) ran
# 1.2x faster at 0.47 (45x60 map, dilation 24), 1.8x at 0.25 (32x32,
# dilation 24) and 2.5x at 0.28 (45x60, dilation 36), but no faster at 0.56
# (32x32, dilation 12): the smaller convolutions run less efficiently.
_MAX_BANDED_FRACTION = 0.5


def _bands_worth_splitting(x_shape: Sequence[int], kernel_shape: Sequence[int],
                           spec: _ConvSpec):
  """(row bands, column bands) if splitting saves enough work, else None."""
  axes = tuple(tuple(_bands(x_shape[1 + a], kernel_shape[a], spec.strides[a],
                             spec.dilation[a], *spec.padding[a]))
               for a in (0, 1))
  if len(axes[0]) * len(axes[1]) <= 1:
    return None  # one region, or no outputs at all
  fraction = 1.0
  for a, bands in enumerate(axes):
    outputs = bands[-1].stop
    reading = sum((b.stop - b.start) * (b.last - b.first) for b in bands)
    fraction *= reading / (outputs * kernel_shape[a])
  return axes if fraction <= _MAX_BANDED_FRACTION else None


def _banded_forward(x: jax.Array, kernel: jax.Array, spec: _ConvSpec,
                    bands: tuple[tuple[_Band, ...], tuple[_Band, ...]]
                    ) -> jax.Array:
  """The convolution as one unpadded convolution per (row, column) band.

  Each region's outputs read the input only with the taps of its band, so
  it convolves the input rows and columns those taps read with that part of
  the kernel and no padding: the same sums, without the products with zero
  padding. Regions that read only padding are zeros.
  """
  (sh, sw), (dh, dw) = spec.strides, spec.dilation
  (pt, _), (pl, _) = spec.padding
  unpadded = dataclasses.replace(spec, padding=((0, 0), (0, 0)))
  rows = []
  for r in bands[0]:
    cols = []
    for c in bands[1]:
      if r.first == r.last or c.first == c.last:
        cols.append(jnp.zeros(
            (x.shape[0], r.stop - r.start, c.stop - c.start, kernel.shape[3]),
            x.dtype))
        continue
      top = r.start * sh + r.first * dh - pt
      left = c.start * sw + c.first * dw - pl
      bottom = (r.stop - 1) * sh + (r.last - 1) * dh - pt + 1
      right = (c.stop - 1) * sw + (c.last - 1) * dw - pl + 1
      cols.append(_fast_dispatch(
          x[:, top:bottom, left:right],
          kernel[r.first:r.last, c.first:c.last], unpadded))
    rows.append(jnp.concatenate(cols, axis=2))
  return jnp.concatenate(rows, axis=1)


def _transposed_kernel(kernel: jax.Array, groups: int) -> jax.Array:
  """Kernel of the input gradient of a stride-1 convolution.

  [kh, kw, Cin/G, Cout] -> [kh, kw, Cout/G, Cin], flipped in space, with
  each group's input and output channels swapped.
  """
  kh, kw, cin_g, cout = kernel.shape
  k = kernel[::-1, ::-1].reshape(kh, kw, cin_g, groups, cout // groups)
  return k.transpose(0, 1, 4, 3, 2).reshape(kh, kw, cout // groups,
                                            groups * cin_g)


def _transposed_padding(x_shape: Sequence[int], kernel_shape: Sequence[int],
                        spec: _ConvSpec) -> list[tuple[int, int, int]]:
  """(lo, hi, interior) padding of dy, per spatial axis, for the input gradient.

  The input gradient is the stride-1 convolution, with the flipped kernel,
  of dy spread onto the input grid (`stride - 1` zeros between its pixels:
  the interior padding) and padded so that every input pixel sees the taps
  that read it. Negative values crop.
  """
  pads = []
  for axis in range(2):
    size, taps = x_shape[1 + axis], kernel_shape[axis]
    (lo, hi), stride = spec.padding[axis], spec.strides[axis]
    span = spec.dilation[axis] * (taps - 1)
    # Input pixels past the last window read nothing; their gradient is 0.
    unread = (size + lo + hi - span - 1) % stride
    pads.append((span - lo, span - hi + unread, stride - 1))
  return pads


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _banded_conv(x: jax.Array, kernel: jax.Array, spec: _ConvSpec,
                 bands) -> jax.Array:
  """`_banded_forward` of a stride-1 convolution, with a banded backward.

  Differentiating the regions would give each its own transposed
  convolution, padded by the dilation all round, i.e. the zero products
  back. The input gradient is instead the stride-1 convolution of `dy` with
  the transposed kernel, through `_conv`, which drops and bands its padding
  taps the same way; the weight gradient is the regions' own.
  """
  return _banded_forward(x, kernel, spec, bands)


def _banded_conv_fwd(x, kernel, spec, bands):
  return _banded_forward(x, kernel, spec, bands), (x, kernel)


def _banded_conv_bwd(spec, bands, residuals, dy):
  x, kernel = residuals
  # At stride 1 no zeros go between dy's pixels: only (lo, hi) matter.
  pads = _transposed_padding(x.shape, kernel.shape, spec)
  transposed = dataclasses.replace(
      spec, padding=tuple((lo, hi) for lo, hi, _ in pads))
  dx = _conv(dy, _transposed_kernel(kernel, spec.groups), transposed)
  _, kernel_vjp = jax.vjp(
      lambda k: _banded_forward(x, k, spec, bands), kernel)
  (dkernel,) = kernel_vjp(dy)
  return dx.astype(x.dtype), dkernel


_banded_conv.defvjp(_banded_conv_fwd, _banded_conv_bwd)


def drop_padding_taps(x: jax.Array, kernel: jax.Array, spec: _ConvSpec
                      ) -> tuple[jax.Array, jax.Array, _ConvSpec]:
  """Removes kernel rows and columns that only ever read zero padding.

  Large dilations on small feature maps make whole taps fall outside the
  image: DeepLabV3's ASPP at dilation 36 on the 32x32 features of a 256x256
  input reads the image with its centre tap only, so the 3x3 convolution is
  a 1x1 one and computing the rest multiplies zeros (about 9x the work).
  Dropping them is exact in value and in both gradients (the dropped taps'
  kernel gradient is zero, and autodiff of the slice puts zeros there).

  Returns `(x, kernel, spec)` for an equal convolution: the kernel cut to
  the hull of the taps that read the image, the padding reduced to match,
  and `x` cropped where the reduced padding would be negative (rows or
  columns that no remaining tap reads). Unchanged when every tap reads the
  image, or when none does.
  """
  kh, kw = kernel.shape[:2]
  axes = [_reading_taps(x.shape[1 + a], kernel.shape[a], spec.strides[a],
                        spec.dilation[a], *spec.padding[a]) for a in (0, 1)]
  if any(lo == hi for lo, hi in axes) or axes == [(0, kh), (0, kw)]:
    return x, kernel, spec
  kernel = kernel[axes[0][0]:axes[0][1], axes[1][0]:axes[1][1]]
  padding, crop_start, crop_stop = [], [0, 0, 0, 0], list(x.shape)
  for a, ((first, stop), (lo, hi)) in enumerate(zip(axes, spec.padding)):
    taps = (kh, kw)[a]
    lo -= first * spec.dilation[a]
    hi -= (taps - stop) * spec.dilation[a]
    # Negative padding would crop; do it on the input, where it is a slice.
    crop_start[1 + a], crop_stop[1 + a] = max(-lo, 0), x.shape[1 + a] - max(
        -hi, 0)
    padding.append((max(lo, 0), max(hi, 0)))
  x = lax.slice(x, crop_start, crop_stop)
  return x, kernel, dataclasses.replace(spec, padding=tuple(padding))


def _xla_conv(x: jax.Array, kernel: jax.Array, spec: _ConvSpec) -> jax.Array:
  return lax.conv_general_dilated(
      x, kernel, window_strides=spec.strides, padding=spec.padding,
      rhs_dilation=spec.dilation, dimension_numbers=_DIMENSION_NUMBERS,
      feature_group_count=spec.groups)


def _is_depthwise(x: jax.Array, spec: _ConvSpec) -> bool:
  return spec.groups > 1 and spec.groups == x.shape[-1]


# ---------------------------------------------------------------------------
# Tap geometry.


def _pad_input(x: jax.Array, spec: _ConvSpec) -> jax.Array:
  """Zero-pads H and W of `x` [B, H, W, C]; negative padding crops."""
  (pt, pb), (pl, pr) = spec.padding
  zero = jnp.zeros((), x.dtype)
  return lax.pad(x, zero, ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))


def _tap(xp: jax.Array, i: int, j: int, out_hw: tuple[int, int],
         spec: _ConvSpec) -> jax.Array:
  """Input window read by kernel tap (i, j).

  Args:
    xp: padded input [B, Hp, Wp, C].
    i: kernel row.
    j: kernel column.
    out_hw: output spatial size (H', W').
    spec: convolution parameters.

  Returns:
    [B, H', W', C]: `out[:, h, w] = xp[:, i * dh + h * sh, j * dw + w * sw]`.
  """
  (ho, wo), (sh, sw), (dh, dw) = out_hw, spec.strides, spec.dilation
  start = (0, i * dh, j * dw, 0)
  limit = (xp.shape[0], i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1,
           xp.shape[3])
  return lax.slice(xp, start, limit, (1, sh, sw, 1))


def _out_hw(x_shape: Sequence[int], kernel_shape: Sequence[int],
            spec: _ConvSpec) -> tuple[int, int]:
  out = jax.eval_shape(
      functools.partial(_xla_conv, spec=spec),
      jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32),
      jax.ShapeDtypeStruct(tuple(kernel_shape), jnp.float32))
  return out.shape[1], out.shape[2]


# ---------------------------------------------------------------------------
# Depthwise convolution as shifted multiply-adds.


def _depthwise_taps(x: jax.Array, kernel: jax.Array,
                    spec: _ConvSpec) -> jax.Array:
  """Depthwise convolution (`groups == Cin`) as a sum over kernel taps.

  Args:
    x: [B, H, W, C].
    kernel: [kh, kw, 1, C * m] (channel multiplier m; output channel
      `c * m + q` reads input channel c).
    spec: convolution parameters.

  Returns:
    [B, H', W', C * m] in float32 (the caller casts).
  """
  out_hw = _out_hw(x.shape, kernel.shape, spec)
  return _sum_taps(_pad_input(x.astype(jnp.float32), spec), kernel, out_hw,
                   spec)


def _sum_taps(xp: jax.Array, kernel: jax.Array, out_hw: tuple[int, int],
              spec: _ConvSpec) -> jax.Array:
  """`sum over taps (i, j) of tap(xp, i, j) * kernel[i, j]`, float32.

  Args:
    xp: padded input [B, Hp, Wp, C], float32.
    kernel: [kh, kw, 1, C * m].
    out_hw: output spatial size.
    spec: strides and dilation of the taps.
  """
  kh, kw, _, cout = kernel.shape
  c = xp.shape[-1]
  m = cout // c
  k = kernel.astype(jnp.float32).reshape(kh, kw, c, m)
  y = None
  for i in range(kh):
    for j in range(kw):
      t = _tap(xp, i, j, out_hw, spec)
      term = t * k[i, j, :, 0] if m == 1 else t[..., None] * k[i, j]
      y = term if y is None else y + term
  return y.reshape(*y.shape[:3], cout)


def _depthwise_input_grad(dy: jax.Array, kernel: jax.Array,
                          x_shape: Sequence[int],
                          spec: _ConvSpec) -> jax.Array:
  """d(loss)/dx [B, H, W, C] of a depthwise conv with multiplier 1, float32.

  The transposed convolution written out: dy is spread and padded once
  (`_transposed_padding`) and convolved at stride 1 with the flipped
  kernel. Autodiff of `_depthwise_taps` instead pads each tap's
  product to the input's size and adds the padded copies, evaluating every
  tap's padding and the producer of dy for every input pixel: 1.3-2.3x
  slower for a depthwise block's gradient (2-core AVX-512 CPU). (For a dy
  with no producer, autodiff's one fusion can be faster: BENCHMARKS.md.)
  """
  pads = _transposed_padding(x_shape, kernel.shape, spec)
  zero = jnp.zeros((), jnp.float32)
  dyp = lax.pad(dy.astype(jnp.float32), zero,
                ((0, 0, 0), pads[0], pads[1], (0, 0, 0)))
  unit_stride = dataclasses.replace(spec, strides=(1, 1))
  return _sum_taps(dyp, kernel[::-1, ::-1], tuple(x_shape[1:3]), unit_stride)


def _depthwise_weight_grad(x: jax.Array, dy: jax.Array,
                           kernel_shape: Sequence[int],
                           spec: _ConvSpec) -> jax.Array:
  """d(loss)/d(kernel) [kh, kw, 1, C * m] of a depthwise conv, in float32.

  One reduction over (B, H', W') with one operand per tap, `tap * dy`. A
  reduction of several operands stays in XLA's own loop, which reads x and
  dy once for all taps. One `jnp.sum` per tap instead goes to YNNPACK (kdseg's
  compiler options keep reductions there: `kdseg.compiler`), which needs each
  tap's product written out in full, and XLA recomputes the producer of dy
  (the batch-norm backward) for every one of them: up to 2.8x slower for a
  depthwise block's gradient, 15% slower for a whole MobileNetV3 (measured
  on a 2-core AVX-512 CPU). (An einsum would become a dot batched over
  channels, slower still.)

  XLA's loop is fastest when it keeps long rows and sums few of them: for
  the large feature maps of a network's early layers it sums over the batch
  only, keeping every tap's [H', W', C], and YNNPACK finishes the sum over
  H' and W' (see `_PARTIAL_SUM_*`).
  """
  kh, kw, _, cout = kernel_shape
  b, ho, wo, _ = dy.shape
  c = x.shape[-1]
  m = cout // c
  xp = _pad_input(x, spec).astype(jnp.float32)
  dy = dy.astype(jnp.float32)
  if m > 1:
    # [B, H', W', C, m] so that dy[..., c, q] pairs with input channel c.
    dy = dy.reshape(b, ho, wo, c, m)
  products = []
  for i in range(kh):
    for j in range(kw):
      t = _tap(xp, i, j, (ho, wo), spec)
      products.append((t[..., None] if m > 1 else t) * dy)
  zeros = [jnp.zeros((), jnp.float32)] * len(products)
  partial = (b >= _PARTIAL_SUM_MIN_BATCH and
             kh * kw * ho * wo * cout <= _PARTIAL_SUM_MAX_FLOATS)
  sums = lax.reduce(products, zeros,
                    lambda acc, new: tuple(u + v for u, v in zip(acc, new)),
                    (0,) if partial else (0, 1, 2))
  if partial:
    sums = [jnp.sum(s, axis=(0, 1)) for s in sums]
  return jnp.stack(sums).reshape(kh, kw, 1, cout)


# When `_depthwise_weight_grad` sums over the batch first: with at least this
# many examples (with fewer, the first sum would write out almost every
# product again), and while all taps' partial sums together hold at most this
# many floats. Measured on MobileNetV3 (batch 4, 256x256, 2-core AVX-512 CPU):
# 1.5-2.5x faster weight gradients for the 128x128 and 64x64 layers, slower
# for 32x32 layers with 5x5 kernels (3.1M floats) and beyond; 13% off the
# whole network's gradient.
_PARTIAL_SUM_MIN_BATCH = 4
_PARTIAL_SUM_MAX_FLOATS = 2_800_000


# ---------------------------------------------------------------------------
# Dense and grouped weight gradient.

# XLA:CPU hands a float32 convolution to YNNPACK unless its input and output
# feature counts are both <= 16, in which case Eigen runs it. JAX's
# weight-gradient convolution has the batch as input features and Cout as
# output features; YNNPACK runs it about 2x slower than these Eigen blocks
# (its window is the whole image). Blocks of <= 16 examples and <= 16 output
# channels keep it on Eigen. If a future XLA changes that rule, this degrades
# to about XLA's default speed, never to wrong results. (Used only when
# convolutions go to YNNPACK: see `kdseg.compiler`.)
_EIGEN_BLOCK = 16
# Up to this many Cin * Cout, the blocked XLA convolutions beat per-tap matrix
# products (measured on a 2-core AVX-512 CPU); above it the per-tap products
# are large enough to run near peak and win.
_MAX_BLOCKED_CHANNELS = 128 * 128


def _weight_grad_taps(x: jax.Array, dy: jax.Array,
                      kernel_shape: Sequence[int],
                      spec: _ConvSpec) -> jax.Array:
  """Weight gradient as one matrix product per kernel tap, in float32.

  Args:
    x: input [B, H, W, Cin].
    dy: output cotangent [B, H', W', Cout].
    kernel_shape: (kh, kw, Cin // G, Cout) for `spec.groups` G.
    spec: convolution parameters.

  Returns:
    [kh, kw, Cin // G, Cout].
  """
  kh, kw, cin_g, cout = kernel_shape
  g = spec.groups
  b, ho, wo, _ = dy.shape
  xp = _pad_input(x, spec)
  dy2 = dy.reshape(b * ho * wo, g, cout // g)
  taps = []
  for i in range(kh):
    for j in range(kw):
      t = _tap(xp, i, j, (ho, wo), spec).reshape(b * ho * wo, g, cin_g)
      if g == 1:
        dw = lax.dot_general(t[:, 0], dy2[:, 0], (((0,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)
      else:
        # [Cin/G, G, Cout/G] -> [Cin/G, Cout]: output channel g * (Cout/G) + o
        # belongs to group g.
        dw = jnp.einsum('pgc,pgo->cgo', t, dy2,
                        preferred_element_type=jnp.float32)
        dw = dw.reshape(cin_g, cout)
      taps.append(dw)
  return jnp.stack(taps).reshape(kh, kw, cin_g, cout)


def _weight_grad_blocked(x: jax.Array, dy: jax.Array,
                         kernel_shape: Sequence[int],
                         spec: _ConvSpec) -> jax.Array:
  """Weight gradient of a dense conv as XLA convolutions on small blocks.

  Args:
    x: input [B, H, W, Cin].
    dy: output cotangent [B, H', W', Cout].
    kernel_shape: (kh, kw, Cin, Cout).
    spec: convolution parameters (groups == 1).

  Returns:
    [kh, kw, Cin, Cout] in float32.
  """
  kh, kw, cin, cout = kernel_shape
  x = x.astype(jnp.float32)
  dy = dy.astype(jnp.float32)
  n = _EIGEN_BLOCK
  blocks = []
  for o in range(0, cout, n):
    block = None
    for b in range(0, x.shape[0], n):
      xb = x[b:b + n]
      kernel = jnp.zeros((kh, kw, cin, min(n, cout - o)), jnp.float32)
      _, vjp = jax.vjp(lambda k, xb=xb: _xla_conv(xb, k, spec), kernel)
      (dw,) = vjp(dy[b:b + n, ..., o:o + n])
      block = dw if block is None else block + dw
    blocks.append(block)
  return jnp.concatenate(blocks, axis=-1)


def _weight_grad(x: jax.Array, dy: jax.Array, kernel_shape: Sequence[int],
                 spec: _ConvSpec) -> jax.Array:
  """d(loss)/d(kernel) [kh, kw, Cin // G, Cout] for groups G < Cin, float32."""
  kh, kw, cin_g, cout = kernel_shape
  if (spec.groups == 1 and kh * kw > 1 and not spec.eigen and
      cin_g * cout <= _MAX_BLOCKED_CHANNELS):
    return _weight_grad_blocked(x, dy, kernel_shape, spec)
  return _weight_grad_taps(x, dy, kernel_shape, spec)


# ---------------------------------------------------------------------------
# The custom VJP.


def _is_pointwise(kernel: jax.Array, spec: _ConvSpec) -> bool:
  return kernel.shape[0] == kernel.shape[1] == 1 and spec.groups == 1


def _pointwise(x: jax.Array, kernel: jax.Array, spec: _ConvSpec) -> jax.Array:
  """1x1 convolution as a matrix product over the (strided) input pixels.

  XLA:CPU runs 1x1 convolutions as convolutions, up to 3x slower than the
  equivalent matrix product when Cin is large.

  Args:
    x: [B, H, W, Cin].
    kernel: [1, 1, Cin, Cout].
    spec: convolution parameters.

  Returns:
    [B, H', W', Cout] in the dtype of `x`.
  """
  out_hw = _out_hw(x.shape, kernel.shape, spec)
  t = _tap(_pad_input(x, spec), 0, 0, out_hw, spec)
  y = lax.dot_general(t, kernel[0, 0], (((3,), (0,)), ((), ())),
                      preferred_element_type=jnp.float32)
  return y.astype(x.dtype)


def _fast_forward(x: jax.Array, kernel: jax.Array,
                  spec: _ConvSpec) -> jax.Array:
  if _is_depthwise(x, spec):
    return _depthwise_taps(x, kernel, spec).astype(x.dtype)
  if _is_pointwise(kernel, spec) and not spec.eigen:
    return _pointwise(x, kernel, spec)
  return _xla_conv(x, kernel, spec)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fast_conv(x: jax.Array, kernel: jax.Array, spec: _ConvSpec) -> jax.Array:
  return _fast_forward(x, kernel, spec)


def _fast_conv_fwd(x, kernel, spec):
  return _fast_forward(x, kernel, spec), (x, kernel)


def _fast_conv_bwd(spec, residuals, dy):
  x, kernel = residuals
  if _is_depthwise(x, spec):
    if kernel.shape[-1] == x.shape[-1]:
      dx = _depthwise_input_grad(dy, kernel, x.shape, spec)
    else:  # Channel multipliers: rare, left to autodiff.
      _, vjp = jax.vjp(lambda x: _depthwise_taps(x, kernel, spec), x)
      (dx,) = vjp(dy.astype(jnp.float32))
    dw = _depthwise_weight_grad(x, dy, kernel.shape, spec)
  else:
    # XLA's transposed convolution is fast on CPU, except for 1x1 kernels
    # in YNNPACK, where a matrix product is faster still.
    pointwise = _is_pointwise(kernel, spec) and not spec.eigen
    forward = _pointwise if pointwise else _xla_conv
    _, vjp = jax.vjp(lambda x: forward(x, kernel, spec), x)
    (dx,) = vjp(dy)
    dw = _weight_grad(x, dy, kernel.shape, spec)
  return dx.astype(x.dtype), dw.astype(kernel.dtype)


_fast_conv.defvjp(_fast_conv_fwd, _fast_conv_bwd)
