"""Statistics over seeds: mean, sample standard deviation, paired gains.

A distillation result is a difference between two trainings that each vary
with the seed (initialisation, data order, augmentation). `compare` trains
the baseline and every distilled variant once per seed, so gains are paired
seed by seed and their confidence interval is Student's t-interval over the
per-seed differences.
"""

import math
from typing import Optional, Sequence

import numpy as np
from scipy import stats as scipy_stats


def describe(values: Sequence[float]) -> dict[str, Optional[float]]:
  """{'mean', 'std', 'n'}: the mean and the sample (n - 1) std; std is None
  for a single value."""
  values = np.asarray(values, np.float64)
  if values.size == 0:
    raise ValueError('describe needs at least one value.')
  std = float(values.std(ddof=1)) if values.size > 1 else None
  return {'mean': float(values.mean()), 'std': std, 'n': int(values.size)}


def t_interval(values: Sequence[float], confidence: float = 0.95
               ) -> Optional[tuple[float, float]]:
  """Two-sided t confidence interval of the mean; None for fewer than two.

  mean +- t_{(1 + confidence) / 2, n - 1} * std / sqrt(n), std with n - 1.
  """
  values = np.asarray(values, np.float64)
  if not 0 < confidence < 1:
    raise ValueError(f'confidence must be in (0, 1), got {confidence}.')
  if values.size < 2:
    return None
  half = (scipy_stats.t.ppf((1 + confidence) / 2, values.size - 1)
          * values.std(ddof=1) / math.sqrt(values.size))
  mean = float(values.mean())
  return (mean - float(half), mean + float(half))


def paired_gain(treated: Sequence[float], baseline: Sequence[float],
                confidence: float = 0.95) -> dict:
  """Per-seed differences treated - baseline, their mean, std and interval.

  Both sequences are in the same seed order.
  """
  treated = np.asarray(treated, np.float64)
  baseline = np.asarray(baseline, np.float64)
  if treated.shape != baseline.shape:
    raise ValueError(f'paired values need the same seeds: {treated.size} '
                     f'and {baseline.size} values.')
  diffs = treated - baseline
  interval = t_interval(diffs, confidence)
  return {**describe(diffs), 'per_seed': diffs.tolist(),
          'confidence': confidence,
          'interval': None if interval is None else list(interval)}
