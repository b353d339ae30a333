"""Logit losses in the registry's form `fn(student, teacher, *, mask, ...)`.

Thin wrappers over `kdseg.losses.core` that give every hyperparameter its
paper default, so that `registry.get(name)(student, teacher)` works alone.
"""

from typing import Any, Optional

import jax

from kdseg.losses import core

Array = jax.Array


def pixel_kd(student: Array, teacher: Array, *, mask: Optional[Array] = None,
             temperature: Any = 1.0) -> Array:
  """Pixel-wise KD (SKD, CIRKD): T^2 KL(softmax(t/T) || softmax(s/T)).

  Args:
    student: [B, H, W, C] logits.
    teacher: [B, H, W, C] logits; a constant target.
    mask: optional [B, H, W] pixel weights (1 counts, 0 ignores).
    temperature: T; 1.0 as in SKD and CIRKD's pixel-wise term.

  Returns:
    float32 scalar: the KL summed over classes, mean over counted pixels.
  """
  return core.pixel_kd(student, teacher, temperature=temperature, mask=mask)


def logits_mse(student: Array, teacher: Array, *,
               mask: Optional[Array] = None) -> Array:
  """Mean squared logit difference over counted pixels and classes.

  Args:
    student, teacher: [B, H, W, C] logits (the teacher a constant target).
    mask: optional [B, H, W] pixel weights.

  Returns:
    float32 scalar.
  """
  return core.logits_mse(student, teacher, mask=mask)
