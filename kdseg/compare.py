"""Mode 'compare': does distillation help? Teacher, baselines and distilled
students over seeds, with the paired gain and its confidence interval.

The teacher (`config.teacher`) is trained once, or taken from
`config.compare.teacher_workdir` (evaluated, never trained further). Then, for
each of `config.compare.seeds` seeds (config.seed, config.seed + 1, ...), the
baseline student (`config.model`, supervision only) and every distilled
variant are trained with that seed: initialisation, data order, augmentation
and dropout all follow it, and a baseline and a variant of the same seed see
the same batches. A variant is `config` with the overrides of
`config.compare.variants[label]`; with no variants there is one, 'distill',
with `config`'s own loss; `config.compare.only` runs a subset of them (a
long table filled a few methods at a time in one workdir). The baseline
trains with `config`'s loss minus the distillation (teacher, terms,
stages): settings that belong to the distilled run only, such as a lower
cross-entropy weight beside the KD term, go into a variant, or the baseline
inherits them.

Every run has its own sub-workdir, so an interrupted comparison resumes
where it stopped (finished runs are only evaluated again):

  teacher/
  student/seed_<s>/  <variant>/seed_<s>/

`workdir/summary.json` holds per-seed results, mean and sample std of every
run, and for every variant the per-seed gain over the baseline, its mean,
std and t-interval (`kdseg.stats`), and the wall-clock seconds each run took
in this invocation ('wall_s'; a run finished before a resume counts only its
evaluation) with their total. It is rewritten after every run.
"""

import copy
import json
import os
import time
from typing import Any, Optional

import jax
import ml_collections

from kdseg import config as config_lib
from kdseg import evaluate as evaluate_lib
from kdseg import fields
from kdseg import stats
from kdseg import train as train_lib

TEACHER = 'teacher'
BASELINE = 'student'
DEFAULT_VARIANT = 'distill'
# Keys of a run's result kept per seed in the summary.
_RESULT_KEYS = ('miou', 'pixel_accuracy', 'mean_class_accuracy', 'params',
                'train_images_per_s', 'eval_images_per_s', 'per_class_iou',
                'step')
# Replaced as a whole by a variant's overrides, never merged key by key.
_REPLACED = ('model.options', 'teacher.options', 'data.kwargs',
             'train.learning_rate', 'loss.temperature', 'loss.terms',
             'extra_teachers')


def seeds(config: ml_collections.ConfigDict) -> list[int]:
  return [int(config.seed) + i for i in range(int(config.compare.seeds))]


def variants(config: ml_collections.ConfigDict) -> dict[str, dict]:
  """label -> overrides (a nested dict) of every distilled variant."""
  given = config.compare.variants
  if not given:
    return {DEFAULT_VARIANT: {}}
  out = {}
  for label, overrides in given.items():
    if label in (TEACHER, BASELINE):
      raise ValueError(f'config.compare.variants: {label!r} names the '
                       f'{label} run; give the variant another label.')
    overrides = fields.plain(overrides)
    if not isinstance(overrides, dict):
      raise ValueError(f'config.compare.variants.{label}: must be a dict of '
                       f'overrides (e.g. {{"loss": {{"kd_weight": 0.5}}}}); '
                       f'got {overrides!r}.')
    out[label] = overrides
  only = tuple(config.compare.only)
  unknown = [label for label in only if label not in out]
  if unknown:
    raise ValueError(
        f'config.compare.only: {unknown} not among the variants; use labels '
        f'of config.compare.variants: {sorted(out)}.')
  if only:
    out = {label: out[label] for label in only}
  return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict,
                    where: str) -> None:
  """Sets nested `overrides` on `config` (unlocked), naming unknown keys."""

  def apply(target, values, prefix):
    for key, value in values.items():
      path = f'{prefix}{key}'
      if key not in target:
        valid = sorted(target.keys())
        raise ValueError(f'{where}.{path}: unknown key; valid keys here: '
                         f'{valid}.')
      current = target[key]
      if (isinstance(current, ml_collections.ConfigDict) and
          isinstance(value, dict) and path not in _REPLACED):
        apply(current, value, path + '.')
      else:
        target[key] = value

  with config.unlocked():
    apply(config, overrides, '')


def sub_config(config: ml_collections.ConfigDict, run: str, workdir: str, *,
               seed: Optional[int] = None,
               overrides: Optional[dict] = None) -> ml_collections.ConfigDict:
  """The config of one run: 'teacher', 'student' or a distilled variant."""
  sub = copy.deepcopy(config)
  if overrides:
    apply_overrides(sub, overrides, f'config.compare.variants.{run}')
  with sub.unlocked():
    if seed is not None:
      sub.seed = seed
    if run in (TEACHER, BASELINE):
      # Supervised runs: distillation terms, stages and extra teachers are
      # the distilled students' configuration only.
      sub.loss.terms = ml_collections.ConfigDict()
      sub.stages = ()
      sub.extra_teachers = ml_collections.ConfigDict()
    if run == TEACHER:
      sub.mode = 'train'
      sub.model.name = config.teacher.name
      sub.model.options = copy.deepcopy(config.teacher.options)
      sub.model.dtype = 'float32'
      if config.compare.teacher_steps:
        sub.train.steps = int(config.compare.teacher_steps)
    elif run == BASELINE:
      sub.mode = 'train'
    else:
      sub.mode = 'distill'
      sub.teacher.checkpoint = teacher_workdir(config, workdir)
  return sub


def teacher_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
  return config.compare.teacher_workdir or os.path.join(workdir, TEACHER)


def run_workdir(config: ml_collections.ConfigDict, workdir: str, run: str,
                seed: int) -> str:
  if run == TEACHER:
    return teacher_workdir(config, workdir)
  # Always one folder a seed, so that a one-seed screen grows into a
  # several-seed comparison without training its runs again. Workdirs of
  # one-seed compares made before kept the run itself in <run>/.
  flat = os.path.join(workdir, run)
  if int(config.compare.seeds) == 1 and os.path.isdir(
      os.path.join(flat, 'checkpoints')):
    return flat
  return os.path.join(flat, f'seed_{seed}')


def summarize(rows: dict[str, dict[int, dict]], model_names: dict[str, str],
              confidence: float = 0.95) -> dict[str, dict]:
  """Per run: its seeds' results, mean and std; variants: the paired gain.

  Args:
    rows: run -> seed -> result dict (with 'miou', 'pixel_accuracy', ...).
    model_names: run -> model name.
    confidence: Of the gains' t-intervals.
  """
  out = {}
  baseline = rows.get(BASELINE, {})
  for run, by_seed in rows.items():
    if not by_seed:
      continue
    order = sorted(by_seed)
    first = by_seed[order[0]]
    summary = {'model': model_names[run], 'seeds': order,
               'per_seed': {str(s): by_seed[s] for s in order}}
    for key in ('miou', 'pixel_accuracy'):
      described = stats.describe([by_seed[s][key] for s in order])
      summary[key] = described['mean']
      summary[f'{key}_std'] = described['std']
    if all('wall_s' in by_seed[s] for s in order):
      summary['wall_s'] = sum(by_seed[s]['wall_s'] for s in order)
    for key in ('params', 'step', 'train_images_per_s', 'eval_images_per_s'):
      if key in first:
        summary[key] = (first[key] if key in ('params', 'step') else
                        stats.describe([by_seed[s][key] for s in order
                                        if key in by_seed[s]])['mean'])
    paired = [s for s in order if s in baseline]
    if run not in (TEACHER, BASELINE) and paired:
      summary['gain'] = {
          'seeds': paired, **stats.paired_gain(
              [by_seed[s]['miou'] for s in paired],
              [baseline[s]['miou'] for s in paired], confidence)}
    out[run] = summary
  return out


def _plus_minus(mean: float, std: Optional[float]) -> str:
  text = f'{100 * mean:6.2f}'
  return text + (f' +- {100 * std:4.2f}' if std is not None else ' ' * 8)


def format_table(summary: dict[str, dict]) -> str:
  """The terminal table: mean +- std over seeds and the gain's interval."""
  header = (f"{'run':<14} {'model':<20} {'seeds':>5} {'mIoU %':>15} "
            f"{'pix acc %':>15} {'gain (mIoU points)':>28} {'params':>10} "
            f"{'train img/s':>11} {'minutes':>7}")
  lines = [header, '-' * len(header)]
  for run, r in summary.items():
    gain = ''
    if 'gain' in r:
      g = r['gain']
      gain = f"{100 * g['mean']:+.2f}"
      if g['interval'] is not None:
        lo, hi = g['interval']
        gain += (f" [{100 * lo:+.2f}, {100 * hi:+.2f}] "
                 f"({100 * g['confidence']:.0f}%)")
    lines.append(
        f"{run:<14} {r['model']:<20} {len(r['seeds']):>5} "
        f"{_plus_minus(r['miou'], r['miou_std']):>15} "
        f"{_plus_minus(r['pixel_accuracy'], r['pixel_accuracy_std']):>15} "
        f"{gain:>28} {r.get('params', 0):>10,d} "
        f"{r.get('train_images_per_s', float('nan')):>11.1f} "
        f"{r.get('wall_s', float('nan')) / 60:>7.1f}")
  return '\n'.join(lines)


def _train_or_evaluate(sub, workdir: str, *, reuse: bool) -> dict[str, Any]:
  if reuse:
    # A given teacher is read, never trained further.
    result = evaluate_lib.evaluate_workdir(sub, workdir)
  else:
    result = train_lib.train(sub, workdir)
  return {k: result[k] for k in (*_RESULT_KEYS, 'class_names')
          if k in result}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the comparison; returns the summary (see `summarize`)."""
  seed_list = seeds(config)
  plan = [(TEACHER, None, {})]
  variant_overrides = variants(config)
  for seed in seed_list:
    plan.append((BASELINE, seed, {}))
    plan += [(label, seed, overrides)
             for label, overrides in variant_overrides.items()]
  # Check every run's config before the first one starts.
  subs = []
  for name, seed, overrides in plan:
    sub = sub_config(config, name, workdir, seed=seed, overrides=overrides)
    config_lib.validate(sub, num_devices=jax.device_count(),
                        check_files=name == TEACHER and bool(
                            config.compare.teacher_workdir))
    subs.append(sub)

  rows = {name: {} for name in [TEACHER, BASELINE, *variant_overrides]}
  model_names = {}
  class_names = None
  for (name, seed, _), sub in zip(plan, subs):
    run_dir = run_workdir(config, workdir, name, seed)
    seed_text = '' if seed is None else f', seed {seed}'
    print(f'== {name}: {sub.model.name} ({sub.mode}{seed_text}) in {run_dir} '
          '==', flush=True)
    reuse = name == TEACHER and bool(config.compare.teacher_workdir)
    start = time.perf_counter()
    result = _train_or_evaluate(sub, run_dir, reuse=reuse)
    result['wall_s'] = time.perf_counter() - start
    class_names = result.pop('class_names', class_names)
    rows[name][sub.seed if seed is None else seed] = result
    model_names[name] = sub.model.name
    summary = summarize(rows, model_names, float(config.compare.confidence))
    _write(workdir, summary, class_names, seed_list)
  print(format_table(summary), flush=True)
  print(f'Wall-clock time of the runs: {_total_wall_s(summary) / 60:.1f} '
        'minutes.', flush=True)
  return summary


def _total_wall_s(summary: dict[str, dict]) -> float:
  return sum(r.get('wall_s', 0.0) for r in summary.values())


def _write(workdir: str, summary: dict, class_names, seed_list) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'summary.json')
  # Written whole to a temporary file, then renamed: a crash mid-write never
  # leaves a truncated summary.
  with open(path + '.tmp', 'w') as f:
    json.dump({'runs': summary, 'seeds': seed_list,
               'class_names': class_names,
               'wall_s': _total_wall_s(summary)},
              f, indent=1)
  os.replace(path + '.tmp', path)
