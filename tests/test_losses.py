"""Losses against NumPy references and hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdseg import losses


def np_log_softmax(x, axis=-1):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def np_cross_entropy(logits, labels, ignore, weights=None, eps=0.0):
  c = logits.shape[-1]
  logp = np_log_softmax(logits.astype(np.float64))
  total, norm = 0.0, 0.0
  for idx in np.ndindex(labels.shape):
    y = labels[idx]
    if y == ignore:
      continue
    loss = -(1 - eps) * logp[idx][y] - eps * logp[idx].mean()
    w = 1.0 if weights is None else weights[y]
    total += w * loss
    norm += w
  del c
  return total / norm


def np_kd(s, t, temp, mask):
  logq = np_log_softmax(s.astype(np.float64) / temp)
  logp = np_log_softmax(t.astype(np.float64) / temp)
  kl = (np.exp(logp) * (logp - logq)).sum(-1)
  return temp**2 * (kl * mask).sum() / mask.sum()


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  s = rng.normal(size=(2, 5, 6, 4)).astype(np.float32) * 3
  t = rng.normal(size=(2, 5, 6, 4)).astype(np.float32) * 3
  labels = rng.integers(0, 4, size=(2, 5, 6)).astype(np.int32)
  labels[0, :2] = 255
  return s, t, labels


def test_worked_kl_number():
  # KL([0.8, 0.2] || [0.7, 0.3]) = 0.02573 nats (REFERENCES.md).
  t = jnp.log(jnp.array([0.8, 0.2])).reshape(1, 1, 1, 2)
  s = jnp.log(jnp.array([0.7, 0.3])).reshape(1, 1, 1, 2)
  assert float(losses.pixel_kd(s, t, temperature=1.0)) == pytest.approx(
      0.8 * np.log(0.8 / 0.7) + 0.2 * np.log(0.2 / 0.3), rel=1e-5)
  assert float(losses.pixel_kd(s, t, temperature=1.0)) == pytest.approx(
      0.02573, abs=1e-5)


@pytest.mark.parametrize('temp', [1.0, 4.0, 0.5])
def test_pixel_kd_matches_numpy(batch, temp):
  s, t, labels = batch
  mask = (labels != 255).astype(np.float32)
  got = losses.pixel_kd(s, t, temperature=temp, mask=mask)
  np.testing.assert_allclose(got, np_kd(s, t, temp, mask), rtol=1e-5)
  got_all = losses.pixel_kd(s, t, temperature=temp)
  np.testing.assert_allclose(got_all, np_kd(s, t, temp, np.ones_like(mask)),
                             rtol=1e-5)


def test_pixel_kd_gradient_is_analytic(batch):
  s, t, labels = batch
  temp = 3.0
  mask = (labels != 255).astype(np.float32)
  grad = jax.grad(lambda x: losses.pixel_kd(x, t, temperature=temp, mask=mask))(
      jnp.asarray(s))
  q = np.exp(np_log_softmax(s.astype(np.float64) / temp))
  p = np.exp(np_log_softmax(t.astype(np.float64) / temp))
  expected = temp * (q - p) * mask[..., None] / mask.sum()
  np.testing.assert_allclose(grad, expected, atol=1e-7, rtol=1e-5)


def test_pixel_kd_gradient_matches_finite_differences(batch):
  s, t, _ = batch
  f = lambda x: losses.pixel_kd(x, t, temperature=2.0)
  direction = np.random.default_rng(1).normal(size=s.shape).astype(np.float32)
  eps = 1e-2
  fd = (f(s + eps * direction) - f(s - eps * direction)) / (2 * eps)
  analytic = jnp.vdot(jax.grad(f)(jnp.asarray(s)), direction)
  np.testing.assert_allclose(fd, analytic, rtol=2e-3)


def test_pixel_kd_zero_when_equal(batch):
  s, _, _ = batch
  assert float(losses.pixel_kd(s, s, temperature=2.0)) == pytest.approx(
      0.0, abs=1e-6)
  assert float(losses.logits_mse(s, s)) == 0.0


def test_pixel_kd_safe_for_huge_logits():
  s = jnp.array([[[[1e4, -1e4, 0.0]]]])
  t = jnp.array([[[[-1e4, 1e4, 5.0]]]])
  value, grad = jax.value_and_grad(
      lambda x: losses.pixel_kd(x, t, temperature=1.0))(s)
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  # p = teacher ~ one-hot on class 1, log q(1) ~ -2e4: KL ~ 2e4.
  assert float(value) == pytest.approx(2e4, rel=1e-4)
  ce = losses.cross_entropy(s, jnp.array([[[1]]]))
  assert float(ce) == pytest.approx(2e4, rel=1e-4)


@pytest.mark.parametrize('temp', [0.0, -1.0, float('nan')])
def test_temperature_must_be_positive(batch, temp):
  s, t, _ = batch
  with pytest.raises(ValueError, match='temperature must be > 0'):
    losses.pixel_kd(s, t, temperature=temp)


def test_kd_rejects_class_and_shape_mismatch(batch):
  s, t, _ = batch
  with pytest.raises(ValueError, match='same classes'):
    losses.pixel_kd(s, t[..., :3], temperature=1.0)
  with pytest.raises(ValueError, match='resize explicitly'):
    losses.pixel_kd(s, t[:, :4], temperature=1.0)
  with pytest.raises(ValueError, match='rank 4'):
    losses.pixel_kd(s[0], t[0], temperature=1.0)


def test_cross_entropy_matches_numpy(batch):
  s, _, labels = batch
  np.testing.assert_allclose(losses.cross_entropy(s, labels),
                             np_cross_entropy(s, labels, 255), rtol=1e-5)
  w = np.array([0.5, 2.0, 1.0, 3.0], np.float32)
  np.testing.assert_allclose(
      losses.cross_entropy(s, labels, class_weights=w),
      np_cross_entropy(s, labels, 255, weights=w), rtol=1e-5)
  np.testing.assert_allclose(
      losses.cross_entropy(s, labels, label_smoothing=0.1),
      np_cross_entropy(s, labels, 255, eps=0.1), rtol=1e-5)
  labels3 = np.where(labels == 255, 3, labels)
  np.testing.assert_allclose(
      losses.cross_entropy(s, labels3, ignore_index=3),
      np_cross_entropy(s, labels3, 3), rtol=1e-5)


def np_cross_entropy_grad(logits, labels, ignore, weights=None, eps=0.0):
  """d(mean CE)/d(logits): w_i (softmax - target) / sum(w), in float64."""
  c = logits.shape[-1]
  p = np.exp(np_log_softmax(logits.astype(np.float64)))
  valid = labels != ignore
  safe = np.where(valid, labels, 0)
  target = (1 - eps) * np.eye(c)[safe] + eps / c
  w = valid * (1.0 if weights is None else np.asarray(weights)[safe])
  return w[..., None] * (p - target) / w.sum()


@pytest.mark.parametrize('weighted,eps', [(False, 0.0), (True, 0.0),
                                          (False, 0.2), (True, 0.1)])
def test_cross_entropy_gradient_matches_numpy(batch, weighted, eps):
  s, _, labels = batch
  w = np.array([0.5, 2.0, 1.0, 3.0], np.float32) if weighted else None
  grad = jax.grad(lambda x: losses.cross_entropy(
      x, labels, class_weights=w, label_smoothing=eps))(jnp.asarray(s))
  np.testing.assert_allclose(grad, np_cross_entropy_grad(s, labels, 255, w, eps),
                             atol=1e-7, rtol=1e-5)


def test_cross_entropy_hand_computed():
  # Two pixels, logits [0, log 3] -> p = [1/4, 3/4]; labels 1 and ignored.
  logits = jnp.array([[[[0.0, np.log(3.0)], [5.0, 0.0]]]])
  labels = jnp.array([[[1, 255]]])
  assert float(losses.cross_entropy(logits, labels)) == pytest.approx(
      -np.log(0.75), rel=1e-6)


def test_cross_entropy_all_ignored_is_zero(batch):
  s, _, labels = batch
  assert float(losses.cross_entropy(s, np.full_like(labels, 255))) == 0.0


def test_cross_entropy_rejects_resolution_mismatch(batch):
  s, _, labels = batch
  with pytest.raises(ValueError, match='resize the logits'):
    losses.cross_entropy(s[:, :4], labels)


def test_logits_mse_matches_numpy(batch):
  s, t, labels = batch
  mask = (labels != 255).astype(np.float32)
  expected = (((s - t)**2).sum(-1) * mask).sum() / (mask.sum() * s.shape[-1])
  np.testing.assert_allclose(losses.logits_mse(s, t, mask=mask), expected,
                             rtol=1e-5)
  np.testing.assert_allclose(losses.logits_mse(s, t), ((s - t)**2).mean(),
                             rtol=1e-5)


def test_distillation_loss_composes_terms(batch):
  s, t, labels = batch
  total, terms = losses.distillation_loss(
      s, labels, t, temperature=2.0, ce_weight=0.5, kd_weight=3.0)
  mask = (labels != 255).astype(np.float32)
  ce = np_cross_entropy(s, labels, 255)
  kd = np_kd(s, t, 2.0, mask)
  np.testing.assert_allclose(terms['ce'], ce, rtol=1e-5)
  np.testing.assert_allclose(terms['kd'], kd, rtol=1e-5)
  np.testing.assert_allclose(total, 0.5 * ce + 3.0 * kd, rtol=1e-5)
  total_mse, terms_mse = losses.distillation_loss(s, labels, t, kd_type='mse')
  np.testing.assert_allclose(terms_mse['kd'], losses.logits_mse(s, t, mask=mask),
                             rtol=1e-6)
  only_ce, only_terms = losses.distillation_loss(s, labels)
  assert set(only_terms) == {'ce'}
  with pytest.raises(ValueError, match="valid: \\['kl', 'mse'\\]"):
    losses.distillation_loss(s, labels, t, kd_type='js')


def test_kd_on_teacher_correct_pixels_only(batch):
  # Hand-made case: 1 image, 1x3 pixels, 2 classes. The teacher is right on
  # pixel 0 (label 0), wrong on pixel 1 (label 1), pixel 2 is ignored.
  t = np.log(np.array([[[[0.8, 0.2], [0.9, 0.1], [0.3, 0.7]]]], np.float32))
  s = np.log(np.array([[[[0.7, 0.3], [0.5, 0.5], [0.5, 0.5]]]], np.float32))
  labels = np.array([[[0, 1, 255]]])
  _, terms = losses.distillation_loss(s, labels, t, kd_pixels='teacher_correct')
  # KL([0.8, 0.2] || [0.7, 0.3]) = 0.02573 nats on pixel 0, divided by the
  # two labelled pixels (REFERENCES.md's worked number).
  np.testing.assert_allclose(terms['kd'], 0.02573 / 2, atol=1e-5)
  # Random logits against NumPy: the mask is the labelled pixels where the
  # teacher's argmax is the label; the count is every labelled pixel.
  s, t, labels = batch
  _, terms = losses.distillation_loss(s, labels, t, temperature=2.0,
                                      kd_pixels='teacher_correct')
  labelled = labels != 255
  correct = labelled & (t.argmax(-1) == labels)
  assert 0 < correct.sum() < labelled.sum()
  expected = np_kd(s, t, 2.0, correct.astype(np.float64)) * (
      correct.sum() / labelled.sum())
  np.testing.assert_allclose(terms['kd'], expected, rtol=1e-5)
  _, mse = losses.distillation_loss(s, labels, t, kd_type='mse',
                                    kd_pixels='teacher_correct')
  np.testing.assert_allclose(
      mse['kd'], ((s - t)**2).sum(-1)[correct].sum() / (labelled.sum() * 4),
      rtol=1e-5)
  with pytest.raises(ValueError, match="valid: \\['labelled', "
                     "'teacher_correct'\\]"):
    losses.distillation_loss(s, labels, t, kd_pixels='confident')


def test_distillation_loss_resizes_to_labels():
  # Constant logits stay constant under bilinear resizing, so the loss at
  # stride 2 equals the loss of the full-resolution constant logits.
  rng = np.random.default_rng(3)
  vec_s, vec_t = rng.normal(size=4), rng.normal(size=4)
  s_small = np.broadcast_to(vec_s, (1, 3, 4, 4)).astype(np.float32)
  t_full = np.broadcast_to(vec_t, (1, 6, 8, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=(1, 6, 8))
  total, terms = losses.distillation_loss(s_small, labels, t_full,
                                          temperature=2.0)
  s_full = np.broadcast_to(vec_s, (1, 6, 8, 4)).astype(np.float32)
  np.testing.assert_allclose(terms['ce'], np_cross_entropy(s_full, labels, 255),
                             rtol=1e-5)
  np.testing.assert_allclose(terms['kd'], np_kd(s_full, t_full, 2.0,
                                                np.ones((1, 6, 8))), rtol=1e-5)


def test_losses_jit_with_traced_temperature(batch):
  s, t, _ = batch
  f = jax.jit(lambda s, t, temp: losses.pixel_kd(s, t, temperature=temp))
  np.testing.assert_allclose(f(s, t, 2.0), np_kd(s, t, 2.0, np.ones(s.shape[:3])),
                             rtol=1e-5)


def test_bfloat16_inputs_compute_in_float32(batch):
  s, t, labels = batch
  got = losses.pixel_kd(s.astype(jnp.bfloat16), t.astype(jnp.bfloat16),
                        temperature=2.0)
  assert got.dtype == jnp.float32
  ref = np_kd(np.asarray(jnp.asarray(s, jnp.bfloat16), np.float32),
              np.asarray(jnp.asarray(t, jnp.bfloat16), np.float32), 2.0,
              np.ones(s.shape[:3]))
  np.testing.assert_allclose(got, ref, rtol=1e-5)
