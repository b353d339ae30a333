"""Training phases at step boundaries, each with its own loss configuration.

`config.stages` is a tuple of `{'steps': N, 'loss': {overrides}}` (and
optionally `'quantize'`, overriding `model.quantize` for the stage), run in
order: stage i covers the N steps after stage i - 1. The last stage may
leave out `steps` and then runs to `train.steps`; otherwise the lengths must
add up to `train.steps`. A stage's `loss` overrides fields of `config.loss`;
a `terms` mapping given there replaces the base terms wholesale, so a stage
lists exactly the terms it trains with. Every loss schedule of a stage
(temperature, term weights and temperatures) counts steps from the stage's
start and defaults its length to the stage's; the learning rate counts the
whole run. No `stages`: one stage, `config.loss` over the whole run.

    config.stages = (
        {'steps': 500, 'loss': {'terms': {'fit': {'loss': 'fitnet',
                                                   'student': 'layer3',
                                                   'teacher': 'layer3'}}}},
        {'loss': {'kd_weight': 1.0, 'terms': {}}},
    )

The trainer compiles one step per stage and picks each step's stage on the
host, so a run resumed in the middle of a stage goes on with that stage.
"""

import copy
import dataclasses
from typing import Any

import ml_collections

from kdseg import fields
from kdseg import forward
from kdseg import losses
from kdseg import models
from kdseg.ops import fake_quant
from kdseg import schedules
from kdseg import teachers as teachers_lib
from kdseg import terms as terms_lib

FIELDS = ('steps', 'loss', 'quantize')


@dataclasses.dataclass(frozen=True)
class Stage:
  """Steps [start, end) and the loss config (`config.loss` + overrides)."""
  index: int
  start: int
  end: int
  loss: ml_collections.ConfigDict
  where: str  # The config key of this stage's loss, for errors.
  quantize: str = ''  # Fake quantization of the student (model.quantize).



def resolve(config: ml_collections.ConfigDict) -> tuple[Stage, ...]:
  """The run's stages, checked (see the module docstring)."""
  total = int(config.train.steps)
  specs = config.stages
  default_quantize = config.model.quantize
  if not specs:
    return (Stage(0, 0, total, config.loss, 'config.loss',
                  default_quantize),)
  if not isinstance(specs, (tuple, list)):
    fields.fail('config.stages', f'a tuple of {{"steps", "loss"}} mappings; got '
          f'{specs!r}.')
  loss_keys = sorted(config.loss.keys())
  out, start = [], 0
  for i, spec in enumerate(specs):
    key = f'config.stages[{i}]'
    spec = fields.plain(spec)
    if not isinstance(spec, dict):
      fields.fail(key, f'a mapping with fields {list(FIELDS)}; got {spec!r}.')
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
      fields.fail(f'{key}.{unknown[0]}', f'unknown field; valid: {list(FIELDS)}.')
    last = i == len(specs) - 1
    if 'steps' in spec:
      steps = spec['steps']
      if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        fields.fail(f'{key}.steps', f'a positive integer; got {steps!r}.')
    elif last:
      steps = total - start
    else:
      fields.fail(f'{key}.steps', 'missing: every stage but the last needs its '
            'length in steps.')
    end = start + steps
    if end > total or (last and end != total) or steps <= 0:
      lengths = [s.get('steps', '(rest)') for s in specs]
      fields.fail('config.stages', f'stage lengths {lengths} do not add up to '
            f'train.steps = {total}; leave out the last stage\'s "steps" to '
            'run it to the end.')
    overrides = dict(spec.get('loss', {}))
    unknown = sorted(set(overrides) - set(loss_keys))
    if unknown:
      fields.fail(f'{key}.loss.{unknown[0]}', f'not a field of config.loss; valid: '
            f'{loss_keys}.')
    loss = copy.deepcopy(config.loss).to_dict()
    loss.update(overrides)
    quantize = spec.get('quantize', default_quantize)
    if quantize not in fake_quant.MODES:
      fields.fail(f'{key}.quantize', f'{quantize!r}; valid: '
                  f'{list(fake_quant.MODES)} '
                  "('' trains in float).")
    out.append(Stage(i, start, end, ml_collections.ConfigDict(loss),
                     f'{key}.loss', quantize))
    start = end
  return tuple(out)


def at(stages: tuple[Stage, ...], step: int) -> Stage:
  """The stage that runs step `step` (0-based; the last beyond the end)."""
  for stage in stages:
    if step < stage.end:
      return stage
  return stages[-1]


def temperature_fn(stage: Stage):
  """The classic `kd` temperature schedule of a stage, of the global step."""
  fn = schedules.create(stage.loss.temperature,
                        total_steps=stage.end - stage.start, positive=True,
                        name=f'{stage.where}.temperature')
  return fn if not stage.start else (lambda step: fn(step - stage.start))


def terms(stage: Stage, teacher_labels: tuple[str, ...]
          ) -> tuple[terms_lib.Term, ...]:
  """The parsed distillation terms of a stage."""
  return terms_lib.parse(
      stage.loss.terms, default_temperature=stage.loss.temperature,
      total_steps=stage.end - stage.start, start=stage.start,
      teacher_labels=teacher_labels, where=f'{stage.where}.terms')


def validate(config: ml_collections.ConfigDict, *, check_files: bool) -> None:
  """Checks stages, terms and extra teachers; raises ValueError naming keys.

  Feature names are checked against the models' outputs (`jax.eval_shape`
  at `data.crop_size`, nothing computed).
  """
  teachers_lib.validate(config, check_files=check_files)
  labels = tuple(teachers_lib.specs(config))
  all_terms = []
  for stage in resolve(config):
    if stage.loss.kd_type not in losses.KD_TYPES:
      fields.fail(f'{stage.where}.kd_type', f'{stage.loss.kd_type!r}; valid: '
            f'{list(losses.KD_TYPES)}.')
    if stage.loss.kd_pixels not in losses.KD_PIXELS:
      fields.fail(f'{stage.where}.kd_pixels', f'{stage.loss.kd_pixels!r}; valid: '
            f'{list(losses.KD_PIXELS)}.')
    temperature_fn(stage)
    all_terms += [(stage, t) for t in terms(stage, labels)]
  if not all_terms:
    return
  image_shape = tuple(config.data.crop_size) + (3,)

  def names(spec: dict[str, Any]) -> list[str]:
    return _feature_names(spec['name'], spec['options'], image_shape)

  model = {'name': config.model.name,
           'options': dict(fields.plain(config.model.options))}
  student_names = names(model)
  used = {t.source for _, t in all_terms} - {terms_lib.ENSEMBLE}
  teacher_specs = teachers_lib.specs(config)
  teacher_names = {label: names(teacher_specs[label]) for label in used}
  for stage, term in all_terms:
    terms_lib.check_features((term,), student_names, teacher_names,
                             where=f'{stage.where}.terms')


_FEATURE_NAMES: dict[tuple[str, str, tuple[int, ...]], list[str]] = {}


def _feature_names(name: str, options: dict[str, Any],
                   image_shape: tuple[int, ...]) -> list[str]:
  """A model's feature names, traced once per model, options and size."""
  key = (name, repr(sorted(options.items())), image_shape)
  if key not in _FEATURE_NAMES:
    # Feature names do not depend on the class count.
    module = models.create(name, num_classes=2, **options)
    _FEATURE_NAMES[key] = sorted(forward.output_shapes(module, image_shape)[1])
  return _FEATURE_NAMES[key]
