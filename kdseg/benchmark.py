"""Mode 'benchmark': what the teacher and the student cost at inference.

For each of `benchmark.models` ('teacher' is `config.teacher`, 'student' is
`config.model`) it measures, on the current default device, the inference
function `kdseg.inference.segment` (uint8 images to class maps, as served by
an export) on a batch of `benchmark.batch_size` random images of
`benchmark.resolution`:

- parameters;
- FLOPs from XLA's cost analysis of the compiled function (a multiply-add
  counts 2), per image;
- memory: the compiled function's arguments + outputs + temporaries from
  XLA's memory analysis (every platform), and the device's peak bytes in use
  where the device reports it (GPUs, TPUs; 'n/a' on CPU). The peak is the
  process's high-water mark, so models run from the smallest to the largest:
  each one's reading then is its own;
- latency per batch (mean and median of `benchmark.steps` timed calls after
  `benchmark.warmup` untimed ones) and throughput in images/s;
- with `benchmark.litert`, the student at batch 1 in JAX and as LiteRT
  models (size on disk, latency per image in the LiteRT interpreter).

The student's weights come from the workdir's checkpoint, the teacher's from
`teacher.checkpoint`; without a checkpoint a model runs with random weights
(its cost does not depend on them), and the table says so. Prints a table and
writes `<workdir>/benchmark.json`.
"""

import json
import os
import statistics
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdseg import build
from kdseg import checkpoint
from kdseg import compiler
from kdseg import inference
from kdseg import litert
from kdseg import models
from kdseg import progress
from kdseg import train_state as state_lib

RANDOM_WEIGHTS = 'random (no checkpoint)'


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds at least one saved step."""
  directory = checkpoint.checkpoint_dir(workdir)
  return os.path.isdir(directory) and any(
      name.isdigit() for name in os.listdir(directory))


def _flops(compiled) -> Optional[float]:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # One entry per program in older JAX.
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get('flops')
  return float(flops) if flops is not None and flops >= 0 else None


def _compiled_memory(compiled) -> Optional[int]:
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError):
    return None
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes +
             stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def _device_peak(device) -> Optional[int]:
  stats = device.memory_stats()  # None on CPU.
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return int(stats['peak_bytes_in_use'])


def time_calls(fn, *args, warmup: int, steps: int, bar=None) -> list[float]:
  """Seconds of each of `steps` calls of `fn(*args)`, after `warmup` calls."""
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    if i >= warmup:
      times.append(time.perf_counter() - start)
    if bar is not None:
      bar.update(1)
  return times


def benchmark_model(model, variables: Any, *, batch_size: int,
                    resolution: tuple[int, int], warmup: int, steps: int,
                    seed: int = 0, desc: str = 'benchmark',
                    progress_bar: bool = True) -> dict[str, Any]:
  """Costs of `inference.segment` for one model on the default device.

  Returns:
    {'params', 'flops_per_image' (None where XLA gives none),
     'compiled_memory_bytes', 'device_peak_bytes' (None where the device
     keeps no statistics), 'compile_s', 'latency_ms_mean',
     'latency_ms_median', 'images_per_s'}.
  """
  images = jax.random.randint(jax.random.PRNGKey(seed),
                              (batch_size, *resolution, 3), 0, 256,
                              jnp.int32).astype(jnp.uint8)
  variables = jax.device_put(variables)
  start = time.perf_counter()
  compiled = compiler.jit(
      lambda v, x: inference.segment(model, v, x)).lower(
          variables, images).compile()
  compile_s = time.perf_counter() - start
  bar = progress.bar(total=warmup + steps, desc=desc, enabled=progress_bar)
  times = time_calls(compiled, variables, images, warmup=warmup, steps=steps,
                     bar=bar)
  bar.close()
  flops = _flops(compiled)
  mean = statistics.fmean(times)
  return {
      'params': models.count_params(variables['params']),
      'flops_per_image': None if flops is None else flops / batch_size,
      'compiled_memory_bytes': _compiled_memory(compiled),
      'device_peak_bytes': _device_peak(images.devices().pop()),
      'compile_s': compile_s,
      'latency_ms_mean': 1e3 * mean,
      'latency_ms_median': 1e3 * statistics.median(times),
      'images_per_s': batch_size / mean,
  }


def _load(config, label: str, workdir: str, num_classes: int):
  """(model, variables, weights description) of 'teacher' or 'student'."""
  if label == 'teacher' and config.teacher.checkpoint:
    model, variables, meta = build.load_teacher(config, num_classes)
    return model, variables, (f'{config.teacher.checkpoint} '
                              f"(step {meta.get('step')})")
  if label == 'student' and has_checkpoint(workdir):
    model, variables, meta = build.restore_student(config, workdir,
                                                   num_classes)
    return model, variables, f"{workdir} (step {meta.get('step')})"
  model = build.create_model(
      config, 'teacher' if label == 'teacher' else 'model', num_classes)
  variables = compiler.jit(
      lambda rng: state_lib.init_variables(model, rng,
                                           build.image_shape(config)))(
                                               jax.random.PRNGKey(config.seed))
  variables = {'params': variables['params'],
               'batch_stats': variables.get('batch_stats', {})}
  return model, variables, RANDOM_WEIGHTS


def _mb(value: Optional[float]) -> str:
  return 'n/a' if value is None else f'{value / 2**20:.1f}'


def format_table(rows: dict[str, dict[str, Any]]) -> str:
  """The benchmark rows as an aligned text table."""
  header = (f"{'':<8} {'model':<22} {'params':>11} {'GFLOPs/img':>10} "
            f"{'mem MB':>8} {'peak MB':>8} {'ms/batch':>9} {'img/s':>9}  "
            'weights')
  lines = [header, '-' * len(header)]
  for label, r in rows.items():
    flops = r['flops_per_image']
    lines.append(
        f"{label:<8} {r['model']:<22} {r['params']:>11,d} "
        f"{'n/a' if flops is None else f'{flops / 1e9:.3f}':>10} "
        f"{_mb(r['compiled_memory_bytes']):>8} "
        f"{_mb(r['device_peak_bytes']):>8} {r['latency_ms_mean']:>9.2f} "
        f"{r['images_per_s']:>9.1f}  {r['weights']}")
  return '\n'.join(lines)


def benchmark_litert(config: ml_collections.ConfigDict, model, variables,
                     *, resolution: tuple[int, int]) -> dict[str, Any]:
  """The student at batch 1: JAX, and LiteRT in each `benchmark.litert`
  format (size of the .tflite, latency per image in the interpreter)."""
  spec = config.benchmark
  threads = os.cpu_count() or 1
  rows = {'jax': {'size_bytes': None, **benchmark_model(
      model, variables, batch_size=1, resolution=resolution,
      warmup=spec.warmup, steps=spec.steps, seed=config.seed,
      desc='benchmark student, batch 1',
      progress_bar=config.train.progress_bar)}}
  images = np.random.default_rng(config.seed).integers(
      0, 256, (8, *resolution, 3), dtype=np.uint8)
  for fmt in spec.litert:
    start = time.perf_counter()
    flatbuffer = litert.convert(model, variables, size=resolution, fmt=fmt,
                                calibration_images=images)
    convert_s = time.perf_counter() - start
    classify, _ = litert.classifier(flatbuffer, num_threads=threads)
    times = time_calls(classify, images[0], warmup=spec.warmup,
                       steps=spec.steps)
    mean = statistics.fmean(times)
    rows[f'litert_{fmt}'] = {
        'size_bytes': len(flatbuffer), 'convert_s': convert_s,
        'latency_ms_mean': 1e3 * mean,
        'latency_ms_median': 1e3 * statistics.median(times),
        'images_per_s': 1 / mean}
  return {'interpreter': litert.interpreter_name(), 'threads': threads,
          'model': config.model.name, 'rows': rows}


def format_litert_table(on_device: dict[str, Any]) -> str:
  """The batch-1 rows of `benchmark_litert` as a text table."""
  lines = [f"{on_device['model']} at batch 1 ({on_device['interpreter']}, "
           f"{on_device['threads']} threads for LiteRT):",
           f"{'':<16} {'size KiB':>9} {'ms/image':>9} {'img/s':>8}"]
  for label, r in on_device['rows'].items():
    size = r['size_bytes']
    lines.append(f"{label:<16} {'' if size is None else f'{size / 1024:.0f}':>9} "
                 f"{r['latency_ms_mean']:>9.2f} {r['images_per_s']:>8.1f}")
  return '\n'.join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Benchmarks `config.benchmark.models`; returns what benchmark.json holds."""
  spec = config.benchmark
  # From a checkpoint's metadata when there is one: no data set needed.
  num_classes, _ = build.classes(
      config, workdir if has_checkpoint(workdir) else '',
      config.teacher.checkpoint if 'teacher' in spec.models else '')
  resolution = tuple(int(s) for s in spec.resolution)
  loaded = {label: _load(config, label, workdir, num_classes)
            for label in spec.models}
  rows = {}
  # Smallest first, so that each device peak reading is the model's own.
  for label in sorted(loaded, key=lambda k: models.count_params(
      loaded[k][1]['params'])):
    model, variables, weights = loaded[label]
    result = benchmark_model(
        model, variables, batch_size=spec.batch_size, resolution=resolution,
        warmup=spec.warmup, steps=spec.steps, seed=config.seed,
        desc=f'benchmark {label}', progress_bar=config.train.progress_bar)
    name = config.teacher.name if label == 'teacher' else config.model.name
    rows[label] = {'model': name, 'weights': weights, **result}
  rows = {label: rows[label] for label in spec.models}
  on_device = {}
  if spec.litert:
    student = (loaded['student'] if 'student' in loaded else
               _load(config, 'student', workdir, num_classes))
    on_device = benchmark_litert(config, *student[:2], resolution=resolution)
  device = jax.devices()[0]
  summary = {
      'device': f'{device.platform} ({device.device_kind})',
      'resolution': list(resolution), 'batch_size': spec.batch_size,
      'warmup': spec.warmup, 'steps': spec.steps, 'num_classes': num_classes,
      'function': 'uint8 images -> class maps (normalise, forward, resize '
                  'logits, argmax)',
      'models': rows,
  }
  if on_device:
    summary['litert'] = on_device
  print(f"Inference on {summary['device']}, batch {spec.batch_size} at "
        f'{resolution[0]}x{resolution[1]}:', flush=True)
  print(format_table(rows), flush=True)
  if on_device:
    print(format_litert_table(on_device), flush=True)
  if any(r['weights'] == RANDOM_WEIGHTS for r in rows.values()):
    print('Random weights where no checkpoint was given: costs do not depend '
          'on the weight values.', flush=True)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'benchmark.json'), 'w') as f:
      json.dump(summary, f, indent=1)
  return summary
