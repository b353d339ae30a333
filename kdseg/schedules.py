"""Learning-rate and temperature schedules (step -> value) as optax schedules.

A schedule spec is a number (constant) or a mapping with a `name` from
`available()` plus that schedule's fields. `warmup_steps` (and optionally
`warmup_init`) prepend a linear warmup to any schedule; `piecewise` joins one
spec per stage at step boundaries, each stage counting steps from its own
start. Examples:

  0.01                                         # constant
  {'name': 'poly', 'init_value': 0.01, 'power': 0.9, 'warmup_steps': 100}
  {'name': 'linear', 'init_value': 8.0, 'end_value': 1.0}  # KD temperature
  {'name': 'piecewise', 'boundaries': [1000],
   'schedules': [4.0, {'name': 'cosine', 'init_value': 4.0, 'end_value': 1.0}]}

`steps` defaults to the run's total steps (minus warmup, and within a
piecewise stage to that stage's length).
"""

from typing import Any, Callable, Mapping, Optional

import jax.numpy as jnp
import optax

from kdseg import fields

Schedule = Callable[[Any], Any]

_FIELDS = {
    'constant': {'value'},
    'linear': {'init_value', 'end_value', 'steps'},
    'cosine': {'init_value', 'end_value', 'steps'},
    'exponential': {'init_value', 'decay_rate', 'transition_steps',
                    'staircase', 'end_value'},
    'poly': {'init_value', 'end_value', 'power', 'steps'},
    'piecewise': {'boundaries', 'schedules'},
}
_COMMON = {'name', 'warmup_steps', 'warmup_init'}


def available() -> list[str]:
  return sorted(_FIELDS)


def _required(spec: Mapping[str, Any], key: str, where: str) -> Any:
  if key not in spec:
    raise ValueError(f'{where}: schedule {spec["name"]!r} needs {key!r}.')
  return spec[key]


def _steps(spec: Mapping[str, Any], total: Optional[int], where: str) -> int:
  steps = spec.get('steps', total)
  if steps is None:
    raise ValueError(f'{where}: schedule {spec["name"]!r} needs "steps" (no '
                     'total step count was given to default to).')
  if steps <= 0:
    raise ValueError(f'{where}: steps must be > 0; got {steps}.')
  return int(steps)


def _build(spec: Mapping[str, Any], total: Optional[int], where: str
           ) -> tuple[Schedule, list[float]]:
  """Returns the schedule and the values it reaches at its ends (to check)."""
  name = spec['name']
  if name == 'constant':
    value = float(_required(spec, 'value', where))
    return optax.constant_schedule(value), [value]
  if name == 'linear':
    init, end = float(_required(spec, 'init_value', where)), float(
        _required(spec, 'end_value', where))
    return optax.linear_schedule(init, end, _steps(spec, total, where)), [
        init, end]
  if name == 'cosine':
    init = float(_required(spec, 'init_value', where))
    end = float(spec.get('end_value', 0.0))
    steps = _steps(spec, total, where)

    def cosine(step):
      frac = jnp.clip(jnp.asarray(step, jnp.float32) / steps, 0.0, 1.0)
      return end + 0.5 * (init - end) * (1.0 + jnp.cos(jnp.pi * frac))

    return cosine, [init, end]
  if name == 'exponential':
    init = float(_required(spec, 'init_value', where))
    rate = float(_required(spec, 'decay_rate', where))
    end = spec.get('end_value')
    fn = optax.exponential_decay(
        init, int(_required(spec, 'transition_steps', where)), rate,
        staircase=bool(spec.get('staircase', False)),
        end_value=None if end is None else float(end))
    return fn, [init] + ([] if end is None else [float(end)])
  if name == 'poly':
    init = float(_required(spec, 'init_value', where))
    end = float(spec.get('end_value', 0.0))
    fn = optax.polynomial_schedule(init, end, float(spec.get('power', 0.9)),
                                   _steps(spec, total, where))
    return fn, [init, end]
  if name == 'piecewise':
    boundaries = [int(b) for b in _required(spec, 'boundaries', where)]
    subspecs = list(_required(spec, 'schedules', where))
    if len(subspecs) != len(boundaries) + 1:
      raise ValueError(f'{where}: piecewise needs one schedule per stage, '
                       f'len(boundaries) + 1 = {len(boundaries) + 1}; got '
                       f'{len(subspecs)}.')
    if any(b <= a for a, b in zip([0] + boundaries, boundaries)):
      raise ValueError(f'{where}: boundaries must be increasing and > 0; got '
                       f'{boundaries}.')
    edges = [0] + boundaries + [total]
    fns, ends = [], []
    for i, sub in enumerate(subspecs):
      length = None if edges[i + 1] is None else edges[i + 1] - edges[i]
      fn, values = _create(sub, length, f'{where}.schedules[{i}]')
      fns.append(fn)
      ends += values
    return optax.join_schedules(fns, boundaries), ends
  raise AssertionError(name)


def _create(spec: Any, total: Optional[int], where: str
            ) -> tuple[Schedule, list[float]]:
  spec = fields.plain(spec)
  if isinstance(spec, (int, float)):
    return optax.constant_schedule(float(spec)), [float(spec)]
  if not isinstance(spec, Mapping) or 'name' not in spec:
    raise ValueError(f'{where}: a schedule is a number or a mapping with a '
                     f'"name" from {available()}; got {spec!r}.')
  name = spec['name']
  if name not in _FIELDS:
    raise ValueError(f'{where}: unknown schedule {name!r}; valid: '
                     f'{available()}.')
  unknown = set(spec) - _FIELDS[name] - _COMMON
  if unknown:
    raise ValueError(f'{where}: unknown field(s) {sorted(unknown)} for schedule '
                     f'{name!r}; valid: {sorted(_FIELDS[name] | _COMMON)}.')
  warmup = int(spec.get('warmup_steps', 0) or 0)
  if warmup < 0:
    raise ValueError(f'{where}: warmup_steps must be >= 0; got {warmup}.')
  rest = None if total is None else total - warmup
  if rest is not None and rest <= 0 and 'steps' not in spec and name != 'constant':
    raise ValueError(f'{where}: warmup_steps ({warmup}) must be smaller than '
                     f'the total steps ({total}).')
  fn, values = _build(spec, rest, where)
  if warmup:
    start = float(spec.get('warmup_init', 0.0))
    ramp = optax.linear_schedule(start, fn(0), warmup)
    fn = optax.join_schedules([ramp, fn], [warmup])
    values = values + [start]
  return fn, values


def create(spec: Any, *, total_steps: Optional[int] = None,
           positive: bool = False, name: str = 'schedule') -> Schedule:
  """Builds a schedule `step -> value` (jit-able) from a spec.

  Args:
    spec: a number or a mapping (or ConfigDict); see the module docstring.
    total_steps: the run's length, the default `steps` of decaying schedules.
    positive: require every value the schedule reaches to be > 0 (set for
      temperatures); warmup must then start above 0 too.
    name: what the spec configures, for error messages (e.g. 'config.kd.temperature').

  Raises:
    ValueError: unknown schedule names or fields, missing fields, bad values.
  """
  fn, values = _create(spec, total_steps, name)
  if positive and any(not v > 0 for v in values):
    raise ValueError(f'{name}: every value must be > 0 (a temperature); the '
                     f'schedule reaches {min(values)}. Set end_value/'
                     'warmup_init above 0.')
  return fn
