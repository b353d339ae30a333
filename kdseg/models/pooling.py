"""2x2 max pooling that remembers where the maxima were, and its inverse.

SegNet's decoder up-samples by writing each pooled value back at the position
its maximum came from ("max-unpooling"). PyTorch stores that position as a
flat index into the H*W plane; for non-overlapping 2x2 windows the position
inside the window (0..3, row-major) carries the same information, is cheaper
to gather/scatter, and is what these functions use.
"""

import jax
import jax.numpy as jnp

Array = jax.Array


def _check_even(x: Array) -> None:
  if x.ndim != 4 or x.shape[1] % 2 or x.shape[2] % 2:
    raise ValueError('2x2 max pooling needs [B, H, W, C] with even H and W; '
                     f'got shape {tuple(x.shape)}.')


def max_pool_2x2_with_indices(x: Array) -> tuple[Array, Array]:
  """Max-pools `x` [B, H, W, C] with 2x2 windows and stride 2.

  Returns:
    pooled: [B, H/2, W/2, C].
    indices: int32 [B, H/2, W/2, C], the position of each maximum inside its
      window, `2 * row + col`. Ties resolve to the first position in row-major
      order, like PyTorch's `MaxPool2d(return_indices=True)`.
  """
  _check_even(x)
  b, h, w, c = x.shape
  # [B, h/2, 2, w/2, 2, C] -> [B, h/2, w/2, C, 4] with window positions last.
  windows = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
  windows = windows.reshape(b, h // 2, w // 2, c, 4)
  indices = jnp.argmax(windows, axis=-1).astype(jnp.int32)
  pooled = jnp.take_along_axis(windows, indices[..., None], axis=-1)[..., 0]
  return pooled, indices


def max_unpool_2x2(x: Array, indices: Array) -> Array:
  """Inverse of `max_pool_2x2_with_indices`: [B, h, w, C] -> [B, 2h, 2w, C].

  Each value of `x` goes to position `indices` of its 2x2 output window; the
  three other positions are zero (PyTorch's `MaxUnpool2d`).
  """
  if x.shape != indices.shape:
    raise ValueError(f'Values {tuple(x.shape)} and indices '
                     f'{tuple(indices.shape)} must have the same shape.')
  b, h, w, c = x.shape
  # A select rather than a product with a one-hot mask, so that a non-finite
  # value does not leak into the three empty positions.
  hit = indices[..., None] == jnp.arange(4, dtype=indices.dtype)
  windows = jnp.where(hit, x[..., None], jnp.zeros((), x.dtype))
  windows = windows.reshape(b, h, w, c, 2, 2)
  return windows.transpose(0, 1, 4, 2, 5, 3).reshape(b, 2 * h, 2 * w, c)
