"""Pure forward passes of teachers and students.

A model's `apply` returns `(logits, features)`; these wrappers fix the mode
(eval for teachers, train for students) and the dtype handling.
"""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdseg import compiler


def teacher_apply(model: nn.Module, variables: Any, images: jax.Array, *,
                  dtype: Any = jnp.float32) -> tuple[jax.Array, dict]:
  """Teacher forward in eval mode without gradient bookkeeping.

  Args:
    model: the teacher module (built with its computation dtype).
    variables: {'params', 'batch_stats'} of the teacher, frozen.
    images: float32 [B, H, W, 3].
    dtype: the teacher's computation dtype; with bfloat16 the parameters and
      images are cast once, and logits come back as float32 so that softmaxes
      in the losses are float32.

  Returns:
    (logits float32 [B, h, w, C], features) with gradients stopped.
  """
  variables = jax.lax.stop_gradient(variables)
  if jnp.dtype(dtype) != jnp.float32:
    variables = jax.tree.map(lambda x: x.astype(dtype), variables)
    images = images.astype(dtype)
  logits, features = model.apply(variables, images, train=False)
  out = (logits.astype(jnp.float32), features)
  return jax.lax.stop_gradient(out)


def make_teacher_forward(model: nn.Module, variables: Any, *,
                         dtype: Any = jnp.float32
                         ) -> Callable[[jax.Array], tuple[jax.Array, dict]]:
  """A jitted closure `images -> (logits, features)` over frozen variables."""
  return compiler.jit(lambda images: teacher_apply(model, variables, images,
                                              dtype=dtype))


def student_apply(model: nn.Module, params: Any, batch_stats: Any,
                  images: jax.Array, *, train: bool,
                  dropout_rng: Optional[jax.Array] = None
                  ) -> tuple[jax.Array, dict, Any]:
  """Student forward.

  Args:
    model: the student module.
    params, batch_stats: its variables.
    images: float32 [B, H, W, 3].
    train: train mode (batch statistics, dropout) or eval mode.
    dropout_rng: key for dropout in train mode.

  Returns:
    (logits [B, h, w, C], features, new batch_stats); in eval mode the batch
    stats come back unchanged.
  """
  variables = {'params': params}
  if batch_stats:
    variables['batch_stats'] = batch_stats
  if not train:
    logits, features = model.apply(variables, images, train=False)
    return logits, features, batch_stats
  rngs = {'dropout': dropout_rng} if dropout_rng is not None else {}
  (logits, features), updates = model.apply(
      variables, images, train=True, mutable=['batch_stats'], rngs=rngs)
  return logits, features, updates.get('batch_stats', batch_stats)


def output_shapes(model: nn.Module, image_shape: tuple[int, int, int]
                  ) -> tuple[tuple[int, ...], dict[str, tuple[int, ...]]]:
  """(logits shape, feature name -> shape) for one image, nothing computed.

  Args:
    model: a segmentation model.
    image_shape: (H, W, 3).

  Returns:
    Shapes with batch 1, e.g. ((1, 8, 8, 21), {'layer1': (1, 16, 16, 64),
    ...}), from `jax.eval_shape`.
  """
  images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  (logits, features), _ = jax.eval_shape(
      lambda rng, x: model.init_with_output(
          {'params': rng, 'dropout': rng}, x, train=False),
      jax.random.PRNGKey(0), images)
  return tuple(logits.shape), {k: tuple(v.shape) for k, v in features.items()}
