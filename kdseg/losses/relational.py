"""Pixel-relation losses: SKD pair-wise and CIRKD mini-batch cross-image.

Both compare N x N similarity matrices between positions (N = H*W after
optional pooling), so student and teacher may have different channel counts.
Memory is O(N^2). Unchunked, the value and gradient hold temporaries of
about

  pairwise: 8 B N^2 bytes   (two float32 B x N x N matrices),
  cirkd:    8 B^2 N^2 bytes (two float32 B^2 x N x N matrices).

With `chunk_size=k` only k rows exist at a time, about 16 B k N (pairwise)
and 16 B^2 k N (cirkd) bytes, for the gradient too (blocks are recomputed in
the backward pass). For 512x1024 crops at stride 8 (N = 64 * 128 = 8192),
B = 8, Cs = 128 and Ct = 256, XLA's memory analysis of the compiled
value-and-gradient gives cirkd 32 GiB of temporaries unchunked and 1.75 GiB
with k = 256 (pairwise: 2.06 and 0.38 GiB).
Pooling divides N by the window area.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp

from kdseg.losses import chunking
from kdseg.losses import common
from kdseg.losses import core
from kdseg.losses import pooling

Array = jax.Array

# See feature._MASKED_LOGIT: excluded columns get exactly zero probability.
_MASKED_LOGIT = -1e9


def _flatten(x: Array) -> Array:
  return x.reshape(x.shape[0], -1, x.shape[-1])


def pairwise(student: Array, teacher: Array, *, mask: Optional[Array] = None,
             pool_scale: Optional[float] = 0.5,
             pool_size: Optional[int] = None,
             chunk_size: Optional[int] = None) -> Array:
  """SKD pair-wise similarity distillation (Liu et al., CVPR 2019).

  Features are max-pooled into patches (patch = int(scale * size) per axis,
  or `pool_size` x `pool_size`; ceil mode), each position's feature vector is L2-normalised, and
  a_ij = cos(f_i, f_j) over the N pooled positions of one image. The loss is
  the mean over (image, i, j) of (a_student_ij - a_teacher_ij)^2, SKD's
  `sum / N^2 / B`. Unlike SKD's code, which detaches the norm, the gradient
  flows through the normalisation (the exact cosine gradient).

  Args:
    student: [B, H, W, Cs] features.
    teacher: [B, H, W, Ct] features.
    mask: optional [B, H, W] weights; pair (i, j) is weighted w_i w_j. With
      pooling, a patch pools only its counted pixels and counts if any does.
    pool_scale: patch size as a fraction of the feature size, in (0, 1]:
      SKD's code uses 0.5 (windows of half the map: a 2 x 2 grid of
      positions); None to compare every position.
    pool_size: k to max-pool k x k windows instead (an H/k x W/k grid);
      CIRKD's SKD results pool 2 x 2 windows. Overrides `pool_scale`.
    chunk_size: rows of the similarity matrix per block (memory: see the
      module docstring); None computes it whole. Same value either way.

  Returns:
    float32 scalar.
  """
  s, t = common.check_pair(student, teacher, same_channels=False)
  weight = common.as_mask(mask, s.shape[:3])
  window = None
  if pool_size is not None:
    if pool_size < 1:
      raise ValueError(f'pool_size must be >= 1 or None; got {pool_size}.')
    window = (pool_size, pool_size)
  elif pool_scale is not None:
    if not 0 < pool_scale <= 1:
      raise ValueError(f'pool_scale must be in (0, 1] or None; got '
                       f'{pool_scale}.')
    window = tuple(max(1, int(n * pool_scale)) for n in s.shape[1:3])
  if window is not None:
    s, _ = pooling.max_pool(s, weight, window)
    t, weight = pooling.max_pool(t, weight, window)
  s = _flatten(common.l2_normalize(s))
  t = _flatten(common.l2_normalize(t))
  weight = weight.reshape(weight.shape[0], -1)

  def block(s_rows, t_rows, w_rows):
    sim_s = jnp.einsum('bkc,bnc->bkn', s_rows, s)
    sim_t = jnp.einsum('bkc,bnc->bkn', t_rows, t)
    pair_weight = w_rows[:, :, None] * weight[:, None, :]
    return jnp.sum((sim_s - sim_t)**2 * pair_weight)

  total = chunking.sum_over_row_blocks(block, (s, t, weight), chunk_size)
  return common.safe_divide(total, jnp.sum(jnp.sum(weight, axis=1)**2))


def cirkd(student: Array, teacher: Array, *, mask: Optional[Array] = None,
          temperature: Any = 0.1, pool_size: Optional[int] = None,
          chunk_size: Optional[int] = None) -> Array:
  """CIRKD mini-batch pixel-to-pixel distillation (Yang et al., CVPR 2022).

  With f the L2-normalised per-pixel features, for every ordered pair (i, j)
  of images in the (per-device) batch, i = j included, row r of image i gives
  the distribution softmax_n(f_i[r] . f_j[n] / T) over the N pixels n of
  image j. The loss is KL(teacher || student) summed over n, averaged over
  the rows r and then over the B^2 pairs; no T^2 factor (CIRKD's
  `kl_div(..., reduction='batchmean')` summed over pairs / B^2).

  Args:
    student: [B, H, W, Cs] features.
    teacher: [B, H, W, Ct] features.
    mask: optional [B, H, W] weights: masked pixels are neither rows nor
      columns (left out of the softmax); rows are averaged with the weights.
      Images without a counted pixel drop out of the pairs.
    temperature: T; 0.1 in the paper.
    pool_size: None (the paper's setting) or k to average-pool k x k windows
      first (CIRKD's optional 2 x 2 pooling; ceil mode).
    chunk_size: rows per block (memory: see the module docstring); None
      computes all B^2 N^2 similarities at once. Same value either way.

  Returns:
    float32 scalar.
  """
  s, t = common.check_pair(student, teacher, same_channels=False)
  core.check_temperature(temperature)
  weight = common.as_mask(mask, s.shape[:3])
  if pool_size is not None:
    if pool_size < 1:
      raise ValueError(f'pool_size must be >= 1 or None; got {pool_size}.')
    s, _ = pooling.avg_pool(s, weight, (pool_size, pool_size))
    t, weight = pooling.avg_pool(t, weight, (pool_size, pool_size))
  s = _flatten(common.l2_normalize(s))
  t = _flatten(common.l2_normalize(t))
  weight = weight.reshape(weight.shape[0], -1)
  columns = weight > 0  # [B, N]: pixels that enter the softmax.
  image_ok = jnp.any(columns, axis=1).astype(jnp.float32)  # [B]
  # Row weights normalised per image: the mean over rows r of image i.
  row_weight = weight / jnp.maximum(jnp.sum(weight, axis=1, keepdims=True),
                                    1e-12)

  def log_relation(rows, cols):
    logits = jnp.einsum('ikc,jnc->ikjn', rows, cols) / temperature
    logits = jnp.where(columns[None, None], logits, _MASKED_LOGIT)
    return jax.nn.log_softmax(logits, axis=-1)

  def block(s_rows, t_rows, w_rows):
    log_q = log_relation(s_rows, s)
    log_p = log_relation(t_rows, t)
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)  # [B, k, B]
    return jnp.sum(kl * w_rows[:, :, None] * image_ok[None, None, :])

  total = chunking.sum_over_row_blocks(block, (s, t, row_weight), chunk_size)
  return common.safe_divide(total, jnp.sum(image_ok)**2)
