"""Feature-map distillation losses: AT, FitNet and channel-wise (CWD).

All take `[B, H, W, C]` student and teacher maps of equal spatial size and an
optional `[B, H, W]` mask, and return a float32 scalar. The teacher is a
constant target.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp

from kdseg.losses import common
from kdseg.losses import core

Array = jax.Array

# Logit given to masked positions: exp() underflows to exactly 0 while the
# arithmetic stays finite (no inf - inf in the KL).
_MASKED_LOGIT = -1e9


def at(student: Array, teacher: Array, *, mask: Optional[Array] = None,
       p: float = 2.0) -> Array:
  """Attention transfer (Zagoruyko & Komodakis, ICLR 2017).

  Attention map a = mean over channels of |f|^p, flattened per image and
  L2-normalised over its H*W positions; the loss is the mean over (image,
  position) of (a_student - a_teacher)^2. This is the authors' code (and
  CIRKD's) `(at(s) - at(t)).pow(2).mean()`; the paper's beta/2 = 500 is a
  loss weight, set in the config. Student and teacher channel counts may
  differ.

  Args:
    student: [B, H, W, Cs].
    teacher: [B, H, W, Ct].
    mask: optional [B, H, W] weights: masked positions are left out of both
      the normalisation and the mean (weights > 0 enter the map unweighted,
      the mean is weighted).
    p: exponent; 2 in the paper.

  Returns:
    float32 scalar.
  """
  s, t = common.check_pair(student, teacher, same_channels=False)
  weight = common.as_mask(mask, s.shape[:3])
  counted = (weight > 0).astype(jnp.float32)
  batch = s.shape[0]

  def attention(x):
    a = jnp.mean(jnp.abs(x)**p, axis=-1) * counted
    return common.l2_normalize(a.reshape(batch, -1), axis=-1)

  diff = attention(s) - attention(t)
  weight = weight.reshape(batch, -1)
  return common.safe_divide(jnp.sum(diff * diff * weight), jnp.sum(weight))


def fitnet(student: Array, teacher: Array, *,
           mask: Optional[Array] = None) -> Array:
  """FitNets hint loss (Romero et al., ICLR 2015): feature MSE.

  Mean over counted pixels and channels of (student - teacher)^2. `student`
  must already be adapted to the teacher's channels: the trainable 1x1-conv
  regressor is a connector module owned by the training step, not a part of
  this pure function.

  Args:
    student: [B, H, W, C] adapted student feature.
    teacher: [B, H, W, C].
    mask: optional [B, H, W] pixel weights.

  Returns:
    float32 scalar.
  """
  s, t = common.check_pair(student, teacher, same_channels=True)
  weight = common.as_mask(mask, s.shape[:3])
  sq = jnp.sum((s - t)**2, axis=-1)
  return common.safe_divide(jnp.sum(sq * weight),
                            jnp.sum(weight) * s.shape[-1])


def cwd(student: Array, teacher: Array, *, mask: Optional[Array] = None,
        temperature: Any = 4.0) -> Array:
  """Channel-wise distillation (Shu et al., ICCV 2021).

  For each image and channel c, phi(x)_c = softmax over the H*W positions of
  x_c / T; the loss is

    T^2 / (B C) * sum_{b, c} KL(phi(teacher)_bc || phi(student)_bc).

  Args:
    student: [B, H, W, C] logits (or adapted features).
    teacher: [B, H, W, C].
    mask: optional [B, H, W]; positions with mask 0 are left out of the
      spatial softmax (each channel becomes a distribution over the counted
      positions only); positive weights count as 1. An image with no counted
      position drops out of the average over B.
    temperature: T; 4 in the paper (Cityscapes logits).

  Returns:
    float32 scalar.
  """
  s, t = common.check_pair(student, teacher, same_channels=True)
  core.check_temperature(temperature)
  counted = common.as_mask(mask, s.shape[:3]) > 0
  batch, channels = s.shape[0], s.shape[-1]

  def spatial_log_softmax(x):
    x = jnp.where(counted[..., None], x / temperature, _MASKED_LOGIT)
    return jax.nn.log_softmax(x.reshape(batch, -1, channels), axis=1)

  log_q = spatial_log_softmax(s)
  log_p = spatial_log_softmax(t)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=1)  # [B, C]
  image_counts = jnp.any(counted, axis=(1, 2)).astype(jnp.float32)
  total = jnp.sum(kl * image_counts[:, None])
  return temperature**2 * common.safe_divide(
      total, jnp.sum(image_counts) * channels)
