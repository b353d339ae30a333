"""DIST (Huang et al., NeurIPS 2022): Pearson-correlation distillation."""

from typing import Any, Optional

import jax
import jax.numpy as jnp

from kdseg.losses import common
from kdseg.losses import core

Array = jax.Array

# DIST's epsilon in cos = a.b / (|a| |b| + eps).
_EPS = 1e-8


def _weighted_pearson(a: Array, b: Array, w: Array, axis: int) -> Array:
  """Pearson correlation of a and b along `axis` with weights w (>= 0)."""
  total = jnp.maximum(jnp.sum(w, axis=axis, keepdims=True), 1e-12)
  a = a - jnp.sum(w * a, axis=axis, keepdims=True) / total
  b = b - jnp.sum(w * b, axis=axis, keepdims=True) / total
  root_w = jnp.sqrt(w)
  a, b = a * root_w, b * root_w
  return jnp.sum(a * b, axis=axis) / (
      common.safe_norm(a, axis) * common.safe_norm(b, axis) + _EPS)


def dist(student: Array, teacher: Array, *, mask: Optional[Array] = None,
         temperature: Any = 1.0, beta: float = 1.0,
         gamma: float = 1.0) -> Array:
  """DIST: 1 - Pearson correlation of class probabilities, two ways.

  With y = softmax(x / T) over classes and the B*H*W pixels of the batch as
  samples (DIST's segmentation code reshapes logits to [B*H*W, C]):

    inter = mean over pixels of 1 - pearson_classes(y_s, y_t),
    intra = mean over classes of 1 - pearson_pixels(y_s, y_t),
    loss  = T^2 (beta * inter + gamma * intra).

  Paper defaults: beta = gamma = 1, T = 1 (DIST's segmentation runs use
  plain softmax, i.e. T = 1).

  Args:
    student: [B, H, W, C] logits.
    teacher: [B, H, W, C] logits.
    mask: optional [B, H, W] pixel weights: the inter mean and the intra
      correlations (means, covariances) are weighted by them.
    temperature, beta, gamma: see above.

  Returns:
    float32 scalar.
  """
  s, t = common.check_pair(student, teacher, same_channels=True)
  core.check_temperature(temperature)
  weight = common.as_mask(mask, s.shape[:3]).reshape(-1, 1)
  classes = s.shape[-1]
  y_s = jax.nn.softmax(s / temperature, axis=-1).reshape(-1, classes)
  y_t = jax.nn.softmax(t / temperature, axis=-1).reshape(-1, classes)
  inter_corr = _weighted_pearson(y_s, y_t, jnp.ones_like(y_s), axis=1)
  inter = common.safe_divide(jnp.sum((1 - inter_corr) * weight[:, 0]),
                             jnp.sum(weight))
  intra = jnp.mean(1 - _weighted_pearson(y_s, y_t, weight, axis=0))
  return temperature**2 * (beta * inter + gamma * intra)
