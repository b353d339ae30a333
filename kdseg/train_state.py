"""The training state: everything a step reads and writes, in one pytree."""

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from kdseg import connectors as connectors_lib


@flax.struct.dataclass
class TrainState:
  """Student parameters, batch-norm statistics, optimizer state, step, rng.

  The teacher is never part of it: it is not optimised and not checkpointed
  with the student. Connector adapters (`kdseg.connectors`) train with the
  student but sit beside it, in `connector_params` / `connector_stats` ({}
  without connectors), so that `params` / `batch_stats` are exactly the
  student's variables.
  """
  step: jax.Array  # int32 scalar: the number of updates applied.
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # uint32 [2]; per-step randomness is fold_in(rng, step).
  connector_params: Any = flax.struct.field(default_factory=dict)
  connector_stats: Any = flax.struct.field(default_factory=dict)


def join_trainable(params: Any, connector_params: Any) -> Any:
  """What the optimizer updates: the student's params, and the connectors'
  beside them when there are any (without, the tree is `params` itself, as
  in a plain training run)."""
  if not connector_params:
    return params
  return {'model': params, 'connectors': connector_params}


def split_trainable(trainable: Any, connector_params: Any) -> tuple[Any, Any]:
  """Inverse of `join_trainable`: (params, connector_params)."""
  if not connector_params:
    return trainable, connector_params
  return trainable['model'], trainable['connectors']


def init_variables(model: nn.Module, rng: jax.Array,
                   image_shape: tuple[int, int, int]) -> dict[str, Any]:
  """Initialises a model's variables for images of `image_shape` (H, W, 3)."""
  images = jnp.zeros((1, *image_shape), jnp.float32)
  variables = model.init({'params': rng, 'dropout': rng}, images, train=False)
  return dict(variables)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       rng: jax.Array, image_shape: tuple[int, int, int], *,
                       connectors: Optional[nn.Module] = None) -> TrainState:
  """A fresh state: parameters from `rng`, step 0.

  Args:
    model: the trained network.
    tx: the optimizer.
    rng: the run's key.
    image_shape: (H, W, 3) to initialise at.
    connectors: `kdseg.connectors.Connectors`, or None.
  """
  init_rng, state_rng = jax.random.split(rng)
  variables = init_variables(model, init_rng, image_shape)
  params = variables['params']
  # A key of its own: the student initialises as it would without them.
  adapters = connectors_lib.init(connectors, jax.random.fold_in(init_rng, 1))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}),
                    opt_state=tx.init(join_trainable(params,
                                                     adapters['params'])),
                    rng=state_rng, connector_params=adapters['params'],
                    connector_stats=adapters['batch_stats'])


def abstract_variables(model: nn.Module, image_shape: tuple[int, int, int]
                       ) -> dict[str, Any]:
  """{'params', 'batch_stats'} shapes and dtypes of a model, nothing allocated."""
  shapes = jax.eval_shape(
      lambda rng: init_variables(model, rng, image_shape),
      jax.random.PRNGKey(0))
  return {'params': shapes['params'],
          'batch_stats': shapes.get('batch_stats', {})}


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation,
                         image_shape: tuple[int, int, int], *,
                         connectors: Optional[nn.Module] = None
                         ) -> TrainState:
  """The state's shapes and dtypes, without allocating it (for restoring)."""
  return jax.eval_shape(
      lambda rng: create_train_state(model, tx, rng, image_shape,
                                     connectors=connectors),
      jax.random.PRNGKey(0))
