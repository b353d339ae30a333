"""Distillation terms: `config.loss.terms`, parsed and evaluated.

Each entry of `config.loss.terms` is a term under a label (the label names
its metric). Fields, all optional but `loss`:

  loss:        a name from `kdseg.losses.available()`.
  weight:      a number or a schedule spec (`kdseg.schedules`); default 1.
  temperature: the same, only for losses that take one; default
               `loss.temperature`.
  student:     'logits' or a feature name of the student (e.g. 'layer3');
               default: the loss's `spec(name).default_key`.
  teacher:     'logits' or a feature name of the teacher; default: the
               student's key.
  source:      the teacher compared against: 'ensemble' (every teacher's
               logits combined, `kdseg.teachers.combine_logits`; the default
               for logits), 'teacher' (the primary; the default for
               features) or a label of `config.extra_teachers`.
  options:     the loss's hyperparameters (keyword arguments).
  connector:   'auto' (default) or 'none'; see `kdseg.connectors`.

Terms compare the student's map with the teacher's at the teacher map's
resolution over all pixels (no ignore mask: teacher predictions on void
pixels are still knowledge). They apply only when a teacher is there (mode
'distill', and the distilled run of 'compare').

The training objective is one tuple of terms, summed in order with their
weights: the classic terms of `config.loss`'s own fields (`classic`: `ce`,
`kd`, `aux`), then these. One rule normalises every term across devices: its
value is the sum over devices of its per-device sums divided by the sum over
devices of its per-device counts (`loss_sums`). What a term counts follows
where it compares (`Term.at`):

  'labels'   the classic terms: maps resized to the label resolution, summed
             over the labelled pixels and counted per pixel, so the value is
             exactly the global per-pixel mean at any device count.
  'teacher'  the configured terms: each device's value counts once, so the
             value is the mean over devices; exact for losses that average
             over pixels or images, while relational losses (pairwise, ifvd,
             cirkd) relate the pixels and images of one device's shard.
"""

import dataclasses
import re
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from kdseg import fields
from kdseg import losses
from kdseg import schedules
from kdseg import teachers as teachers_lib

FIELDS = ('loss', 'weight', 'temperature', 'student', 'teacher', 'source',
          'options', 'connector')
CONNECTORS = ('auto', 'none')
ENSEMBLE = 'ensemble'
AT_LABELS = 'labels'
AT_TEACHER = 'teacher'
CROSS_ENTROPY = 'cross_entropy'  # The supervised loss of `ce` and `aux`.
# Metric names the step already uses.
RESERVED = ('loss', 'ce', 'kd', 'aux', 'learning_rate', 'temperature',
            'grad_norm', 'finite')


@dataclasses.dataclass(frozen=True)
class Term:
  """One term of the objective. `weight` and `temperature` map the global
  step to a value (already shifted to count from their stage's start); `at`
  is AT_LABELS for the classic terms (`classic`), AT_TEACHER for configured
  ones (`parse`); `teacher` is '' for terms on the labels alone."""
  label: str
  loss: str
  weight: Callable[[Any], Any]
  temperature: Optional[Callable[[Any], Any]]
  student: str
  teacher: str
  source: str
  options: Mapping[str, Any]
  connector: str
  at: str = AT_TEACHER

  @property
  def spec(self) -> losses.Spec:
    return losses.spec(self.loss)



def _shifted(fn: Callable, start: int) -> Callable:
  return fn if not start else (lambda step: fn(step - start))


def _constant(value: Any) -> Callable[[Any], Any]:
  return lambda step: value


def classic(loss_config: Any, *, temperature: Callable[[Any], Any],
            distilling: bool) -> tuple[Term, ...]:
  """The terms of `config.loss`'s own fields, in the order they are summed.

  Args:
    loss_config: `config.loss` of the phase (ce_weight, kd_weight, kd_type,
      kd_pixels, aux_weight, label_smoothing, class_weights).
    temperature: the phase's temperature schedule (`loss.temperature`).
    distilling: whether there are teachers (otherwise no `kd`).

  Returns:
    'ce' (cross-entropy with the labels); with teachers 'kd', pixel KD at
    `temperature` ('kl') or logit MSE ('mse') to the teachers' combined
    logits, on the labelled pixels or the subset `kd_pixels` names; 'aux'
    (cross-entropy of the student's aux head) when `aux_weight` is set. All
    at the label resolution (AT_LABELS).
  """
  supervised = {'class_weights': loss_config.class_weights,
                'label_smoothing': loss_config.label_smoothing}
  def term(label, loss, weight, *, student='logits', teacher='',
           temperature=None, options=None):
    return Term(label=label, loss=loss, weight=_constant(weight),
                temperature=temperature, student=student, teacher=teacher,
                source=ENSEMBLE if teacher else '', options=options or {},
                connector='none', at=AT_LABELS)
  out = [term('ce', CROSS_ENTROPY, loss_config.ce_weight, options=supervised)]
  if distilling:
    kl = loss_config.kd_type == 'kl'
    out.append(term('kd', 'pixel_kd' if kl else 'logits_mse',
                    loss_config.kd_weight, teacher='logits',
                    temperature=temperature if kl else None,
                    options={'kd_type': loss_config.kd_type,
                             'kd_pixels': loss_config.kd_pixels}))
  if loss_config.aux_weight:
    out.append(term('aux', CROSS_ENTROPY, loss_config.aux_weight,
                    student='aux_logits', options=supervised))
  return tuple(out)


def parse(terms_config: Any, *, default_temperature: Any, total_steps: int,
          start: int = 0, teacher_labels: tuple[str, ...] = (
              teachers_lib.PRIMARY,),
          where: str = 'config.loss.terms') -> tuple[Term, ...]:
  """Parses and checks a `loss.terms` mapping.

  Args:
    terms_config: label -> term spec (a mapping or ConfigDict).
    default_temperature: the schedule spec of terms that leave it out.
    total_steps: the length that decaying schedules default to (the stage's).
    start: the step their schedules count from (the stage's start).
    teacher_labels: valid `source` teacher labels.
    where: the config key, for errors.

  Returns:
    The terms, sorted by label.

  Raises:
    ValueError: naming the key, the problem and the valid choices.
  """
  return tuple(
      _parse_term(label, fields.plain(terms_config[label]), f'{where}.{label}',
                  default_temperature=default_temperature,
                  total_steps=total_steps, start=start,
                  teacher_labels=teacher_labels)
      for label in sorted(terms_config or {}))


def _check_label_and_fields(label: str, spec: Any, key: str) -> None:
  if not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*', label):
    fields.fail(key, 'labels are identifiers (letters, digits, underscores).')
  if label in RESERVED:
    fields.fail(key, f'the label {label!r} is taken by a built-in metric; '
          f'reserved: {list(RESERVED)}.')
  if not isinstance(spec, Mapping):
    fields.fail(key, f'a term is a mapping with fields {list(FIELDS)}; got {spec!r}.')
  unknown = sorted(set(spec) - set(FIELDS))
  if unknown:
    fields.fail(f'{key}.{unknown[0]}', f'unknown field; valid: {list(FIELDS)}.')
  if spec.get('loss') not in losses.available():
    fields.fail(f'{key}.loss', f'unknown loss {spec.get("loss")!r}; valid: '
          f'{losses.available()}.')


def _options(spec: Mapping[str, Any], loss_spec: losses.Spec,
             key: str) -> dict[str, Any]:
  options = fields.plain(spec.get('options', {})) or {}
  if not isinstance(options, Mapping):
    fields.fail(f'{key}.options', f'a mapping of hyperparameters; got {options!r}.')
  # The temperature is a term field (a schedule), not an option.
  valid = sorted(set(loss_spec.defaults) - {'temperature'})
  bad = sorted(set(options) - set(valid))
  if bad:
    fields.fail(f'{key}.options.{bad[0]}', f'not a hyperparameter of '
          f'{loss_spec.name!r}; valid: {valid}.')
  return dict(options)


def _parse_term(label: str, spec: Any, key: str, *, default_temperature: Any,
                total_steps: int, start: int,
                teacher_labels: tuple[str, ...]) -> Term:
  _check_label_and_fields(label, spec, key)
  loss_spec = losses.spec(spec['loss'])
  weight = schedules.create(spec.get('weight', 1.0), total_steps=total_steps,
                            name=f'{key}.weight')
  temperature = None
  if loss_spec.takes_temperature:
    temperature = _shifted(schedules.create(
        spec.get('temperature', default_temperature), total_steps=total_steps,
        positive=True, name=f'{key}.temperature'), start)
  elif 'temperature' in spec:
    takes = [n for n in losses.available() if losses.spec(n).takes_temperature]
    fields.fail(f'{key}.temperature', f'loss {spec["loss"]!r} takes no '
          f'temperature; losses that do: {takes}.')
  student = spec.get('student', loss_spec.default_key)
  teacher = spec.get('teacher', student)
  for field, value in (('student', student), ('teacher', teacher)):
    if not isinstance(value, str):
      fields.fail(f'{key}.{field}', f"'logits' or a feature name; got {value!r}.")
  source = spec.get('source', ENSEMBLE if teacher == 'logits'
                    else teachers_lib.PRIMARY)
  if source not in (ENSEMBLE, *teacher_labels):
    fields.fail(f'{key}.source', f'{source!r}; valid: '
          f'{[ENSEMBLE, *teacher_labels]}.')
  if source == ENSEMBLE and teacher != 'logits':
    fields.fail(f'{key}.source', "'ensemble' combines logits only; for the "
          f'feature {teacher!r} name one teacher: {list(teacher_labels)}.')
  connector = spec.get('connector', 'auto')
  if connector not in CONNECTORS:
    fields.fail(f'{key}.connector', f'{connector!r}; valid: {list(CONNECTORS)}.')
  return Term(label=label, loss=spec['loss'], weight=_shifted(weight, start),
              temperature=temperature, student=student, teacher=teacher,
              source=source, options=_options(spec, loss_spec, key),
              connector=connector)


def check_features(terms: tuple[Term, ...], student_names: list[str],
                   teacher_names: Mapping[str, list[str]],
                   where: str = 'config.loss.terms') -> None:
  """Checks that every term names maps its models have.

  Args:
    terms: parsed terms.
    student_names: the student's feature names.
    teacher_names: teacher label -> its feature names.
    where: the config key, for errors.
  """
  for term in terms:
    key = f'{where}.{term.label}'
    valid = ['logits', *sorted(student_names)]
    if term.student not in valid:
      fields.fail(f'{key}.student', f'the student has no map {term.student!r}; '
            f'valid: {valid}.')
    if term.source != ENSEMBLE:
      valid = ['logits', *sorted(teacher_names[term.source])]
      if term.teacher not in valid:
        fields.fail(f'{key}.teacher', f'teacher {term.source!r} has no map '
              f'{term.teacher!r}; valid: {valid}.')


def student_map(term: Term, logits: jax.Array,
                features: Mapping[str, jax.Array]) -> jax.Array:
  """The student output a term compares."""
  return logits if term.student == 'logits' else features[term.student]


def teacher_map(term: Term, outputs: Mapping[str, tuple[jax.Array, Mapping]],
                teachers: teachers_lib.TeacherSet, temperature: Any,
                label_size: Sequence[int]) -> jax.Array:
  """The target of a term that has one (`term.teacher`).

  Args:
    term: the term.
    outputs: teacher label -> (logits, features), the primary first.
    teachers: the teacher set (its weights combine the logits).
    temperature: the term's temperature at this step (None if it takes none).
    label_size: the labels' [H, W].

  Returns:
    The source teacher's map; for 'ensemble' the teachers' logits combined
    (`TeacherSet.combine`) at the label resolution for AT_LABELS terms, at
    the primary teacher's for the others.
  """
  if term.source != ENSEMBLE:
    logits, features = outputs[term.source]
    return logits if term.teacher == 'logits' else features[term.teacher]
  size = (label_size if term.at == AT_LABELS
          else next(iter(outputs.values()))[0].shape[1:3])
  return teachers.combine(outputs, size, temperature)


def loss_value(term: Term, student: jax.Array, teacher: jax.Array, *,
               temperature: Any, labels: jax.Array,
               ignore_index: int) -> jax.Array:
  """A configured term's unweighted loss on this device: float32 scalar.

  `student` must already match `teacher` in shape (see
  `kdseg.connectors.connect`).
  """
  kwargs = dict(term.options)
  if temperature is not None:
    kwargs['temperature'] = temperature
  if term.spec.needs_labels:
    kwargs.update(labels=labels, ignore_index=ignore_index)
  value = losses.get(term.loss)(student, teacher, **kwargs)
  return jnp.asarray(value, jnp.float32)


def loss_sums(term: Term, student: jax.Array, teacher: Optional[jax.Array],
              *, temperature: Any, labels: jax.Array,
              ignore_index: int) -> tuple[jax.Array, jax.Array]:
  """`(sum, count)` of a term on this device (see the module doc): its
  value is the sum over devices of `sum` over the sum of `count`.

  Args:
    term: the term.
    student: its student map (AT_TEACHER: already connected to the target).
    teacher: its target (`teacher_map`), or None for terms on labels alone.
    temperature: the term's temperature at this step, or None.
    labels: int [B, H, W].
    ignore_index: label value that counts nowhere.
  """
  if term.at == AT_TEACHER:
    return (loss_value(term, student, teacher, temperature=temperature,
                       labels=labels, ignore_index=ignore_index),
            jnp.ones((), jnp.float32))
  # The classic terms' options are their sums function's keyword arguments.
  if term.loss == CROSS_ENTROPY:
    return losses.label_cross_entropy_sums(
        student, labels, ignore_index=ignore_index, **term.options)
  return losses.kd_sums(student, teacher, labels, temperature=temperature,
                        ignore_index=ignore_index, **term.options)


def map_shapes(term: Term, student: tuple[Any, Mapping[str, Any]],
               teachers: Mapping[str, tuple[Any, Mapping[str, Any]]]
               ) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The shapes of a term's student map and target.

  Args:
    term: the term.
    student: (logits shape, feature name -> shape), e.g. from
      `kdseg.forward.output_shapes`.
    teachers: teacher label -> the same, the primary first.
  """
  s = student_map(term, *student)
  if term.source == ENSEMBLE:
    t = next(iter(teachers.values()))[0]  # Combined at the primary's size.
  else:
    logits, features = teachers[term.source]
    t = logits if term.teacher == 'logits' else features[term.teacher]
  return tuple(s), tuple(t)
