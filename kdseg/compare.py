"""Mode 'compare': teacher, baseline student and distilled student, side by side.

Trains the teacher (`config.teacher`) and the baseline student (`config.model`)
with supervision only, distills the student from that teacher, evaluates all
three on the validation split, and prints and writes
`workdir/summary.json`: mIoU, pixel accuracy, parameters, images/s. Each run
lives in its own sub-workdir (`teacher/`, `student/`, `distill/`), so an
interrupted comparison resumes where it stopped.
"""

import copy
import json
import os
from typing import Any

import jax
import ml_collections

RUNS = ('teacher', 'student', 'distill')


def sub_config(config: ml_collections.ConfigDict, run: str,
               workdir: str) -> ml_collections.ConfigDict:
  """The config of one of the three runs."""
  sub = copy.deepcopy(config)
  with sub.unlocked():
    if run != 'distill':
      # Supervised runs: distillation terms, stages and extra teachers are
      # the distilled student's configuration only.
      sub.loss.terms = ml_collections.ConfigDict()
      sub.stages = ()
      sub.extra_teachers = ml_collections.ConfigDict()
    if run == 'teacher':
      sub.mode = 'train'
      sub.model.name = config.teacher.name
      sub.model.options = copy.deepcopy(config.teacher.options)
      sub.model.dtype = 'float32'
    elif run == 'student':
      sub.mode = 'train'
    else:
      sub.mode = 'distill'
      sub.teacher.checkpoint = os.path.join(workdir, 'teacher')
  return sub


def format_table(rows: dict[str, dict[str, Any]]) -> str:
  header = (f"{'run':<9} {'model':<22} {'mIoU':>7} {'pix acc':>8} "
            f"{'params':>11} {'train img/s':>12} {'eval img/s':>11}")
  lines = [header, '-' * len(header)]
  for run, r in rows.items():
    lines.append(
        f"{run:<9} {r['model']:<22} {100 * r['miou']:>6.2f}% "
        f"{100 * r['pixel_accuracy']:>7.2f}% {r['params']:>11,d} "
        f"{r.get('train_images_per_s', float('nan')):>12.1f} "
        f"{r.get('eval_images_per_s', float('nan')):>11.1f}")
  return '\n'.join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the three trainings and returns {run: result}."""
  from kdseg import config as config_lib
  from kdseg import train as train_lib
  rows = {}
  for name in RUNS:
    sub = sub_config(config, name, workdir)
    config_lib.validate(sub, num_devices=jax.device_count())
    print(f'== {name}: {sub.model.name} ({sub.mode}) ==', flush=True)
    result = train_lib.train(sub, os.path.join(workdir, name))
    rows[name] = {'model': sub.model.name, **{
        k: result[k] for k in ('miou', 'pixel_accuracy', 'mean_class_accuracy',
                               'params', 'train_images_per_s',
                               'eval_images_per_s', 'per_class_iou', 'step')
        if k in result}}
  table = format_table(rows)
  print(table, flush=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump({'runs': rows, 'class_names': result['class_names']}, f,
                indent=1)
  return rows
