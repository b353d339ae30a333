"""Fake int8 quantization in the convolution seam, for quantization-aware
training (`model.quantize = 'int8'`, or a stage's `quantize`).

While `quantizing('int8')` is active at trace time, every convolution
(`kdseg.ops.conv.conv2d`) sees:

- its kernel rounded to int8 per output channel, symmetric (scale
  max|w| / 127 over the channel's taps), as LiteRT quantizes convolution
  weights. Batch norm folded into the kernel scales each output channel by
  one factor, which per-channel scales absorb exactly, so quantizing the
  unfolded kernel rounds the same values as LiteRT does after folding;
- its input rounded to 256 levels per tensor, asymmetric, over the range
  [min(x, 0), max(x, 0)] of the batch itself (LiteRT calibrates a fixed
  range on sample images instead; the batch range is the stateless stand-in).

The mode is read when a function is traced: jax.jit reuses a trace made
outside the context, so the trainer builds each stage's step afresh (a
function of its own) inside it. Evaluation and export run the float model.

Rounding passes gradients straight through (the straight-through
estimator): the forward pass sees the quantized values, the backward pass
treats rounding as the identity. Other operations (additions, resizes,
pooling) stay float here, although LiteRT's int8 model quantizes them too.
"""

import contextlib
import contextvars
from typing import Iterator

import jax
import jax.numpy as jnp

MODES = ('', 'int8')
_MODE = contextvars.ContextVar('kdseg_fake_quant', default='')


@contextlib.contextmanager
def quantizing(mode: str) -> Iterator[None]:
  """Convolutions traced inside fake-quantize as `mode` ('' : not at all)."""
  if mode not in MODES:
    raise ValueError(f'Unknown quantization {mode!r}; valid: {list(MODES)}.')
  token = _MODE.set(mode)
  try:
    yield
  finally:
    _MODE.reset(token)


def mode() -> str:
  """The active mode at trace time ('' when none)."""
  return _MODE.get()


def _straight_through(x: jax.Array, rounded: jax.Array) -> jax.Array:
  return x + jax.lax.stop_gradient(rounded - x)


def weights_int8(kernel: jax.Array) -> jax.Array:
  """`kernel` [..., Cout] rounded to symmetric int8 per output channel."""
  axes = tuple(range(kernel.ndim - 1))
  scale = jnp.max(jnp.abs(kernel), axis=axes, keepdims=True) / 127.0
  scale = jax.lax.stop_gradient(jnp.where(scale > 0, scale, 1.0))
  rounded = jnp.clip(jnp.round(kernel / scale), -127, 127) * scale
  return _straight_through(kernel, rounded)


def activations_int8(x: jax.Array) -> jax.Array:
  """`x` rounded to 256 levels over [min(x, 0), max(x, 0)], one range for
  the whole tensor, with zero exactly representable."""
  lo = jax.lax.stop_gradient(jnp.minimum(jnp.min(x), 0.0))
  hi = jax.lax.stop_gradient(jnp.maximum(jnp.max(x), 0.0))
  scale = jnp.where(hi > lo, (hi - lo) / 255.0, 1.0)
  zero_point = jnp.round(-lo / scale)
  levels = jnp.clip(jnp.round(x / scale) + zero_point, 0, 255)
  return _straight_through(x, (levels - zero_point) * scale)


def apply(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(input, kernel) as a convolution traced now should see them."""
  if _MODE.get() == 'int8':
    dtype = x.dtype
    x = activations_int8(x.astype(jnp.float32)).astype(dtype)
    kernel = weights_int8(kernel.astype(jnp.float32)).astype(kernel.dtype)
  return x, kernel
