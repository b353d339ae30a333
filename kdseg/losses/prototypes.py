"""IFVD (Wang et al., ECCV 2020): pixel-to-class-prototype similarity."""

from typing import Optional

import jax
import jax.numpy as jnp

from kdseg.losses import common

Array = jax.Array

# Enough segments for any label in [0, 256) when `num_classes` is not given.
_DEFAULT_NUM_SEGMENTS = 256


def resize_labels_nearest(labels: Array, size: tuple[int, int]) -> Array:
  """Nearest resize of int [B, H, W] labels to [B, size[0], size[1]].

  Output pixel i reads input pixel floor(i * H / h), PyTorch's
  `F.interpolate(mode='nearest')` (as IFVD's `nn.Upsample`).
  """
  rows = (jnp.arange(size[0]) * labels.shape[1]) // size[0]
  cols = (jnp.arange(size[1]) * labels.shape[2]) // size[1]
  return labels[:, rows][:, :, cols]


def _prototype_cosine(x: Array, segments: Array, weight: Array,
                      num_segments: int) -> Array:
  """Cosine of each pixel of x [B, N, C] to the weighted mean of its segment.

  `segments` [B, N] int are global segment ids (image * K + class).
  """
  flat = x.reshape(-1, x.shape[-1])
  ids = segments.reshape(-1)
  w = weight.reshape(-1, 1)
  sums = jax.ops.segment_sum(flat * w, ids, num_segments=num_segments)
  counts = jax.ops.segment_sum(w, ids, num_segments=num_segments)
  prototypes = sums / jnp.maximum(counts, 1e-12)
  cos = jnp.sum(common.l2_normalize(flat) *
                common.l2_normalize(prototypes[ids]), axis=-1)
  return cos.reshape(segments.shape)


def ifvd(student: Array, teacher: Array, *, labels: Array,
         mask: Optional[Array] = None, ignore_index: int = 255,
         num_classes: Optional[int] = None) -> Array:
  """IFVD: match the maps of pixel-to-class-prototype cosine similarity.

  Labels are resized (nearest) to the feature size. For each image and class
  the prototype is the mean feature of the counted pixels of that class;
  each counted pixel's map value is the cosine between its feature and its
  class prototype. The loss is the mean over counted pixels of
  (map_student - map_teacher)^2. (IFVD's code averages over all pixels,
  where ignored ones contribute 0: its value is ours times the counted
  fraction.) Channel counts may differ.

  Args:
    student: [B, h, w, Cs] features.
    teacher: [B, h, w, Ct] features.
    labels: int [B, H, W] ground truth (any resolution).
    mask: optional [B, h, w] pixel weights (prototypes are weighted means).
    ignore_index: label of pixels that count nowhere.
    num_classes: K, the number of classes; labels outside [0, K) count
      nowhere. None allows any label in [0, 256) (the cost is per K).

  Returns:
    float32 scalar.
  """
  s, t = common.check_pair(student, teacher, same_channels=False)
  if labels.ndim != 3:
    raise ValueError(f'labels must have rank 3 ([B, H, W]); got shape '
                     f'{tuple(labels.shape)}.')
  if labels.shape[0] != s.shape[0]:
    raise ValueError(f'labels batch {labels.shape[0]} differs from the '
                     f'features\' {s.shape[0]}.')
  weight = common.as_mask(mask, s.shape[:3])
  k = num_classes or _DEFAULT_NUM_SEGMENTS
  labels = resize_labels_nearest(labels.astype(jnp.int32), s.shape[1:3])
  valid = (labels != ignore_index) & (labels >= 0) & (labels < k)
  weight = weight * valid
  batch = s.shape[0]
  segments = (jnp.arange(batch)[:, None, None] * k
              + jnp.where(valid, labels, 0)).reshape(batch, -1)
  weight = weight.reshape(batch, -1)

  def cosine_map(x):
    return _prototype_cosine(x.reshape(batch, -1, x.shape[-1]), segments,
                             weight, batch * k)

  diff = cosine_map(s) - cosine_map(t)
  return common.safe_divide(jnp.sum(diff * diff * weight), jnp.sum(weight))
