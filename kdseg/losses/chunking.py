"""Row-block evaluation of O(N^2) relation losses.

A relation loss over N positions sums a function of an N x N matrix. Done in
blocks of k rows, only k x N of it exists at a time; `jax.checkpoint` on the
block makes the backward pass recompute each block instead of storing it, so
the peak memory of value and gradient is set by k, not N.
"""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def sum_over_row_blocks(fn: Callable[..., Array], rows: Sequence[Array],
                        chunk_size: Optional[int]) -> Array:
  """Returns the sum over row blocks k of `fn(*(r[:, k] for r in rows))`.

  Args:
    fn: maps blocks `[B, k, ...]` (one per array in `rows`) to a float32
      scalar; the full matrices' other side (columns) comes from its closure.
      It must return 0 for rows of zeros whose weight is 0: these pad N up to
      a multiple of `chunk_size`.
    rows: arrays `[B, N, ...]` that share N.
    chunk_size: rows per block; None (or >= N) evaluates `fn(*rows)` once.

  Returns:
    float32 scalar.
  """
  n = rows[0].shape[1]
  if chunk_size is None or chunk_size >= n:
    return fn(*rows)
  if chunk_size < 1:
    raise ValueError(f'chunk_size must be >= 1 or None; got {chunk_size}.')
  pad = -n % chunk_size

  def split(r: Array) -> Array:
    r = jnp.pad(r, [(0, 0), (0, pad)] + [(0, 0)] * (r.ndim - 2))
    r = r.reshape(r.shape[0], -1, chunk_size, *r.shape[2:])
    return jnp.moveaxis(r, 1, 0)  # [num_blocks, B, k, ...] for the scan.

  block_fn = jax.checkpoint(fn)

  def step(total, blocks):
    return total + block_fn(*blocks), None

  total, _ = jax.lax.scan(step, jnp.zeros((), jnp.float32),
                          tuple(split(r) for r in rows))
  return total
