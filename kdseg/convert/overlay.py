"""Initialise a model from stored variables, matching paths and shapes.

`init_from` reads a checkpoint (a converted torchvision backbone or model
written by `python -m kdseg.convert`, or a training run's workdir) and lays
what it holds over freshly initialised variables: every stored tensor whose
path and shape exist in the model replaces the fresh one; everything else
keeps its initialisation. An ImageNet ResNet-50 thus fills the backbone of
`deeplabv3_resnet50`, `fcn_resnet50` or `deeplabv3plus_resnet50` and leaves
their heads as initialised; a COCO `deeplabv3_resnet50` checkpoint fills a
21-class model but its classifier conv of another class count stays fresh.
"""

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from kdseg import checkpoint
from kdseg import progress
from kdseg.convert import trees

_SHOWN = 5


@dataclasses.dataclass(frozen=True)
class Report:
  """What `overlay` did, as 'collection/module/.../leaf' paths."""
  loaded: tuple[str, ...]  # Taken from the source.
  wrong_shape: tuple[str, ...]  # 'path: source (..), model (..)'; kept.
  kept: tuple[str, ...]  # In the model only: initialisation kept.
  unused: tuple[str, ...]  # In the source only.
  loaded_size: int  # Scalars loaded, batch statistics included.

  def summary(self) -> str:
    lines = [f'loaded {len(self.loaded)} tensors ({self.loaded_size:,d} '
             'values)']
    if self.wrong_shape:
      lines.append(f'kept {len(self.wrong_shape)} initialised, shapes differ: '
                   + '; '.join(self.wrong_shape[:_SHOWN]))
    if self.kept:
      lines.append(f'kept {len(self.kept)} initialised, not in the source: '
                   + _by_module(self.kept))
    if self.unused:
      lines.append(f'ignored {len(self.unused)} stored tensors the model '
                   'lacks: ' + _by_module(self.unused))
    return '\n'.join(lines)


def _by_module(paths: tuple[str, ...]) -> str:
  """'classifier (22), aux_classifier (6)': counts per top-level module."""
  counts: dict[str, int] = {}
  for path in paths:
    module = path.split('/')[1]
    counts[module] = counts.get(module, 0) + 1
  return ', '.join(f'{m} ({n})' for m, n in counts.items())


def overlay(variables: Mapping[str, Any], source: Mapping[str, Any]
            ) -> tuple[dict[str, Any], Report]:
  """Copies each leaf of `source` whose path and shape exist in `variables`.

  Args:
    variables: the model's {'params', 'batch_stats'} (any array type).
    source: stored {'params', 'batch_stats'}, complete or a sub-tree such as
      {'params': {'backbone': ...}, 'batch_stats': {'backbone': ...}}.

  Returns:
    (new variables as nested dicts, report). Loaded leaves are NumPy arrays
    cast to the model's dtype; the others are the model's own.
  """
  target = trees.flatten(variables)
  stored = trees.flatten(source)
  out, loaded, wrong_shape, size = {}, [], [], 0
  for path, leaf in target.items():
    value = stored.get(path)
    if value is None:
      out[path] = leaf
    elif tuple(np.shape(value)) != tuple(leaf.shape):
      out[path] = leaf
      wrong_shape.append(f'{path}: source {tuple(np.shape(value))}, model '
                         f'{tuple(leaf.shape)}')
    else:
      out[path] = np.asarray(value, dtype=leaf.dtype)
      loaded.append(path)
      size += int(np.prod(leaf.shape))
  report = Report(
      loaded=tuple(loaded), wrong_shape=tuple(wrong_shape),
      kept=tuple(p for p in target if p not in stored),
      unused=tuple(p for p in stored if p not in target), loaded_size=size)
  return trees.unflatten(out), report


def init_from(variables: Mapping[str, Any], path: str, *,
              log: Callable[[str], None] = progress.write) -> dict[str, Any]:
  """`overlay` of the checkpoint at `path` onto `variables`, reported to `log`.

  Args:
    variables: the model's freshly initialised {'params', 'batch_stats'}.
    path: a `python -m kdseg.convert` output directory or a training run's
      workdir (its best checkpoint is read), or their `checkpoints/` folder.
    log: receives the report.

  Returns:
    {'params', 'batch_stats'} with the stored tensors in place.

  Raises:
    ValueError: no checkpoint at `path`, or not one tensor of it fits the
      model (another architecture).
  """
  stored, meta = checkpoint.restore_model_variables(path)
  new, report = overlay(variables, stored)
  origin = meta.get('model', '?')
  if not report.loaded:
    raise ValueError(
        f'Nothing in {path!r} ({origin}) fits the model: no stored tensor '
        'has a path and shape of the model. ' + report.summary())
  log(f'Initialised from {path} ({origin}): ' + report.summary())
  return new


def init_state_from(state: Any, path: str, **kwargs: Any) -> Any:
  """`init_from` on a TrainState's params and batch_stats; '' is a no-op.

  Call it on a fresh state only (not a resumed one): the optimizer state is
  kept, which is right for optimizers whose initial state does not depend on
  the parameter values (SGD momentum, Adam moments: zeros).
  """
  if not path:
    return state
  new = init_from({'params': state.params, 'batch_stats': state.batch_stats},
                  path, **kwargs)
  return state.replace(params=new['params'],
                       batch_stats=new.get('batch_stats', {}))
