"""Optimizers built from the config."""

import jax
import ml_collections
import optax

from kdseg import schedules


def create_learning_rate_fn(config: ml_collections.ConfigDict):
  return schedules.create(config.train.learning_rate,
                          total_steps=config.train.steps,
                          name='config.train.learning_rate')


def _decay_mask(params):
  # Weight decay on convolution kernels only, not on biases or norm scales.
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def create_optimizer(config: ml_collections.ConfigDict, lr_fn
                     ) -> optax.GradientTransformation:
  """SGD with momentum (the segmentation recipe) or AdamW, with decay."""
  train = config.train
  parts = []
  if train.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(train.grad_clip_norm))
  if train.optimizer == 'sgd':
    if train.weight_decay:
      parts.append(optax.add_decayed_weights(train.weight_decay, _decay_mask))
    parts.append(optax.sgd(lr_fn, momentum=train.momentum or None))
  elif train.optimizer == 'adamw':
    parts.append(optax.adamw(lr_fn, weight_decay=train.weight_decay,
                             mask=_decay_mask))
  else:
    raise ValueError(f'config.train.optimizer: unknown {train.optimizer!r}; '
                     "valid: ['sgd', 'adamw'].")
  return optax.chain(*parts)
