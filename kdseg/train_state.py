"""The training state: everything a step reads and writes, in one pytree."""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Student parameters, batch-norm statistics, optimizer state, step, rng.

  The teacher is never part of it: it is not optimised and not checkpointed
  with the student.
  """
  step: jax.Array  # int32 scalar: the number of updates applied.
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # uint32 [2]; per-step randomness is fold_in(rng, step).


def init_variables(model: nn.Module, rng: jax.Array,
                   image_shape: tuple[int, int, int]) -> dict[str, Any]:
  """Initialises a model's variables for images of `image_shape` (H, W, 3)."""
  images = jnp.zeros((1, *image_shape), jnp.float32)
  variables = model.init({'params': rng, 'dropout': rng}, images, train=False)
  return dict(variables)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       rng: jax.Array, image_shape: tuple[int, int, int]
                       ) -> TrainState:
  """A fresh state: parameters from `rng`, step 0."""
  init_rng, state_rng = jax.random.split(rng)
  variables = init_variables(model, init_rng, image_shape)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}),
                    opt_state=tx.init(params), rng=state_rng)


def abstract_variables(model: nn.Module, image_shape: tuple[int, int, int]
                       ) -> dict[str, Any]:
  """{'params', 'batch_stats'} shapes and dtypes of a model, nothing allocated."""
  shapes = jax.eval_shape(
      lambda rng: init_variables(model, rng, image_shape),
      jax.random.PRNGKey(0))
  return {'params': shapes['params'],
          'batch_stats': shapes.get('batch_stats', {})}


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation,
                         image_shape: tuple[int, int, int]) -> TrainState:
  """The state's shapes and dtypes, without allocating it (for restoring)."""
  return jax.eval_shape(
      lambda rng: create_train_state(model, tx, rng, image_shape),
      jax.random.PRNGKey(0))
