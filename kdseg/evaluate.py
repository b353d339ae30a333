"""Evaluation: a confusion matrix over a whole split, then the metrics."""

import functools
import json
import os
import time
from typing import Any, Optional, Sequence

import jax
import numpy as np

from kdseg import build
from kdseg import data as data_lib
from kdseg import metrics as metrics_lib
from kdseg import models
from kdseg import parallel
from kdseg import progress
from kdseg import train_step as step_lib
from kdseg import visualize

_EVAL_FNS: dict[Any, Any] = {}
CONFUSION_PNG = 'confusion_matrix.png'


def _eval_fn(model, mesh, num_classes: int, ignore_index: int):
  """The mapped eval step, compiled once per (model, mesh, classes)."""
  key = (id(model), id(mesh), num_classes, ignore_index)
  if key not in _EVAL_FNS:
    fn = functools.partial(step_lib.eval_step, model=model,
                           num_classes=num_classes, ignore_index=ignore_index,
                           axis_name=parallel.AXIS)
    # Keep model and mesh alive so that their ids stay unique.
    _EVAL_FNS[key] = (parallel.map_over_devices(
        fn, mesh, batch_argnums=(2,), num_args=3), model, mesh)
  return _EVAL_FNS[key][0]


def evaluate(model, params, batch_stats, source: data_lib.Source, *, mesh,
             batch_size: int, pad_to: Optional[Sequence[int]] = None,
             progress_bar: bool = True) -> dict[str, Any]:
  """Evaluates a model on a whole split.

  Args:
    model: the network (its eval mode is used).
    params, batch_stats: its variables (replicated on `mesh`).
    source: the split to evaluate.
    mesh: from `kdseg.parallel.make_mesh`.
    batch_size: global batch size (divisible by the device count).
    pad_to: optional (H, W) padding for splits whose image sizes vary.
    progress_bar: show a progress bar.

  Returns:
    {'miou', 'pixel_accuracy', 'mean_class_accuracy', 'fw_iou',
     'per_class_iou' (list, NaN for absent classes), 'class_names',
     'confusion_matrix' (list of lists), 'eval_images_per_s'}.
  """
  per_process = batch_size // jax.process_count()
  dataset, _ = data_lib.build_eval_dataset(
      source, batch_size=per_process, pad_to=pad_to,
      process_index=jax.process_index(), process_count=jax.process_count())
  fn = _eval_fn(model, mesh, source.num_classes, source.ignore_index)
  cm = np.zeros((source.num_classes,) * 2, np.int64)
  num_batches = -(-(-(-source.num_examples // jax.process_count()))
                  // per_process)
  bar = progress.bar(total=num_batches, desc='evaluate', enabled=progress_bar)
  images, seconds = 0, 0.0
  for i, batch in enumerate(dataset.as_numpy_iterator()):
    t = time.perf_counter()
    batch = parallel.shard_batch(batch, mesh)
    cm += np.asarray(jax.device_get(fn(params, batch_stats, batch)))
    if i:  # The first batch includes compilation.
      seconds += time.perf_counter() - t
      images += batch_size
    bar.update(1)
  bar.close()
  result = metrics_lib.segmentation_metrics(cm)
  return {
      'miou': result['miou'],
      'pixel_accuracy': result['pixel_accuracy'],
      'mean_class_accuracy': result['mean_class_accuracy'],
      'fw_iou': result['fw_iou'],
      'per_class_iou': [float(x) for x in result['per_class_iou']],
      'class_names': list(source.class_names),
      'confusion_matrix': cm.tolist(),
      'eval_images_per_s': images / seconds if seconds else float('nan'),
  }


def _percent(value: float) -> str:
  return 'n/a' if np.isnan(value) else f'{100 * value:.2f}%'


def format_table(result: dict[str, Any]) -> str:
  """Per-class IoU, mIoU and pixel accuracy of an `evaluate` result.

  Percentages with two decimals; 'n/a' for classes absent from both the
  ground truth and the predictions (they do not count in the mIoU).
  """
  rows = [(f'{i} {name}', _percent(iou)) for i, (name, iou) in enumerate(
      zip(result['class_names'], result['per_class_iou']))]
  summary = [('mIoU', _percent(result['miou'])),
             ('pixel accuracy', _percent(result['pixel_accuracy'])),
             ('mean class accuracy', _percent(result['mean_class_accuracy']))]
  width = max(len(name) for name, _ in rows + summary)
  rule = '-' * (width + 10)
  lines = [f"{'class':<{width}} {'IoU':>9}", rule]
  lines += [f'{name:<{width}} {value:>9}' for name, value in rows]
  lines += [rule] + [f'{name:<{width}} {value:>9}' for name, value in summary]
  return '\n'.join(lines)


def evaluate_workdir(config, workdir: str) -> dict[str, Any]:
  """Evaluates the best checkpoint of the run in `workdir` (mode 'evaluate').

  Prints per-class IoU, mIoU and pixel accuracy as a table, writes
  `workdir/eval.json` and the row-normalised confusion matrix as
  `workdir/confusion_matrix.png`, and returns the result.
  """
  mesh = parallel.make_mesh()
  val_source = build.split_source(config)
  model, variables, meta = build.restore_student(config, workdir,
                                                 val_source.num_classes)
  variables = parallel.replicate(variables, mesh)
  result = evaluate(model, variables['params'], variables['batch_stats'],
                    val_source, mesh=mesh, batch_size=config.eval.batch_size,
                    pad_to=config.data.eval_pad_to,
                    progress_bar=config.train.progress_bar)
  result['params'] = models.count_params(variables['params'])
  result['step'] = meta.get('step')
  result['per_class'] = dict(zip(result['class_names'],
                                 result['per_class_iou']))
  print(format_table(result), flush=True)
  if jax.process_index() == 0:
    result['confusion_matrix_png'] = visualize.write_png(
        os.path.join(workdir, CONFUSION_PNG), visualize.confusion_image(
            np.array(result['confusion_matrix']), result['class_names']))
    with open(os.path.join(workdir, 'eval.json'), 'w') as f:
      json.dump(result, f, indent=1)
  return result
