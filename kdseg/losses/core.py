"""Distillation and supervised losses for dense prediction.

Layout: logits are `[B, h, w, C]` (NHWC), labels `int [B, H, W]` with an
`ignore_index` for pixels that count nowhere. Every loss computes in float32
whatever dtype it is given and returns a scalar: the mean over the pixels that
count. For data-parallel training each loss also has a `*_sums` form that
returns `(sum, count)` so that a step can normalise by the global pixel count
(see `kdseg.train_step`), which keeps results independent of the device count.

Resolution: logits must match the labels' (or each other's) spatial size.
Nothing is silently broadcast; `resize_to` (bilinear, align_corners=False, no
antialiasing) makes the conversion explicit, and `distillation_loss` resizes
both student and teacher logits to the label resolution.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp

from kdseg.losses import common
from kdseg.models import layers

Array = jax.Array


def _check_rank(x: Array, rank: int, name: str, layout: str) -> None:
  if x.ndim != rank:
    raise ValueError(f'{name} must have rank {rank} ({layout}); got shape '
                     f'{tuple(x.shape)}.')


def _check_same_shape(a: Array, b: Array, a_name: str, b_name: str) -> None:
  if a.shape[-1] != b.shape[-1]:
    raise ValueError(
        f'{a_name} has {a.shape[-1]} classes/channels but {b_name} has '
        f'{b.shape[-1]}: student and teacher must predict the same classes '
        '(use a connector for features).')
  if a.shape != b.shape:
    raise ValueError(
        f'{a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} differ in '
        'shape; resize explicitly with kdseg.losses.resize_to(x, size).')


def check_temperature(temperature: Any) -> None:
  """Raises ValueError for a concrete temperature <= 0 (traced ones pass)."""
  try:
    value = float(temperature)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return  # Traced inside jit: schedules validate their own values.
  if not value > 0:  # Also catches NaN.
    raise ValueError(f'temperature must be > 0; got {value}.')


def resize_to(x: Array, size: tuple[int, int]) -> Array:
  """Bilinearly resizes `x` [B, h, w, C] to [B, size[0], size[1], C].

  Uses PyTorch's `F.interpolate(mode='bilinear', align_corners=False)`
  convention without antialiasing, in float32. Returns `x` (as float32) when
  the size already matches.
  """
  _check_rank(x, 4, 'x', '[B, h, w, C]')
  x = x.astype(jnp.float32)
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  return layers.resize_bilinear(x, tuple(size))


def _mask_from_labels(labels: Array, ignore_index: int) -> Array:
  return (labels != ignore_index).astype(jnp.float32)


# ---------------------------------------------------------------- cross-entropy

def cross_entropy_sums(logits: Array, labels: Array, *, ignore_index: int = 255,
                       class_weights: Optional[Array] = None,
                       label_smoothing: float = 0.0) -> tuple[Array, Array]:
  """Returns `(sum of weighted pixel losses, sum of pixel weights)`.

  Args:
    logits: [B, H, W, C] at the labels' resolution.
    labels: int [B, H, W]; `ignore_index` pixels count nowhere.
    ignore_index: label value to ignore.
    class_weights: optional [C]; pixel i is weighted by `class_weights[y_i]`
      and the normaliser is the sum of those weights (PyTorch's convention).
    label_smoothing: epsilon; the target is (1 - eps) one-hot + eps / C.
  """
  _check_rank(logits, 4, 'logits', '[B, H, W, C]')
  _check_rank(labels, 3, 'labels', '[B, H, W]')
  if tuple(logits.shape[:3]) != tuple(labels.shape):
    raise ValueError(
        f'logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ '
        'in [B, H, W]; resize the logits with kdseg.losses.resize_to(logits, '
        'labels.shape[1:3]).')
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f'label_smoothing must be in [0, 1); got {label_smoothing}.')
  num_classes = logits.shape[-1]
  labels = labels.astype(jnp.int32)
  valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
  safe_labels = jnp.where(valid, labels, 0)
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  # A one-hot select rather than take_along_axis, whose gradient is a
  # scatter-add; on CPU the two measured about the same (loss_path.py).
  is_label = safe_labels[..., None] == jnp.arange(num_classes)
  nll = -jnp.sum(jnp.where(is_label, log_p, 0.0), axis=-1)
  if label_smoothing:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_p, -1)
  weight = valid.astype(jnp.float32)
  if class_weights is not None:
    class_weights = jnp.asarray(class_weights, jnp.float32)
    if class_weights.shape != (num_classes,):
      raise ValueError(f'class_weights must have shape ({num_classes},); got '
                       f'{tuple(class_weights.shape)}.')
    weight = weight * class_weights[safe_labels]
  return jnp.sum(nll * weight), jnp.sum(weight)


def cross_entropy(logits: Array, labels: Array, *, ignore_index: int = 255,
                  class_weights: Optional[Array] = None,
                  label_smoothing: float = 0.0) -> Array:
  """Mean cross-entropy over counted pixels; see `cross_entropy_sums`."""
  return common.safe_divide(*cross_entropy_sums(
      logits, labels, ignore_index=ignore_index, class_weights=class_weights,
      label_smoothing=label_smoothing))


# ---------------------------------------------------------------- pixel KD

@jax.custom_vjp
def _kl_map(student: Array, teacher: Array, temperature: Array) -> Array:
  """T^2 * KL(softmax(t/T) || softmax(s/T)) per pixel: [B, h, w]."""
  log_q = jax.nn.log_softmax(student / temperature, axis=-1)
  log_p = jax.nn.log_softmax(teacher / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  return temperature**2 * kl


def _kl_map_fwd(student, teacher, temperature):
  # Residuals are the inputs only: the backward pass recomputes the two
  # softmaxes instead of keeping logit-sized temporaries alive.
  return _kl_map(student, teacher, temperature), (student, teacher, temperature)


def _kl_map_bwd(residuals, g):
  student, teacher, temperature = residuals
  q = jax.nn.softmax(student / temperature, axis=-1)
  p = jax.nn.softmax(teacher / temperature, axis=-1)
  # d/ds [T^2 KL(p || softmax(s/T))] = T (q - p). The teacher is a target:
  # no gradient flows into it or into the temperature.
  grad_s = (temperature * g)[..., None] * (q - p)
  return grad_s, jnp.zeros_like(teacher), jnp.zeros_like(temperature)


_kl_map.defvjp(_kl_map_fwd, _kl_map_bwd)


def pixel_kd_sums(student_logits: Array, teacher_logits: Array, *,
                  temperature: Any, mask: Optional[Array] = None
                  ) -> tuple[Array, Array]:
  """Returns `(sum over counted pixels of T^2 KL, number of counted pixels)`."""
  _check_rank(student_logits, 4, 'student_logits', '[B, h, w, C]')
  _check_rank(teacher_logits, 4, 'teacher_logits', '[B, h, w, C]')
  _check_same_shape(student_logits, teacher_logits, 'student_logits',
                    'teacher_logits')
  check_temperature(temperature)
  weight = common.as_mask(mask, student_logits.shape[:3])
  kl = _kl_map(student_logits.astype(jnp.float32),
               jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)),
               jnp.asarray(temperature, jnp.float32))
  return jnp.sum(kl * weight), jnp.sum(weight)


def pixel_kd(student_logits: Array, teacher_logits: Array, *, temperature: Any,
             mask: Optional[Array] = None) -> Array:
  """Pixel-wise knowledge distillation (Hinton et al.; SKD's pixel term).

  T^2 times the mean over counted pixels of
  KL(softmax(teacher / T) || softmax(student / T)), summed over classes (not
  averaged over them, unlike PyTorch's `KLDivLoss(reduction='mean')`).

  Args:
    student_logits: [B, h, w, C].
    teacher_logits: [B, h, w, C] (same shape; resize first if needed). Treated
      as a constant target.
    temperature: T > 0 (Python number or scalar array, e.g. a schedule value).
    mask: optional [B, h, w] pixel weights (1 counts, 0 ignores).

  Returns:
    A float32 scalar. Its gradient w.r.t. the student logits is
    T * (softmax(s/T) - softmax(t/T)) * mask / sum(mask).
  """
  return common.safe_divide(*pixel_kd_sums(student_logits, teacher_logits,
                                     temperature=temperature, mask=mask))


def logits_mse_sums(student_logits: Array, teacher_logits: Array, *,
                    mask: Optional[Array] = None) -> tuple[Array, Array]:
  """Returns `(sum of squared differences over counted pixels and classes,
  number of counted pixels times C)`."""
  _check_rank(student_logits, 4, 'student_logits', '[B, h, w, C]')
  _check_rank(teacher_logits, 4, 'teacher_logits', '[B, h, w, C]')
  _check_same_shape(student_logits, teacher_logits, 'student_logits',
                    'teacher_logits')
  weight = common.as_mask(mask, student_logits.shape[:3])
  diff = (student_logits.astype(jnp.float32)
          - jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)))
  sq = jnp.sum(diff * diff, axis=-1)
  return jnp.sum(sq * weight), jnp.sum(weight) * student_logits.shape[-1]


def logits_mse(student_logits: Array, teacher_logits: Array, *,
               mask: Optional[Array] = None) -> Array:
  """Mean squared error between logits over counted pixels and all classes.

  Equals PyTorch's `MSELoss()` when nothing is masked. The teacher is a
  constant target.
  """
  return common.safe_divide(*logits_mse_sums(student_logits, teacher_logits,
                                       mask=mask))


# ---------------------------------------------------------------- composition

KD_TYPES = ('kl', 'mse')
# Which pixels the classic `kd` term teaches: every labelled pixel, or only
# those whose teacher argmax equals the label (the teacher's mistakes are
# left to the cross-entropy). Either way the term is divided by the number of
# labelled pixels, so that its weight means the same per pixel.
KD_PIXELS = ('labelled', 'teacher_correct')


def _check_kd_fields(kd_type: str, kd_pixels: str) -> None:
  if kd_type not in KD_TYPES:
    raise ValueError(f'Unknown kd_type {kd_type!r}; valid: {list(KD_TYPES)}.')
  if kd_pixels not in KD_PIXELS:
    raise ValueError(f'Unknown kd_pixels {kd_pixels!r}; valid: '
                     f'{list(KD_PIXELS)}.')


def kd_sums(student_logits: Array, teacher_logits: Array, labels: Array, *,
            temperature: Any = 1.0, kd_type: str = 'kl',
            ignore_index: int = 255,
            kd_pixels: str = 'labelled') -> tuple[Array, Array]:
  """`(sum, count)` of the soft-label term at the label resolution.

  Both logits are resized (bilinear) to the labels' [H, W]. The sum runs over
  the pixels whose label is not `ignore_index` (`kd_pixels='labelled'`) or
  over those of them where the teacher's argmax is the label
  ('teacher_correct'); the count is the number of labelled pixels in both
  cases (times C for 'mse'), so that the weight means the same per pixel.

  Args:
    student_logits: [B, h, w, C].
    teacher_logits: [B, h', w', C], a constant target.
    labels: int [B, H, W].
    temperature: T of `kd_type='kl'` (pixel KD, T^2-scaled).
    kd_type: 'kl' (`pixel_kd_sums`) or 'mse' (`logits_mse_sums`).
    ignore_index: label value that counts nowhere.
    kd_pixels: one of `KD_PIXELS`.
  """
  _check_kd_fields(kd_type, kd_pixels)
  _check_rank(labels, 3, 'labels', '[B, H, W]')
  size = tuple(labels.shape[1:3])
  student = resize_to(student_logits, size)
  teacher = resize_to(teacher_logits, size)
  labelled = _mask_from_labels(labels, ignore_index)
  mask = labelled
  if kd_pixels == 'teacher_correct':
    mask = labelled * (jnp.argmax(teacher, axis=-1) == labels)
  if kd_type == 'kl':
    total, _ = pixel_kd_sums(student, teacher, temperature=temperature,
                             mask=mask)
    return total, jnp.sum(labelled)
  total, _ = logits_mse_sums(student, teacher, mask=mask)
  return total, jnp.sum(labelled) * student.shape[-1]


def label_cross_entropy_sums(logits: Array, labels: Array, *,
                             ignore_index: int = 255,
                             class_weights: Optional[Array] = None,
                             label_smoothing: float = 0.0
                             ) -> tuple[Array, Array]:
  """`cross_entropy_sums` of `logits` resized (bilinear) to the labels'
  [H, W]: the classic `ce` and `aux` terms."""
  _check_rank(labels, 3, 'labels', '[B, H, W]')
  return cross_entropy_sums(resize_to(logits, tuple(labels.shape[1:3])),
                            labels, ignore_index=ignore_index,
                            class_weights=class_weights,
                            label_smoothing=label_smoothing)


def distillation_loss_sums(
    student_logits: Array, labels: Array,
    teacher_logits: Optional[Array] = None, *, temperature: Any = 1.0,
    kd_type: str = 'kl', ignore_index: int = 255,
    class_weights: Optional[Array] = None,
    label_smoothing: float = 0.0,
    kd_pixels: str = 'labelled') -> dict[str, tuple[Array, Array]]:
  """Per-term `(sum, count)` pairs (unweighted) of the composed loss: the
  trainer's `ce` and `kd` terms (`kdseg.terms.classic`).

  Both logits are compared at the label resolution, as in the paper recipes
  (CIRKD, SKD): `label_cross_entropy_sums` and `kd_sums`.

  Returns:
    {'ce': (sum, count)} and, when `teacher_logits` is given, {'kd': ...}.
  """
  _check_kd_fields(kd_type, kd_pixels)
  terms = {'ce': label_cross_entropy_sums(
      student_logits, labels, ignore_index=ignore_index,
      class_weights=class_weights, label_smoothing=label_smoothing)}
  if teacher_logits is not None:
    terms['kd'] = kd_sums(student_logits, teacher_logits, labels,
                          temperature=temperature, kd_type=kd_type,
                          ignore_index=ignore_index, kd_pixels=kd_pixels)
  return terms


def distillation_loss(
    student_logits: Array, labels: Array,
    teacher_logits: Optional[Array] = None, *, temperature: Any = 1.0,
    ce_weight: float = 1.0, kd_weight: float = 1.0, kd_type: str = 'kl',
    ignore_index: int = 255, class_weights: Optional[Array] = None,
    label_smoothing: float = 0.0,
    kd_pixels: str = 'labelled') -> tuple[Array, dict[str, Array]]:
  """Hard-label cross-entropy plus soft-label distillation.

  total = ce_weight * CE(student, labels)
          + kd_weight * (pixel_kd(student, teacher, T) if kd_type == 'kl'
                         else logits_mse(student, teacher))

  Args:
    student_logits: [B, h, w, C]; resized bilinearly to the labels' [H, W].
    labels: int [B, H, W].
    teacher_logits: [B, h', w', C] or None (then only cross-entropy).
    temperature, kd_type, ignore_index, class_weights, label_smoothing: see
      `pixel_kd` and `cross_entropy`.
    kd_pixels: 'labelled' or 'teacher_correct' (see `distillation_loss_sums`).
    ce_weight, kd_weight: term weights.

  Returns:
    (total, {'ce': ..., 'kd': ...}) with unweighted terms, for logging.
  """
  sums = distillation_loss_sums(
      student_logits, labels, teacher_logits, temperature=temperature,
      kd_type=kd_type, ignore_index=ignore_index, class_weights=class_weights,
      label_smoothing=label_smoothing, kd_pixels=kd_pixels)
  terms = {name: common.safe_divide(*pair) for name, pair in sums.items()}
  weights = {'ce': ce_weight, 'kd': kd_weight}
  total = sum(weights[name] * value for name, value in terms.items())
  return total, terms
