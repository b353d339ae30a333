"""Frozen teachers: one or several, their fields, weights and combination
(restored by `kdseg.build.load_teachers`).

`config.teacher` is the primary teacher; `config.extra_teachers` adds more,
each under a label with the same fields (`name`, `options`, `checkpoint`,
`dtype`, `weight`) and restored from its own checkpoint. Weights are
normalised to sum to 1 by `TeacherSet.create`.

Logit terms distill from the teachers' combination (`combine_logits`): for
a loss with a temperature T the softened predictions are averaged,
`softmax(target / T) = sum_i w_i softmax(t_i / T)` exactly; for other losses
the logits themselves are averaged.
"""

import collections.abc
import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kdseg import fields
from kdseg import forward as forward_lib
from kdseg import losses
from kdseg import models

PRIMARY = 'teacher'  # The label of `config.teacher`.
FIELDS = ('name', 'options', 'checkpoint', 'dtype', 'weight')


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen teacher's module, computation dtype and normalised weight."""
  module: nn.Module
  dtype: Any
  weight: float


@dataclasses.dataclass(frozen=True, eq=False)
class TeacherSet(collections.abc.Mapping):
  """The frozen teachers of a run, the primary first: one forward and one
  combined target for the training step. A mapping label -> Teacher.

  Attributes:
    teachers: label -> Teacher, weights normalised to sum to 1 (`create`
      normalises them).
  """
  teachers: Mapping[str, Teacher]

  def __getitem__(self, label: str) -> Teacher:
    return self.teachers[label]

  def __iter__(self):
    return iter(self.teachers)

  def __len__(self) -> int:
    return len(self.teachers)

  @classmethod
  def create(cls, teachers: Mapping[str, Teacher]) -> 'TeacherSet':
    """From teachers whose weights are any positive numbers."""
    if PRIMARY not in teachers:
      raise ValueError(f'A teacher set needs the primary teacher {PRIMARY!r}; '
                       f'got {list(teachers)}.')
    total = sum(float(t.weight) for t in teachers.values())
    ordered = [PRIMARY] + [k for k in teachers if k != PRIMARY]
    return cls({k: dataclasses.replace(teachers[k],
                                       weight=float(teachers[k].weight) / total)
                for k in ordered})

  @classmethod
  def single(cls, module: nn.Module, dtype: Any = jnp.float32) -> 'TeacherSet':
    """One teacher (the primary)."""
    return cls.create({PRIMARY: Teacher(module, dtype, 1.0)})

  @property
  def labels(self) -> tuple[str, ...]:
    return tuple(self.teachers)

  @property
  def weights(self) -> dict[str, float]:
    return {k: t.weight for k, t in self.teachers.items()}

  def forward(self, variables: Mapping[str, Any], images: jax.Array
              ) -> dict[str, tuple[jax.Array, Mapping[str, jax.Array]]]:
    """label -> (logits, features) of every teacher on `images`."""
    return {label: forward_lib.teacher_apply(t.module, variables[label],
                                             images, dtype=t.dtype)
            for label, t in self.teachers.items()}

  def combine(self, outputs: Mapping[str, tuple[jax.Array, Any]],
              size: Sequence[int], temperature: Any) -> jax.Array:
    """One target from every teacher's logits: each resized to `size`
    (bilinear) and combined by `combine_logits` with the set's weights (at
    `temperature`, or averaged when it is None); one teacher's own logits
    at `size`. float32 [B, *size, C]."""
    return combine_logits(
        [losses.resize_to(outputs[k][0], size) for k in outputs],
        [self.teachers[k].weight for k in outputs], temperature=temperature)


def _as_dict(x: Any) -> dict:
  return dict(fields.plain(x) or {})


def specs(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
  """label -> complete teacher fields, the primary first, extras sorted."""
  out = {PRIMARY: _as_dict(config.teacher)}
  for label in sorted(config.extra_teachers):
    spec = {'options': {}, 'checkpoint': '', 'dtype': 'float32', 'weight': 1.0}
    spec.update(_as_dict(config.extra_teachers[label]))
    out[label] = spec
  for spec in out.values():
    spec['options'] = _as_dict(spec.get('options'))
  return out


def create_module(spec: Mapping[str, Any], num_classes: int) -> nn.Module:
  """Builds a teacher from its fields (`name`, `options`, `dtype`)."""
  return models.create(spec['name'], num_classes=num_classes,
                       dtype=models.COMPUTE_DTYPES[spec['dtype']], **spec['options'])


def combine_logits(logits: Sequence[jax.Array], weights: Sequence[float], *,
                   temperature: Optional[Any] = None) -> jax.Array:
  """One target from several teachers' logits.

  Args:
    logits: the teachers' float [B, h, w, C] logits, all of one shape.
    weights: their weights, >= 0 and summing to 1.
    temperature: None to average the logits; otherwise T > 0, and the
      result's softmax at T is the weighted average of the teachers'
      softened predictions.

  Returns:
    float32 [B, h, w, C]: `sum_i w_i t_i`, or with a temperature
    `T * log(sum_i w_i softmax(t_i / T))` (computed as a logsumexp of
    log-probabilities, so that it stays finite). One teacher's logits come
    back unchanged.
  """
  logits = [x.astype(jnp.float32) for x in logits]
  if len(logits) == 1:
    return logits[0]
  w = jnp.asarray(weights, jnp.float32)
  stacked = jnp.stack(logits)  # [N, B, h, w, C]
  if temperature is None:
    return jnp.tensordot(w, stacked, axes=1)
  t = jnp.asarray(temperature, jnp.float32)
  log_p = jax.nn.log_softmax(stacked / t, axis=-1)
  log_w = jnp.log(w).reshape(-1, 1, 1, 1, 1)
  return t * jax.nn.logsumexp(log_p + log_w, axis=0)



def validate(config: ml_collections.ConfigDict, *, check_files: bool) -> None:
  """Checks `teacher.weight` and every `extra_teachers` entry."""
  if not float(config.teacher.weight) > 0:
    fields.fail('teacher.weight', f'must be > 0; got {config.teacher.weight}.')
  for label in sorted(config.extra_teachers):
    key = f'extra_teachers.{label}'
    entry = config.extra_teachers[label]
    if not hasattr(entry, 'keys'):
      fields.fail(key, f'a mapping with fields {list(FIELDS)}; got {entry!r}.')
    unknown = sorted(set(entry.keys()) - set(FIELDS))
    if unknown:
      fields.fail(f'{key}.{unknown[0]}', f'unknown field; valid: {list(FIELDS)}.')
    if label == PRIMARY:
      fields.fail(key, f'the label {PRIMARY!r} names config.teacher; pick another.')
    spec = specs(config)[label]
    if 'name' not in entry or spec['name'] not in models.available():
      fields.fail(f'{key}.name', f'unknown model {spec.get("name")!r}; valid: '
            f'{models.available()}.')
    if spec['dtype'] not in models.COMPUTE_DTYPES:
      fields.fail(f'{key}.dtype', f'{spec["dtype"]!r}; valid: '
            f'{list(models.COMPUTE_DTYPES)}.')
    if not float(spec['weight']) > 0:
      fields.fail(f'{key}.weight', f'must be > 0; got {spec["weight"]}.')
    if config.mode == 'distill' and check_files:
      if not spec['checkpoint']:
        fields.fail(f'{key}.checkpoint', "mode 'distill' needs every teacher's "
              'checkpoint: the workdir of its training run.')
      if not os.path.exists(spec['checkpoint']):
        fields.fail(f'{key}.checkpoint', f'{spec["checkpoint"]!r} does not exist; '
              'train that teacher first (mode=train) and give its workdir.')
