"""Precise BN: recomputed batch-norm statistics against NumPy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdseg import precise_bn


class _ConvBN(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(3, (1, 1), use_bias=False, name='conv')(x)
    return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                        name='bn')(x)


def test_statistics_are_the_mean_of_batch_statistics():
  model = _ConvBN()
  rng = np.random.default_rng(0)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 2)),
                         train=False)
  # Running averages far from the truth, as after noisy training.
  stale = jax.tree.map(lambda x: x + 5.0, variables['batch_stats'])
  batches = [rng.normal(i, 1.0 + i, (3, 4, 4, 2)).astype(np.float32)
             for i in range(4)]
  stats = precise_bn.make_recompute(model)(variables['params'], stale,
                                           iter(batches))
  kernel = np.asarray(variables['params']['conv']['kernel'])[0, 0]  # [2, 3]
  features = [b.reshape(-1, 2) @ kernel for b in batches]
  want_mean = np.mean([f.mean(0) for f in features], axis=0)
  want_var = np.mean([f.var(0) for f in features], axis=0)  # Biased, per batch.
  np.testing.assert_allclose(stats['bn']['mean'], want_mean, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(stats['bn']['var'], want_var, rtol=1e-4,
                             atol=1e-5)


def test_a_model_without_batch_norm_is_left_alone():
  assert precise_bn.make_recompute(_ConvBN())({}, {}, iter([])) == {}
