"""Inference: images in, class maps out, exactly as evaluation scores them.

Prediction panels, benchmarks and the exported SavedModel all call
`segment` (or `predict_classes` for a pipeline batch), so what they show, time
or ship is what evaluation measures: normalisation as in the input pipeline,
the model in eval mode, logits resized bilinearly to the image size, then the
argmax.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdseg import compiler
from kdseg.data import transforms
from kdseg import losses


def normalize(images: jax.Array) -> jax.Array:
  """uint8 (or float in [0, 255]) [..., 3] -> float32 (x - mean) / std.

  The same float32 arithmetic as the tf.data pipeline's `normalize`.
  """
  images = jnp.asarray(images).astype(jnp.float32)
  return ((images - jnp.asarray(transforms.MEAN_RGB, jnp.float32)) /
          jnp.asarray(transforms.STDDEV_RGB, jnp.float32))


def classes_from_normalized(model: nn.Module, variables: Any,
                            images: jax.Array) -> jax.Array:
  """Class maps of normalised images.

  Args:
    model: a segmentation model (run in eval mode).
    variables: its {'params', 'batch_stats'}; empty collections are dropped.
    images: float32 [N, H, W, 3], normalised.

  Returns:
    int32 [N, H, W]: the argmax of the logits resized to (H, W).
  """
  variables = {k: v for k, v in variables.items() if v}
  logits, _ = model.apply(variables, images, train=False)
  logits = losses.resize_to(logits, images.shape[1:3])
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def segment(model: nn.Module, variables: Any, images: jax.Array) -> jax.Array:
  """uint8 images [N, H, W, 3] -> int32 class maps [N, H, W]."""
  return classes_from_normalized(model, variables, normalize(images))


# Jitted versions, compiled once per model and input shape (flax modules are
# hashable, so the model can be a static argument). Built on first use: the
# compiler options depend on the backend, which importing must not start.
@functools.cache
def _jitted(fn: Callable) -> Callable:
  return compiler.jit(fn, static_argnums=0)


def jit_classes_from_normalized(model: nn.Module, variables: Any,
                                images: jax.Array) -> jax.Array:
  """Jitted `classes_from_normalized`."""
  return _jitted(classes_from_normalized)(model, variables, images)


def jit_segment(model: nn.Module, variables: Any,
                images: jax.Array) -> jax.Array:
  """Jitted `segment`."""
  return _jitted(segment)(model, variables, images)


def predict_classes(model: nn.Module, variables: Any,
                    images: jax.Array) -> np.ndarray:
  """Class maps of a pipeline batch, on the host for drawing.

  Args:
    model, variables: as in `classes_from_normalized`.
    images: float32 [N, H, W, 3] normalised by the input pipeline.

  Returns:
    int32 [N, H, W] as NumPy, e.g. for `kdseg.visualize.batch_panels`.
  """
  images = np.asarray(jax.device_get(images))
  return np.asarray(jax.device_get(
      jit_classes_from_normalized(model, variables, images)))
