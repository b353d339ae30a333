"""The registered distillation losses against independent NumPy references.

Each reference is written out with loops and explicit formulas in float64,
from the paper's definition, sharing no code with `kdseg.losses`.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdseg import losses

B, H, W, C = 2, 6, 5, 4


# ------------------------------------------------------------ NumPy references

def np_softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def np_kl(p, q):
  return sum(pi * np.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def np_unit(v):
  return v / max(np.linalg.norm(v), 1e-12)


def np_pixel_kd(s, t, mask, temperature=1.0):
  total = 0.0
  for b, i, j in np.ndindex(mask.shape):
    total += mask[b, i, j] * np_kl(np_softmax(t[b, i, j] / temperature),
                                   np_softmax(s[b, i, j] / temperature))
  return temperature**2 * total / mask.sum()


def np_logits_mse(s, t, mask):
  return (((s - t)**2).sum(-1) * mask).sum() / (mask.sum() * s.shape[-1])


def np_cwd(s, t, mask, temperature=4.0):
  total, terms = 0.0, 0
  for b in range(s.shape[0]):
    keep = mask[b] > 0
    if not keep.any():
      continue
    for c in range(s.shape[-1]):
      p = np_softmax(t[b, ..., c][keep] / temperature)
      q = np_softmax(s[b, ..., c][keep] / temperature)
      total += np_kl(p, q)
      terms += 1
  return temperature**2 * total / terms


def np_at(s, t, mask, p=2.0):
  total = 0.0
  for b in range(s.shape[0]):
    keep = (mask[b] > 0).ravel()
    a_s = (np.abs(s[b])**p).mean(-1).ravel() * keep
    a_t = (np.abs(t[b])**p).mean(-1).ravel() * keep
    total += ((np_unit(a_s) - np_unit(a_t))**2 * mask[b].ravel()).sum()
  return total / mask.sum()


def np_pool(x, mask, kh, kw, kind):
  """Masked ceil-mode pooling of one image x [H, W, C]."""
  out_h, out_w = -(-x.shape[0] // kh), -(-x.shape[1] // kw)
  pooled = np.zeros((out_h, out_w, x.shape[-1]))
  valid = np.zeros((out_h, out_w))
  for i, j in np.ndindex(out_h, out_w):
    win = x[i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].reshape(-1, x.shape[-1])
    w = mask[i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].ravel()
    if (w > 0).any():
      valid[i, j] = 1
      if kind == 'max':
        pooled[i, j] = win[w > 0].max(0)
      else:
        pooled[i, j] = (win * w[:, None]).sum(0) / w.sum()
  return pooled, valid


def np_pairwise(s, t, mask, pool_scale=0.5, pool_size=None):
  total, norm = 0.0, 0.0
  for b in range(s.shape[0]):
    fs, ft, w = s[b], t[b], mask[b]
    if pool_size is not None or pool_scale is not None:
      kh, kw = ((pool_size, pool_size) if pool_size is not None else
                (max(1, int(H * pool_scale)), max(1, int(W * pool_scale))))
      fs, _ = np_pool(fs, w, kh, kw, 'max')
      ft, w = np_pool(ft, w, kh, kw, 'max')
    fs, ft, w = fs.reshape(-1, fs.shape[-1]), ft.reshape(-1, ft.shape[-1]), w.ravel()
    for i, j in itertools.product(range(len(w)), repeat=2):
      a_s = np_unit(fs[i]) @ np_unit(fs[j])
      a_t = np_unit(ft[i]) @ np_unit(ft[j])
      total += w[i] * w[j] * (a_s - a_t)**2
    norm += w.sum()**2
  return total / norm


def np_cirkd(s, t, mask, temperature=0.1, pool_size=None):
  feats_s, feats_t, weights = [], [], []
  for b in range(s.shape[0]):
    fs, ft, w = s[b], t[b], mask[b]
    if pool_size:
      fs, _ = np_pool(fs, w, pool_size, pool_size, 'avg')
      ft, w = np_pool(ft, w, pool_size, pool_size, 'avg')
    feats_s.append([np_unit(v) for v in fs.reshape(-1, fs.shape[-1])])
    feats_t.append([np_unit(v) for v in ft.reshape(-1, ft.shape[-1])])
    weights.append(w.ravel())
  images = [b for b in range(s.shape[0]) if (weights[b] > 0).any()]
  total = 0.0
  for i, j in itertools.product(images, repeat=2):
    cols = [n for n in range(len(weights[j])) if weights[j][n] > 0]
    pair = 0.0
    for r, w_r in enumerate(weights[i]):
      if w_r == 0:
        continue
      q = np_softmax(np.array([feats_s[i][r] @ feats_s[j][n]
                               for n in cols]) / temperature)
      p = np_softmax(np.array([feats_t[i][r] @ feats_t[j][n]
                               for n in cols]) / temperature)
      pair += w_r * np_kl(p, q)
    total += pair / weights[i].sum()
  return total / len(images)**2


def np_ifvd(s, t, labels, mask, ignore_index=255):
  # Nearest resize: output pixel i reads input floor(i * in / out).
  rows = [i * labels.shape[1] // H for i in range(H)]
  cols = [j * labels.shape[2] // W for j in range(W)]
  small = labels[:, rows][:, :, cols]
  total, count = 0.0, 0.0
  for b in range(s.shape[0]):
    for k in set(small[b].ravel()) - {ignore_index}:
      members = [(i, j) for i, j in np.ndindex(H, W)
                 if small[b, i, j] == k and mask[b, i, j] > 0]
      if not members:
        continue
      proto_s = sum(s[b, i, j] for i, j in members) / len(members)
      proto_t = sum(t[b, i, j] for i, j in members) / len(members)
      for i, j in members:
        cos_s = np_unit(s[b, i, j]) @ np_unit(proto_s)
        cos_t = np_unit(t[b, i, j]) @ np_unit(proto_t)
        total += (cos_s - cos_t)**2
        count += 1
  return total / count


def np_pearson(x, y):
  x, y = x - x.mean(), y - y.mean()
  return (x @ y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-8)


def np_dist(s, t, mask, temperature=1.0, beta=1.0, gamma=1.0):
  keep = mask.ravel() > 0
  y_s = np.array([np_softmax(v / temperature)
                  for v in s.reshape(-1, s.shape[-1])])[keep]
  y_t = np.array([np_softmax(v / temperature)
                  for v in t.reshape(-1, t.shape[-1])])[keep]
  inter = np.mean([1 - np_pearson(a, b) for a, b in zip(y_s, y_t)])
  intra = np.mean([1 - np_pearson(y_s[:, c], y_t[:, c])
                   for c in range(s.shape[-1])])
  return temperature**2 * (beta * inter + gamma * intra)


# ------------------------------------------------------------ cases

# name -> (NumPy reference, student channels; the teacher has C).
CASES = {
    'pixel_kd': (np_pixel_kd, C),
    'logits_mse': (np_logits_mse, C),
    'cwd': (np_cwd, C),
    'dist': (np_dist, C),
    'at': (np_at, 3),
    'fitnet': (np_logits_mse, C),
    'pairwise': (np_pairwise, 3),
    'cirkd': (np_cirkd, 3),
    'ifvd': (np_ifvd, 3),
}


def make_inputs(name, seed=0):
  rng = np.random.default_rng(seed)
  _, s_channels = CASES[name]
  s = rng.normal(size=(B, H, W, s_channels)).astype(np.float32) * 2
  t = rng.normal(size=(B, H, W, C)).astype(np.float32) * 2
  mask = (rng.random((B, H, W)) > 0.3).astype(np.float32)
  labels = rng.integers(0, 3, size=(B, 2 * H, 2 * W)).astype(np.int32)
  labels[:, :3] = 255
  return s, t, mask, labels


@functools.lru_cache(maxsize=None)
def jitted(name, hyperparameters):
  # One compilation per (loss, hyperparameters): far cheaper on a CPU than
  # dispatching each operation eagerly.
  return jax.jit(functools.partial(losses.get(name), **dict(hyperparameters)))


def call(name, s, t, mask, labels, **kwargs):
  data = {'labels': labels} if losses.spec(name).needs_labels else {}
  return jitted(name, tuple(sorted(kwargs.items())))(s, t, mask=mask, **data)


def reference(name, s, t, mask, labels):
  ref, _ = CASES[name]
  args = (s.astype(np.float64), t.astype(np.float64))
  if name == 'ifvd':
    return ref(*args, labels, mask)
  return ref(*args, mask)


# ------------------------------------------------------------ tests

def test_registry_lists_every_case():
  assert losses.available() == sorted(CASES)


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match='valid') as info:
    losses.get('fsp')
  for name in CASES:
    assert name in str(info.value)


def test_spec_metadata_and_paper_defaults():
  assert losses.spec('cwd').defaults == {'temperature': 4.0}
  assert losses.spec('cirkd').defaults['temperature'] == 0.1
  assert losses.spec('dist').defaults == {'temperature': 1.0, 'beta': 1.0,
                                          'gamma': 1.0}
  assert losses.spec('pairwise').defaults['pool_scale'] == 0.5
  assert losses.spec('at').defaults == {'p': 2.0}
  assert losses.spec('ifvd').needs_labels
  assert not losses.spec('pairwise').needs_labels
  assert losses.spec('cwd').takes_temperature
  assert not losses.spec('fitnet').takes_temperature
  assert losses.spec('pairwise').compares == 'features'
  assert losses.spec('dist').default_key == 'logits'


@pytest.mark.parametrize('name', sorted(CASES))
def test_matches_numpy_reference(name):
  s, t, mask, labels = make_inputs(name)
  got = call(name, s, t, mask, labels)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(got, reference(name, s, t, mask, labels),
                             rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize('name', ['pairwise', 'cirkd', 'cwd', 'dist'])
def test_matches_numpy_reference_without_mask(name):
  s, t, _, labels = make_inputs(name, seed=1)
  ones = np.ones((B, H, W), np.float32)
  got = call(name, s, t, None, labels)
  np.testing.assert_allclose(got, reference(name, s, t, ones, labels),
                             rtol=2e-4)


@pytest.mark.parametrize('name,kwargs', [
    ('pairwise', {'pool_scale': None}),
    ('pairwise', {'pool_scale': 0.34}),
    ('pairwise', {'pool_size': 2}),
    ('pairwise', {'pool_size': 4, 'pool_scale': None}),
    ('cirkd', {'pool_size': 2, 'temperature': 0.5}),
    ('cwd', {'temperature': 1.0}),
    ('dist', {'temperature': 2.0, 'beta': 0.5, 'gamma': 2.0}),
    ('at', {'p': 1.0}),
])
def test_hyperparameters_match_numpy(name, kwargs):
  s, t, mask, labels = make_inputs(name, seed=2)
  ref, _ = CASES[name]
  want = ref(s.astype(np.float64), t.astype(np.float64), mask, **kwargs)
  np.testing.assert_allclose(call(name, s, t, mask, labels, **kwargs), want,
                             rtol=2e-4)


@pytest.mark.parametrize('name', sorted(CASES))
def test_zero_when_student_equals_teacher(name):
  _, t, mask, labels = make_inputs(name)
  np.testing.assert_allclose(call(name, t, t, mask, labels), 0.0, atol=2e-6)


@pytest.mark.parametrize('name', sorted(CASES))
def test_masked_pixels_do_not_count(name):
  s, t, mask, labels = make_inputs(name)
  noise = np.random.default_rng(5)
  dropped = (mask == 0)[..., None]
  s2 = np.where(dropped, noise.normal(size=s.shape) * 9, s).astype(np.float32)
  t2 = np.where(dropped, noise.normal(size=t.shape) * 9, t).astype(np.float32)
  np.testing.assert_allclose(call(name, s2, t2, mask, labels),
                             call(name, s, t, mask, labels), rtol=1e-5)


@pytest.mark.parametrize('name', sorted(CASES))
def test_gradient_matches_finite_differences(name):
  s, t, mask, labels = make_inputs(name, seed=3)
  f = lambda x: call(name, x, t, mask, labels)
  grad_s, grad_t = jax.grad(lambda x, y: call(name, x, y, mask, labels),
                            argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t))
  assert np.all(np.isfinite(grad_s))
  assert not np.any(grad_t)  # The teacher is a constant target.
  direction = np.random.default_rng(4).normal(size=s.shape).astype(np.float32)
  eps = 1e-2
  fd = (f(s + eps * direction) - f(s - eps * direction)) / (2 * eps)
  np.testing.assert_allclose(jnp.vdot(grad_s, direction), fd, rtol=2e-2,
                             atol=1e-5)


@pytest.mark.parametrize('name,kwargs', [
    ('pairwise', {'pool_scale': None}),  # N = 30 positions.
    ('cirkd', {}),
])
def test_chunked_equals_unchunked(name, kwargs):
  s, t, mask, labels = make_inputs(name)

  @functools.partial(jax.jit, static_argnums=0)
  def value_and_grad(chunk):
    f = lambda x: losses.get(name)(x, t, mask=mask, chunk_size=chunk, **kwargs)
    return jax.value_and_grad(f)(jnp.asarray(s))

  whole, grad_whole = value_and_grad(None)
  part, grad_part = value_and_grad(7)  # 7 does not divide 30: padded block.
  np.testing.assert_allclose(part, whole, rtol=1e-5)
  np.testing.assert_allclose(grad_part, grad_whole, rtol=1e-4, atol=1e-8)


def test_chunking_bounds_gradient_memory():
  # B = 2, N = 1024: the whole cirkd relation is B^2 N^2 = 4 M floats (16 MB)
  # per matrix; blocks of 32 rows are 1/32 of it. Compiled, not run.
  x = jnp.zeros((2, 32, 32, 8))

  def temp_bytes(chunk):
    grad = jax.jit(jax.grad(lambda s: losses.cirkd(s, x, chunk_size=chunk)))
    return grad.lower(x).compile().memory_analysis().temp_size_in_bytes

  whole, chunked = temp_bytes(None), temp_bytes(32)
  assert whole > 16e6
  assert chunked < whole / 8


# ------------------------------------------------------------ hand-computed

def test_cwd_worked_kl_number():
  # One channel over 2 positions: softmax(t/T) = [0.8, 0.2], softmax(s/T) =
  # [0.7, 0.3], so the loss is T^2 KL = 16 * 0.02573 (REFERENCES.md).
  temp = 4.0
  t = (temp * np.log([0.8, 0.2])).reshape(1, 1, 2, 1)
  s = (temp * np.log([0.7, 0.3])).reshape(1, 1, 2, 1)
  assert float(call('cwd', s, t, None, None)) == pytest.approx(16 * 0.025732, rel=1e-4)


def test_at_hand_computed():
  # Maps [1, 1] / sqrt(2) and [1, 0]: ((1 - 1/sqrt(2))^2 + 1/2) / 2.
  s = np.array([1.0, 1.0]).reshape(1, 1, 2, 1)
  t = np.array([1.0, 0.0]).reshape(1, 1, 2, 1)
  assert float(call('at', s, t, None, None)) == pytest.approx(1 - 2**-0.5, rel=1e-6)


def test_pairwise_hand_computed():
  # Student positions orthogonal (similarity I), teacher parallel (all
  # ones): two off-diagonal errors of 1 over 4 pairs.
  s = np.array([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 1, 2, 2)
  t = np.array([[1.0, 0.0], [2.0, 0.0]]).reshape(1, 1, 2, 2)
  got = call('pairwise', s, t, None, None, pool_scale=None)
  assert float(got) == pytest.approx(0.5)


def test_ifvd_hand_computed():
  # One class: teacher prototype [.5, .5] (cosine 1/sqrt(2) to each pixel),
  # student prototype [1, 0] (cosine 1): error (1 - 1/sqrt(2))^2.
  t = np.array([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 1, 2, 2)
  s = np.array([[1.0, 0.0], [3.0, 0.0]]).reshape(1, 1, 2, 2)
  labels = np.zeros((1, 1, 2), np.int32)
  assert float(call('ifvd', s, t, None, labels)) == pytest.approx(
      (1 - 2**-0.5)**2, rel=1e-5)


def test_cirkd_hand_computed():
  # One image of two pixels, T = 1. Teacher pixels equal: every row is
  # uniform. Student pixels orthogonal: rows softmax([1, 0]) and ([0, 1]).
  t = np.array([[1.0, 0.0], [1.0, 0.0]]).reshape(1, 1, 2, 2)
  s = np.array([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 1, 2, 2)
  q = np.exp(1) / (np.exp(1) + 1)
  want = 0.5 * np.log(0.5 / q) + 0.5 * np.log(0.5 / (1 - q))
  assert float(call('cirkd', s, t, None, None, temperature=1.0)) == pytest.approx(
      want, rel=1e-5)


def test_dist_two_classes_has_no_inter_term():
  # With two classes the centred probabilities are (d, -d): the per-pixel
  # correlation is +1 when student and teacher favour the same class (term
  # 0) and -1 when they disagree (term 2). Pixels: agree, disagree.
  t = np.log([[0.8, 0.2], [0.3, 0.7]]).reshape(1, 1, 2, 2)
  s = np.log([[0.6, 0.4], [0.6, 0.4]]).reshape(1, 1, 2, 2)
  inter = call('dist', s, t, None, None, gamma=0.0)
  assert float(inter) == pytest.approx((0 + 2) / 2, abs=1e-6)


def test_relational_losses_accept_other_channel_counts_but_cwd_does_not():
  s = np.ones((1, 2, 2, 3), np.float32)
  t = np.ones((1, 2, 2, 5), np.float32)
  for name in ('pairwise', 'cirkd', 'at'):
    assert np.isfinite(call(name, s, t, None, None))
  with pytest.raises(ValueError, match='channels'):
    losses.cwd(s, t)
  with pytest.raises(ValueError, match='resize'):
    losses.pairwise(s, t[:, :1])
