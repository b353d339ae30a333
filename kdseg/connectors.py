"""Connectors: make a student map comparable with its teacher target.

Two steps, in this order:
1. A trainable adapter (1x1 convolution + batch norm, FitNets' regressor)
   maps the student's channels to the teacher's, for a term whose
   `connector` is 'auto' and whose loss needs equal channels
   (`kdseg.losses.spec(name).same_channels`) while the channels differ, and
   always for `fitnet`, whose regressor is part of the method.
2. The (adapted) student map is resized bilinearly to the teacher map's
   spatial size (`kdseg.losses.resize_to`): the teacher's map is the target
   and stays as computed. Adapting first runs the convolution at the
   student's resolution.

Adapters train with the student, by the same optimizer, but live in their
own subtree (`TrainState.connector_params` / `connector_stats`): they are
never part of the student's variables, checkpointed model or evaluation.
"""

from typing import Any, Iterable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdseg import losses
from kdseg.models import layers

ALWAYS_ADAPT = ('fitnet',)


def needs_adapter(loss: str, connector: str, student_channels: int,
                  teacher_channels: int) -> bool:
  """Whether a term gets an adapter (see the module docstring)."""
  if connector == 'none':
    return False
  if loss in ALWAYS_ADAPT:
    return True
  return (losses.spec(loss).same_channels
          and student_channels != teacher_channels)


def plan(entries: Iterable[tuple[Any, tuple[int, ...], tuple[int, ...]]]
         ) -> dict[str, tuple[int, int]]:
  """label -> (input, output) channels of the adapter each term needs.

  Args:
    entries: (term, student map shape, teacher map shape) for every term of
      every stage (`kdseg.terms.Term`s).

  Raises:
    ValueError: one label needs different adapters in different stages.
  """
  out = {}
  for term, s, t in entries:
    if not needs_adapter(term.loss, term.connector, s[-1], t[-1]):
      continue
    channels = (s[-1], t[-1])
    if out.setdefault(term.label, channels) != channels:
      raise ValueError(
          f'config: the term {term.label!r} needs adapters of '
          f'{out[term.label]} and of {channels} (input, output) channels in '
          'different stages; give the two terms different labels.')
  return out


class Connectors(nn.Module):
  """One adapter per label: [B, h, w, Cin] -> [B, h, w, Cout].

  Attributes:
    channels: ((label, Cin, Cout), ...).
    axis_name: the device axis for batch-norm statistics over the global
      batch (as the student's), or None.
  """
  channels: tuple[tuple[str, int, int], ...]
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, maps: Mapping[str, jax.Array], *, train: bool
               ) -> dict[str, jax.Array]:
    # Only the labels given: a stage runs the adapters of its own terms.
    return {label: layers.ConvNormAct(
        out, kernel_size=1, activation=None, axis_name=self.axis_name,
        name=label)(maps[label], train=train)
            for label, _, out in self.channels if label in maps}


def create(channels: Mapping[str, tuple[int, int]], *,
           axis_name: Optional[str] = None) -> Optional[Connectors]:
  """The adapters of a `plan`, or None when there are none."""
  if not channels:
    return None
  return Connectors(tuple((label, cin, cout) for label, (cin, cout)
                          in sorted(channels.items())), axis_name=axis_name)


def init(module: Optional[Connectors], rng: jax.Array) -> dict[str, Any]:
  """{'params', 'batch_stats'} of the adapters ({} each without a module)."""
  if module is None:
    return {'params': {}, 'batch_stats': {}}
  # A 1x1 convolution's variables do not depend on the spatial size.
  maps = {label: jnp.zeros((1, 1, 1, cin), jnp.float32)
          for label, cin, _ in module.channels}
  variables = module.init(rng, maps, train=False)
  return {'params': variables['params'],
          'batch_stats': variables.get('batch_stats', {})}


def connect(module: Optional[Connectors], params: Any, batch_stats: Any,
            students: Mapping[str, jax.Array],
            targets: Mapping[str, jax.Array], *, train: bool = True
            ) -> tuple[dict[str, jax.Array], Any]:
  """Adapts and resizes student maps to their targets.

  Args:
    module: from `create` (None: no adapters).
    params, batch_stats: the adapters' variables.
    students: label -> student map [B, h, w, Cs]; labels without an
      adapter are only resized, and adapters of absent labels do not run.
    targets: label -> teacher map [B, H, W, Ct].
    train: batch statistics (and their update) or running averages.

  Returns:
    (label -> float32 [B, H, W, C'] with C' = Ct where adapted, else Cs;
     new batch_stats).
  """
  out = dict(students)
  if module is not None:
    inputs = {label: students[label] for label, _, _ in module.channels
              if label in students}
    variables = {'params': params, 'batch_stats': batch_stats}
    if train:
      adapted, updates = module.apply(variables, inputs, train=True,
                                      mutable=['batch_stats'])
      batch_stats = updates['batch_stats']
    else:
      adapted = module.apply(variables, inputs, train=False)
    out.update(adapted)
  resized = {label: losses.resize_to(x, targets[label].shape[1:3])
             for label, x in out.items()}
  return resized, batch_stats
