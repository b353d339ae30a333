"""Batch-norm population statistics recomputed with the final weights.

Batch norm normalises with the batch's statistics in training and with
running averages at evaluation. kdseg's models follow PyTorch's momentum 0.1
(flax momentum 0.9): the running averages are dominated by the last ~10
training batches, taken with weights that were still moving. With small
batches this makes the evaluated (and saved) network noticeably worse than
its weights allow, and on CamVid the distilled students suffered most: a
KD student evaluated at 31.8% mIoU with its running averages and 39.7% with
recomputed ones, the baseline 41.6% vs 42.6% (RESULTS.md). "Precise BN"
(Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021) replaces the
running averages by the mean of per-batch statistics over many training
batches with the weights frozen.

`recompute` works for any flax model whose batch norms update
`ra = m * ra + (1 - m) * batch_stat` (flax's `nn.BatchNorm`): one forward in
train mode from zeroed statistics gives `(1 - m) * batch_stat`, and one from
ones gives `m` per layer.
"""

from typing import Any, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from kdseg import compiler


def make_recompute(model: nn.Module):
  """(params, batch_stats, batches) -> population batch_stats.

  `model` is built without a device axis (per-device statistics are
  averaged like batches). `batches` yields float32 [B, H, W, 3] images.
  """

  def stats_from(params, stats, images):
    # Train mode as in training, dropout included (with a fixed key).
    _, updates = model.apply({'params': params, 'batch_stats': stats},
                             images, train=True, mutable=['batch_stats'],
                             rngs={'dropout': jax.random.PRNGKey(0)})
    return updates['batch_stats']

  update = compiler.jit(stats_from)

  def recompute(params: Any, batch_stats: Any,
                batches: Iterable[np.ndarray]) -> Any:
    if not jax.tree.leaves(batch_stats):
      return batch_stats
    zeros = jax.tree.map(jnp.zeros_like, batch_stats)
    total, count, keep = None, 0, None
    for images in batches:
      scaled = update(params, zeros, images)
      if keep is None:
        keep = jax.tree.map(lambda a, b: b - a, scaled,
                            update(params, jax.tree.map(jnp.ones_like,
                                                        batch_stats), images))
      stats = jax.tree.map(lambda s, m: s / (1 - m), scaled, keep)
      total = stats if total is None else jax.tree.map(jnp.add, total, stats)
      count += 1
    if not count:
      raise ValueError('precise BN: no batches to recompute statistics on.')
    mean = jax.tree.map(lambda t: np.asarray(t) / count, total)
    if jax.process_count() > 1:
      # Each process averaged its own batches: average the processes.
      mean = jax.tree.map(lambda x: np.mean(
          multihost_utils.process_allgather(x), axis=0), mean)
    return jax.tree.map(lambda x, ref: jnp.asarray(x, ref.dtype), mean,
                        batch_stats)

  return recompute
