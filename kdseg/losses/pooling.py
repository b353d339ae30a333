"""Masked spatial pooling (ceil mode) for the relational losses.

Windows are `k x k` with stride k; a partial last window (when H or W is not
a multiple of k) pools what it covers, as PyTorch's `ceil_mode=True` does.
Masked-out pixels never reach a pooled value: a window is counted when any
of its pixels is, and pools only the counted ones.
"""

import jax
import jax.numpy as jnp

Array = jax.Array


def _pad_to_multiple(x: Array, window: tuple[int, int], value) -> Array:
  pad_h = -x.shape[1] % window[0]
  pad_w = -x.shape[2] % window[1]
  widths = [(0, 0), (0, pad_h), (0, pad_w)] + [(0, 0)] * (x.ndim - 3)
  return jnp.pad(x, widths, constant_values=value)


def _window_sum(x: Array, window: tuple[int, int]) -> Array:
  dims = (1, *window) + (1,) * (x.ndim - 3)
  return jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, dims, 'VALID')


def max_pool(x: Array, mask: Array, window: tuple[int, int]
             ) -> tuple[Array, Array]:
  """Masked max pooling (SKD's patch pooling).

  Args:
    x: [B, H, W, C] float32.
    mask: [B, H, W] float32 weights (> 0 counts).
    window: (kh, kw).

  Returns:
    ([B, ceil(H/kh), ceil(W/kw), C] maxima over counted pixels (0 in windows
    with none), [B, ceil(H/kh), ceil(W/kw)] 1/0 window mask).
  """
  counted = mask > 0
  x = jnp.where(counted[..., None], x, -jnp.inf)
  x = _pad_to_multiple(x, window, -jnp.inf)
  dims = (1, *window, 1)
  pooled = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, dims,
                                 'VALID')
  valid = _window_sum(_pad_to_multiple(counted.astype(jnp.float32), window, 0),
                      window) > 0
  return jnp.where(valid[..., None], pooled, 0.0), valid.astype(jnp.float32)


def avg_pool(x: Array, mask: Array, window: tuple[int, int]
             ) -> tuple[Array, Array]:
  """Masked average pooling (CIRKD's optional 2x2 pooling).

  Each window averages its counted pixels, weighted by `mask`; a partial
  window divides by the pixels it covers (PyTorch ceil mode, no padding).
  Returns pooled features and the 1/0 window mask, as `max_pool`.
  """
  weight = _pad_to_multiple(mask, window, 0.0)
  total = _window_sum(_pad_to_multiple(x, window, 0.0) * weight[..., None],
                      window)
  count = _window_sum(weight, window)
  pooled = total / jnp.maximum(count, 1e-12)[..., None]
  return pooled, (count > 0).astype(jnp.float32)
