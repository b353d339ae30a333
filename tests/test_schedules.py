"""Schedule values at chosen steps, computed by hand."""

import numpy as np
import pytest

from kdseg import schedules


def values(fn, steps):
  return [float(fn(s)) for s in steps]


def test_constant_and_number():
  assert values(schedules.create(0.5), [0, 100]) == [0.5, 0.5]
  fn = schedules.create({'name': 'constant', 'value': 2.0})
  assert values(fn, [0, 7]) == [2.0, 2.0]


def test_linear_defaults_to_total_steps():
  fn = schedules.create({'name': 'linear', 'init_value': 8.0, 'end_value': 2.0},
                        total_steps=12)
  np.testing.assert_allclose(values(fn, [0, 3, 6, 12, 20]), [8, 6.5, 5, 2, 2])


def test_cosine():
  fn = schedules.create({'name': 'cosine', 'init_value': 1.0, 'end_value': 0.1,
                         'steps': 100})
  expected = [0.1 + 0.45 * (1 + np.cos(np.pi * s / 100)) for s in (0, 25, 50, 100)]
  np.testing.assert_allclose(values(fn, [0, 25, 50, 100]), expected, rtol=1e-6)


def test_poly_with_warmup():
  fn = schedules.create({'name': 'poly', 'init_value': 0.02, 'power': 0.9,
                         'warmup_steps': 10}, total_steps=110)
  expected = [0.0, 0.01, 0.02, 0.02 * (1 - 50 / 100)**0.9, 0.0]
  np.testing.assert_allclose(values(fn, [0, 5, 10, 60, 110]), expected,
                             rtol=1e-6, atol=1e-9)


def test_exponential():
  fn = schedules.create({'name': 'exponential', 'init_value': 1.0,
                         'decay_rate': 0.5, 'transition_steps': 10,
                         'staircase': True})
  np.testing.assert_allclose(values(fn, [0, 9, 10, 25]), [1, 1, 0.5, 0.25])


def test_piecewise_temperature_high_early_low_later():
  fn = schedules.create(
      {'name': 'piecewise', 'boundaries': [100],
       'schedules': [8.0, {'name': 'linear', 'init_value': 4.0,
                           'end_value': 1.0}]},
      total_steps=400, positive=True)
  # Stage 2 counts its own steps: 300 long, linear 4 -> 1.
  np.testing.assert_allclose(values(fn, [0, 99, 100, 250, 400]),
                             [8, 8, 4, 2.5, 1])


@pytest.mark.parametrize('spec, match', [
    ({'name': 'stair'}, "unknown schedule 'stair'; valid"),
    ({'name': 'linear', 'init_value': 1.0, 'end_value': 0.0, 'stepz': 3},
     r"unknown field\(s\) \['stepz'\]"),
    ({'name': 'linear', 'end_value': 0.0, 'steps': 3}, "needs 'init_value'"),
    ({'name': 'poly', 'init_value': 1.0}, 'needs "steps"'),
    ('fast', 'a schedule is a number or a mapping'),
    ({'name': 'piecewise', 'boundaries': [5], 'schedules': [1.0]},
     'one schedule per stage'),
])
def test_bad_specs(spec, match):
  with pytest.raises(ValueError, match=match):
    schedules.create(spec)


def test_temperature_must_stay_positive():
  with pytest.raises(ValueError, match='> 0'):
    schedules.create({'name': 'linear', 'init_value': 4.0, 'end_value': 0.0},
                     total_steps=10, positive=True, name='kd.temperature')
