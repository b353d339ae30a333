"""Teacher and student forward passes."""

import jax
import jax.numpy as jnp
import numpy as np

from kdseg import forward
from kdseg import models
from kdseg import train_state as state_lib


def _variables(model, size=32):
  return state_lib.init_variables(model, jax.random.PRNGKey(0),
                                  (size, size, 3))


def test_teacher_forward_is_frozen_and_eval_mode():
  teacher = models.create('tiny_lraspp', num_classes=3)
  variables = _variables(teacher)
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  fn = forward.make_teacher_forward(teacher, variables)
  logits, features = fn(images)
  # Eval mode: identical to applying the model with running statistics.
  ref, _ = teacher.apply(variables, images, train=False)
  np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
  assert 'head' in features
  # No gradient flows into the teacher's variables.
  grads = jax.grad(lambda v: jnp.sum(forward.teacher_apply(
      teacher, v, images)[0]))(variables)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))


def test_bfloat16_teacher_is_close_and_returns_float32():
  teacher = models.create('tiny_lraspp', num_classes=3)
  variables = _variables(teacher)
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  full, _ = forward.teacher_apply(teacher, variables, images)
  half_model = models.create('tiny_lraspp', num_classes=3, dtype=jnp.bfloat16)
  half, _ = forward.teacher_apply(half_model, variables, images,
                                  dtype=jnp.bfloat16)
  assert half.dtype == jnp.float32
  scale = float(jnp.max(jnp.abs(full)))
  assert float(jnp.max(jnp.abs(half - full))) < 0.05 * scale


def test_student_forward_returns_batch_norm_updates():
  student = models.create('tiny_fcn', num_classes=3)
  variables = _variables(student)
  images = 3.0 + jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  logits, features, stats = forward.student_apply(
      student, variables['params'], variables['batch_stats'], images,
      train=True, dropout_rng=jax.random.PRNGKey(2))
  assert logits.shape == (2, 4, 4, 3)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats,
                         variables['batch_stats'])
  assert all(jax.tree.leaves(changed))
  _, _, same = forward.student_apply(
      student, variables['params'], variables['batch_stats'], images,
      train=False)
  assert same is variables['batch_stats']
