r"""The distillation step with the teacher run online vs read from the cache,
beside the student's own supervised step, in one run.

Each step is the trainer's (`kdseg.train._stage_step`: shard_map over the
devices, state donated), on one synthetic batch, random weights, median of
`--steps` synchronised calls after a warm-up call:

  supervised   the student alone (cross-entropy)
  online       pixel KD with the teacher's forward pass inside the step
  cached       pixel KD with `batch['teacher_logits']` (what
               `config.teacher.cache` feeds): no teacher in the step

Pairs: 'cpu' is the CamVid `:cpu` recipe (tiny_deeplabv3 x3 ->
tiny_lraspp, 128x160 crops, batch 8); 'reference' is DeepLabV3-ResNet50 ->
LR-ASPP-MobileNetV3-Large at 256x256, batch 4, 21 classes.

Usage:
  python benchmarks/cached_teacher.py [--pairs cpu,reference] [--steps 10]
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from kdseg import build
from kdseg import config as config_lib
from kdseg import optim
from kdseg import parallel
from kdseg import stages as stages_lib
from kdseg import teachers as teachers_lib
from kdseg import train as train_lib
from kdseg import train_state

PAIRS = {
    'cpu': dict(teacher=('tiny_deeplabv3', {'width': 3.0}),
                student=('tiny_lraspp', {}), crop=(128, 160), batch=8,
                classes=11),
    'reference': dict(teacher=('deeplabv3_resnet50', {}),
                      student=('lraspp_mobilenet_v3_large', {}),
                      crop=(256, 256), batch=4, classes=21),
}


def _config(pair, distill: bool):
  config = config_lib.defaults()
  config.mode = 'distill' if distill else 'train'
  config.model.name, config.model.options = pair['student']
  config.teacher.name, config.teacher.options = pair['teacher']
  config.data.crop_size = pair['crop']
  config.train.batch_size = pair['batch']
  config.loss.kd_weight = 1.0 if distill else 0.0
  return config


def _median_ms(step, state, batch, teacher_vars, runs):
  times = []
  for _ in range(runs + 1):
    start = time.perf_counter()
    state, metrics = step(state, batch, teacher_vars)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times[1:])


def time_pair(name: str, runs: int) -> dict[str, float]:
  pair = PAIRS[name]
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  shape = (pair['batch'], *pair['crop'])
  images = rng.normal(size=(*shape, 3)).astype(np.float32)
  labels = rng.integers(0, pair['classes'], shape).astype(np.int32)
  out = {}
  for mode in ('supervised', 'online', 'cached'):
    config = _config(pair, mode != 'supervised')
    student = build.create_model(config, 'model', pair['classes'],
                                 axis_name=parallel.AXIS)
    lr_fn = optim.create_learning_rate_fn(config)
    tx = optim.create_optimizer(config, lr_fn)
    state = parallel.replicate(train_state.create_train_state(
        student, tx, jax.random.PRNGKey(0), (*pair['crop'], 3)), mesh)
    batch = {'image': images, 'label': labels}
    teachers = teacher_vars = None
    if mode != 'supervised':
      module = build.create_model(config, 'teacher', pair['classes'])
      teachers = teachers_lib.TeacherSet.single(module, jnp.float32)
      variables = train_state.init_variables(
          module, jax.random.PRNGKey(1), (*pair['crop'], 3))
      teacher_vars = parallel.replicate({teachers_lib.PRIMARY: variables},
                                        mesh)
      if mode == 'cached':
        logits, _ = module.apply(variables, images, train=False)
        batch['teacher_logits'] = np.asarray(logits, np.float32)
    stages = tuple(stages_lib.resolve(config))
    trainer = train_lib.Trainer(
        mesh=mesh, model=student, eval_model=student, tx=tx, lr_fn=lr_fn,
        stages=stages, stage_terms=[()] * len(stages), teachers=teachers)
    step = train_lib._stage_step(  # pylint: disable=protected-access
        config, trainer, stages[0], ignore_index=255)
    out[mode] = _median_ms(step, state, parallel.shard_batch(batch, mesh),
                           teacher_vars, runs)
    print(f'  {name:9s} {mode:10s} {out[mode]:8.1f} ms', flush=True)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--pairs', default='cpu,reference')
  parser.add_argument('--steps', type=int, default=10)
  args = parser.parse_args()
  print(f'jax {jax.__version__}, backend {jax.default_backend()}, '
        f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; '
        f'median of {args.steps} steps')
  rows = {name: time_pair(name, args.steps) for name in args.pairs.split(',')}
  print(f"\n{'pair':<10} {'supervised':>11} {'online':>9} {'cached':>9} "
        f"{'cached/supervised':>18} {'online/cached':>14}")
  for name, r in rows.items():
    print(f"{name:<10} {r['supervised']:>9.1f}ms {r['online']:>7.1f}ms "
          f"{r['cached']:>7.1f}ms {r['cached'] / r['supervised']:>18.2f} "
          f"{r['online'] / r['cached']:>14.2f}")


if __name__ == '__main__':
  main()
