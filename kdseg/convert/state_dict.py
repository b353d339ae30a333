"""torchvision state_dict -> kdseg variables, in NumPy.

`from_torchvision` takes a state dict as {key: NumPy array} (what
`{k: v.numpy() for k, v in model.state_dict().items()}` gives) and returns
kdseg's {'params', 'batch_stats'}. It never imports torch. Per tensor:

  convolution weight [Cout, Cin / groups, kh, kw] -> kernel [kh, kw, Cin /
    groups, Cout] (depthwise: [C, 1, k, k] -> [k, k, 1, C]);
  convolution bias -> bias;
  BatchNorm weight, bias -> params scale, bias;
  BatchNorm running_mean, running_var -> batch_stats mean, var;
  BatchNorm num_batches_tracked -> dropped.

Every key is looked up in the name table (`kdseg.convert.names`) and every
shape checked against the kdseg model's, so a state dict of another model, or
of another version of this one, fails with the first mismatches named.
"""

import functools
import warnings
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from kdseg import models
from kdseg.convert import names
from kdseg.convert import sources
from kdseg.convert import trees

_SHOWN = 5  # Mismatches listed per kind in an error message.


def _is_ignored(key: str, source: sources.Source) -> bool:
  return (key.rpartition('.')[2] in names.IGNORED_TENSORS
          or key.startswith(source.dropped))


def _to_kdseg(array: np.ndarray) -> np.ndarray:
  array = np.asarray(array, np.float32)
  return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array


def _to_torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape


def has_aux(state_dict: Mapping[str, Any]) -> bool:
  """Whether a segmentation state dict carries an auxiliary classifier."""
  return any(k.startswith('aux_classifier.') for k in state_dict)


def class_count(name: str, state_dict: Mapping[str, Any]) -> Optional[int]:
  """Classes of a segmentation state dict (None: a backbone, or unknown)."""
  source = sources.get(name)
  if source.is_backbone:
    return None
  target = f'params/{source.classifiers[0]}/bias'
  key = next(k for k, p in names.table(source.layers(False)).items()
             if p == target)
  value = state_dict.get(key)
  return None if value is None else int(np.shape(value)[0])


@functools.lru_cache(maxsize=32)
def _model_shapes(model_name: str, num_classes: int,
                  aux: bool) -> tuple[tuple[str, tuple[int, ...]], ...]:
  options = {'aux': True} if aux else {}
  model = models.create(model_name, num_classes=num_classes, **options)
  rng = jax.random.PRNGKey(0)
  shapes = jax.eval_shape(lambda: model.init(
      {'params': rng, 'dropout': rng}, jnp.zeros((1, 64, 64, 3)),
      train=False))
  return tuple((path, tuple(leaf.shape))
               for path, leaf in trees.flatten(dict(shapes)).items())


def model_shapes(model_name: str, *, num_classes: int = 1,
                 aux: bool = False) -> dict[str, tuple[int, ...]]:
  """{path: shape} of a kdseg model's variables (traced, cached)."""
  return dict(_model_shapes(model_name, int(num_classes), bool(aux)))


def expected_shapes(name: str, *, num_classes: int = 1,
                    aux: bool = False) -> dict[str, tuple[int, ...]]:
  """{path: shape} of the kdseg variables `from_torchvision(name)` returns.

  Traced (`jax.eval_shape`), nothing allocated. For a backbone, the
  'backbone' sub-tree of `sources.get(name).model`.
  """
  source = sources.get(name)
  flat = model_shapes(source.model, num_classes=num_classes, aux=aux)
  if source.is_backbone:
    flat = {p: s for p, s in flat.items() if p.split('/')[1] == 'backbone'}
  return flat


def _mismatches(name: str, state_dict: Mapping[str, Any],
                table: dict[str, str],
                expected: dict[str, tuple[int, ...]]) -> list[str]:
  source = sources.get(name)
  missing = [k for k in table if k not in state_dict]
  unexpected = [k for k in state_dict
                if k not in table and not _is_ignored(k, source)]
  shape = []
  for key, path in table.items():
    if key in state_dict:
      got = tuple(np.shape(state_dict[key]))
      want = _to_torch_shape(expected[path])
      if got != want:
        shape.append(f'{key} {got}, expected {want}')
  problems = []
  for kind, items in (('missing', missing), ('unexpected', unexpected),
                      ('wrong shape', shape)):
    if items:
      more = f' (+{len(items) - _SHOWN} more)' if len(items) > _SHOWN else ''
      problems.append(f'{len(items)} {kind}: {", ".join(items[:_SHOWN])}'
                      f'{more}')
  return problems


def from_torchvision(name: str, state_dict: Mapping[str, Any], *,
                     num_classes: Optional[int] = None,
                     seed: int = 0) -> dict[str, Any]:
  """Converts a torchvision state dict into kdseg variables.

  Args:
    name: the torchvision model it comes from, one of
      `kdseg.convert.available()`: a segmentation model ('fcn_resnet50', ...,
      'lraspp_mobilenet_v3_large') or an ImageNet backbone ('resnet18',
      'resnet34', 'resnet50', 'resnet101', 'mobilenet_v2',
      'mobilenet_v3_large').
    state_dict: {key: array} in PyTorch layout (NumPy arrays or anything
      `np.asarray` reads), e.g. `{k: v.numpy() for k, v in
      model.state_dict().items()}`.
    num_classes: segmentation models only: the class count of the result.
      When it differs from the state dict's, the layers whose width is the
      class count (`sources.get(name).classifiers`) are re-initialised
      (He-normal fan_out kernels, zero biases, as a fresh kdseg model) and a
      warning names them. None keeps the state dict's classes.
    seed: NumPy seed of that re-initialisation.

  Returns:
    {'params': ..., 'batch_stats': ...}, nested dicts of float32 NumPy arrays:
    the whole kdseg model of the same name for a segmentation model (with
    'aux_classifier' when the state dict has one), the 'backbone' sub-tree
    shared by `sources.get(name).initialises` for a backbone.

  Raises:
    ValueError: unknown name, or keys / shapes that do not match (the first
      missing, unexpected and wrongly shaped keys are listed).
  """
  source = sources.get(name)
  if num_classes is not None and source.is_backbone:
    raise ValueError(f'{name} is a backbone: it has no classes to set.')
  aux = not source.is_backbone and has_aux(state_dict)
  table = names.table(source.layers(aux))
  stored_classes = class_count(name, state_dict)
  expected = expected_shapes(name, num_classes=stored_classes or 1, aux=aux)
  problems = _mismatches(name, state_dict, table, expected)
  if problems:
    raise ValueError(
        f"The state dict does not match torchvision's {name} (kdseg "
        f'{source.model}): ' + '; '.join(problems) + '.')
  flat = {path: _to_kdseg(state_dict[key]) for key, path in table.items()}
  if set(flat) != set(expected):  # The name table and the model disagree.
    raise AssertionError(
        f'kdseg.convert.names does not cover {source.model}: '
        f'{sorted(set(flat) ^ set(expected))[:_SHOWN]}')
  variables = trees.unflatten(flat)
  if num_classes is not None and num_classes != stored_classes:
    variables = reinit_classifiers(variables, source.classifiers,
                                   num_classes, seed=seed)
    reset = [p for p in source.classifiers
             if p.split('/')[0] in variables['params']]
    warnings.warn(
        f'{name}: the state dict has {stored_classes} classes, '
        f'{num_classes} requested; re-initialised the classifier layers '
        f'{", ".join(reset)} ({", ".join(_torch_names(table, reset))}).',
        stacklevel=2)
  return variables


def _torch_names(table: dict[str, str], paths: list[str]) -> list[str]:
  modules = {path.rpartition('/')[0]: key.rpartition('.')[0]
             for key, path in table.items()}
  return [modules[f'params/{p}'] for p in paths]


def reinit_classifiers(variables: dict[str, Any], paths: tuple[str, ...],
                       num_classes: int, *, seed: int = 0) -> dict[str, Any]:
  """Returns `variables` with new 1x1 classifier convolutions.

  Args:
    variables: {'params', 'batch_stats'}; not modified.
    paths: module paths under 'params' (e.g. 'classifier/classifier'); the
      ones absent from `variables` (an aux head it lacks) are skipped.
    num_classes: output width of the new layers.
    seed: NumPy seed.

  Returns:
    A copy whose layers at `paths` have kernels [kh, kw, Cin, num_classes]
    drawn He-normal (fan_out) and zero biases; the rest is shared.
  """
  if int(num_classes) < 1:
    raise ValueError(f'num_classes must be positive; got {num_classes}.')
  rng = np.random.default_rng(seed)
  flat = dict(trees.flatten(variables))
  for path in paths:
    kernel_path = f'params/{path}/kernel'
    if kernel_path not in flat:
      continue
    kh, kw, cin, _ = flat[kernel_path].shape
    std = np.sqrt(2.0 / (kh * kw * num_classes))
    flat[kernel_path] = rng.normal(0.0, std, (kh, kw, cin, num_classes)
                                   ).astype(np.float32)
    flat[f'params/{path}/bias'] = np.zeros(num_classes, np.float32)
  return trees.unflatten(flat)
