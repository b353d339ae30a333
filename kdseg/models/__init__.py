"""Segmentation model zoo.

    model = kdseg.models.create('deeplabv3_resnet50', num_classes=21, aux=True)
    variables = model.init(rng, images, train=False)
    logits, features = model.apply(variables, images, train=False)
    # Training: BN statistics are a mutable collection, dropout needs an rng.
    (logits, features), updates = model.apply(
        variables, images, train=True, mutable=['batch_stats'],
        rngs={'dropout': dropout_rng})

Every model maps float32 images [B, H, W, 3] to `(logits, features)`, where
logits are float32 [B, H/os, W/os, num_classes] at `model.output_stride` (os)
and `features` is a dict of named maps; see `kdseg.models.segmenters` and the
backbone modules for the names.
"""

import inspect
import numbers
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdseg.models import zoo
from kdseg.models.layers import resize_bilinear
from kdseg.models.segmenters import DeepLabV3
from kdseg.models.segmenters import DeepLabV3Plus
from kdseg.models.segmenters import FCN
from kdseg.models.segmenters import LRASPP
from kdseg.models.segnet import SegNet

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    # torchvision mirrors (same layers, shapes and parameter counts).
    'fcn_resnet50': zoo.fcn_resnet50,
    'fcn_resnet101': zoo.fcn_resnet101,
    'deeplabv3_resnet50': zoo.deeplabv3_resnet50,
    'deeplabv3_resnet101': zoo.deeplabv3_resnet101,
    'deeplabv3_mobilenet_v3_large': zoo.deeplabv3_mobilenet_v3_large,
    'lraspp_mobilenet_v3_large': zoo.lraspp_mobilenet_v3_large,
    # Other full-size models.
    'deeplabv3_resnet18': zoo.deeplabv3_resnet18,
    'deeplabv3_resnet34': zoo.deeplabv3_resnet34,
    'deeplabv3_mobilenet_v2': zoo.deeplabv3_mobilenet_v2,
    'deeplabv3plus_resnet50': zoo.deeplabv3plus_resnet50,
    'segnet_vgg16': zoo.segnet_vgg16,
    # Tiny models for tests and CPU runs.
    'tiny_deeplabv3': zoo.tiny_deeplabv3,
    'tiny_fcn': zoo.tiny_fcn,
    'tiny_lraspp': zoo.tiny_lraspp,
}


# Computation dtypes a model (student or teacher) can run in, by config name.
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def available() -> list[str]:
  """Names accepted by `create`, sorted."""
  return sorted(_REGISTRY)


def options(name: str) -> list[str]:
  """The keyword options `create(name, ...)` accepts besides num_classes."""
  constructor = _lookup(name)
  return [p for p in inspect.signature(constructor).parameters
          if p != 'num_classes']


def _lookup(name: str) -> Callable[..., nn.Module]:
  if name not in _REGISTRY:
    raise ValueError(f'Unknown model {name!r}; valid names: '
                     f'{", ".join(available())}.')
  return _REGISTRY[name]


def create(name: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds the model registered as `name`.

  Args:
    name: one of `available()`.
    num_classes: positive number of output classes.
    **kwargs: options of that model (see `options(name)`), typically `aux`,
      `output_stride`, `dtype` (a dtype or its name, e.g. 'bfloat16') and
      `axis_name`.

  Returns:
    An unbound flax module with an `output_stride` attribute.

  Raises:
    ValueError: unknown name or option, or invalid `num_classes`.
  """
  constructor = _lookup(name)
  if (isinstance(num_classes, bool) or
      not isinstance(num_classes, numbers.Integral) or num_classes < 1):
    raise ValueError(
        f'num_classes must be a positive int; got {num_classes!r}.')
  accepted = options(name)
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    raise ValueError(f'Model {name!r} does not accept option(s) {unknown}; '
                     f'accepted options: {accepted}.')
  if isinstance(kwargs.get('dtype'), str):
    kwargs['dtype'] = jnp.dtype(kwargs['dtype'])
  return constructor(num_classes=int(num_classes), **kwargs)


def count_params(variables_or_params: Mapping[str, Any]) -> int:
  """Number of parameters (scalars) in `variables['params']` or a params tree.

  Works on arrays and on `jax.ShapeDtypeStruct`s (from `jax.eval_shape`);
  `batch_stats` and other collections are not counted.
  """
  tree = variables_or_params
  if isinstance(tree, Mapping) and 'params' in tree:
    tree = tree['params']
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


__all__ = [
    'COMPUTE_DTYPES',
    'DeepLabV3', 'DeepLabV3Plus', 'FCN', 'LRASPP', 'SegNet', 'available',
    'count_params', 'create', 'options', 'resize_bilinear',
]
