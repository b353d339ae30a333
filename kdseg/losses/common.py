"""Argument checks and numerics shared by the distillation losses.

Student and teacher are `[B, H, W, C]` maps; masks are `[B, H, W]` pixel
weights. Everything is computed in float32.
"""

from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array

# F.normalize's epsilon: keeps all-zero vectors (e.g. padding) finite.
NORM_EPS = 1e-12


def check_pair(student: Array, teacher: Array, *,
               same_channels: bool) -> tuple[Array, Array]:
  """Validates a student/teacher pair; returns (student, stopped teacher).

  Both must be rank 4 with equal [B, H, W] (and equal C when
  `same_channels`). The teacher is returned under `stop_gradient`: it is a
  target, never trained through the loss. Both are cast to float32.
  """
  for x, name in ((student, 'student'), (teacher, 'teacher')):
    if x.ndim != 4:
      raise ValueError(f'{name} must have rank 4 ([B, H, W, C]); got shape '
                       f'{tuple(x.shape)}.')
  if student.shape[:3] != teacher.shape[:3]:
    raise ValueError(
        f'student {tuple(student.shape)} and teacher {tuple(teacher.shape)} '
        'differ in [B, H, W]; resize explicitly with '
        'kdseg.losses.resize_to(x, size).')
  if same_channels and student.shape[-1] != teacher.shape[-1]:
    raise ValueError(
        f'student has {student.shape[-1]} channels but teacher has '
        f'{teacher.shape[-1]}: this loss compares them channel by channel '
        '(adapt the student with a connector first).')
  return (student.astype(jnp.float32),
          jax.lax.stop_gradient(teacher.astype(jnp.float32)))


def as_mask(mask: Optional[Array], shape: tuple[int, ...]) -> Array:
  """Returns a float32 [B, H, W] pixel weight (ones when `mask` is None)."""
  if mask is None:
    return jnp.ones(shape, jnp.float32)
  if tuple(mask.shape) != tuple(shape):
    raise ValueError(f'mask must have shape {tuple(shape)} ([B, H, W] of the '
                     f'inputs); got {tuple(mask.shape)}.')
  return mask.astype(jnp.float32)


def safe_divide(total: Array, count: Array) -> Array:
  # Nothing counted contributes zero instead of NaN.
  return total / jnp.maximum(count, 1e-12)


def safe_norm(x: Array, axis: int = -1, keepdims: bool = False) -> Array:
  """L2 norm floored at NORM_EPS, with a finite gradient at zero."""
  sq = jnp.sum(x * x, axis=axis, keepdims=keepdims)
  return jnp.sqrt(jnp.maximum(sq, NORM_EPS**2))


def l2_normalize(x: Array, axis: int = -1) -> Array:
  """x / max(||x||, 1e-12) along `axis` (PyTorch's F.normalize)."""
  return x / safe_norm(x, axis=axis, keepdims=True)
