r"""kdseg's distillation training step against the same step in plain PyTorch.

Both sides run on this machine in the same invocation, one after the other,
on the same synthetic batch (random images, random labels with ~10% of the
pixels set to the ignore index 255):

* kdseg: `kdseg.train_step.train_step` mapped by `kdseg.parallel` (jit of
  shard_map over a one-device 'data' mesh, state donated), i.e. exactly the
  step the trainer runs: frozen teacher forward in eval mode, student forward
  in train mode, CE + T^2 * pixel KL at the label resolution, SGD with
  momentum 0.9 (no weight decay, constant learning rate 0.01).
* PyTorch: the textbook recipe: teacher forward under `torch.no_grad()` in
  eval mode, student forward in train mode, both logits bilinearly up-sampled
  (align_corners=False) to the label size, loss = CE(ignore_index=255) +
  T^2 * KL(softmax(t/T) || softmax(s/T)) summed over classes and averaged
  over the counted pixels, backward, `torch.optim.SGD(momentum=0.9)` step.
  It runs in a child process so that its resident memory is its own.

For each side it prints the compile / warm-up time, the steady throughput
(images/s from the median of `--steps` synchronised steps after `--warmup`
ones), the peak memory and the teacher and student inference throughput
(eval mode, median of `--steps` calls), then the kdseg / PyTorch ratio.

The memory figures are not the same quantity: for kdseg it is the static
buffer assignment of the compiled step (`memory_analysis()`: temporaries +
arguments + outputs); for PyTorch it is the measured growth of the resident
set during the timed steps (VmHWM after resetting it through
/proc/self/clear_refs, minus the resident size just before them).

Pairs:
  small   kdseg `tiny_deeplabv3` (width 1.5) teacher, `tiny_fcn` (width 2.0)
          student, as in configs/default.py; 64x64, batch 16, 5 classes. The
          PyTorch twins are in benchmarks/torch_models.py; their parameter
          counts are checked against kdseg's.
  mobile  `deeplabv3_resnet50` teacher, `lraspp_mobilenet_v3_large` student;
          256x256, batch 4, 21 classes. The PyTorch side needs torchvision.

Usage:
  python benchmarks/distill_step.py [--pair small|mobile] [--batch B]
      [--size S] [--steps 10] [--warmup 2] [--teacher-dtype bfloat16]
      [--conv-impl auto|xla|fast] [--also-xla] [--also-defaults]
      [--torch-threads N]
"""

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional

import numpy as np

_WORKER_FLAG = '--_torch-worker'
_RESULT_PREFIX = 'TORCH_RESULT '
_TORCHVISION_HINT = ('PyTorch side needs torchvision '
                     '(pip install torch==2.14.1 torchvision==0.29.1)')


@dataclasses.dataclass(frozen=True)
class Pair:
  """A teacher/student pair and its default problem size."""
  teacher: str
  teacher_options: dict
  student: str
  student_options: dict
  size: int
  batch: int
  num_classes: int


PAIRS = {
    'small': Pair('tiny_deeplabv3', {'width': 1.5}, 'tiny_fcn',
                  {'width': 2.0}, size=64, batch=16, num_classes=5),
    'mobile': Pair('deeplabv3_resnet50', {}, 'lraspp_mobilenet_v3_large', {},
                   size=256, batch=4, num_classes=21),
}


def parse_args(argv=None) -> argparse.Namespace:
  """Parses the flags; batch, size and classes default to the pair's."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--pair', choices=sorted(PAIRS), default='small')
  parser.add_argument('--batch', type=int, default=None,
                      help='global batch (default: the pair\'s)')
  parser.add_argument('--size', type=int, default=None,
                      help='square image size (default: the pair\'s)')
  parser.add_argument('--num-classes', type=int, default=None)
  parser.add_argument('--steps', type=int, default=10,
                      help='timed steps (median reported)')
  parser.add_argument('--warmup', type=int, default=2,
                      help='untimed steps before the timed ones')
  parser.add_argument('--temperature', type=float, default=4.0)
  parser.add_argument('--teacher-dtype', choices=('float32', 'bfloat16'),
                      default='float32')
  parser.add_argument('--conv-impl', choices=('auto', 'xla', 'fast'),
                      default='auto', help='kdseg.ops.conv implementation')
  parser.add_argument('--torch-threads', type=int, default=None,
                      help='PyTorch intra-op threads (default: all CPUs)')
  parser.add_argument('--also-defaults', action='store_true',
                      help="also run kdseg with XLA's default CPU options "
                      '(KDSEG_CPU_COMPILER_OPTIONS=off: YNNPACK convolutions)')
  parser.add_argument('--also-xla', action='store_true',
                      help='also time kdseg with the plain XLA convolutions')
  parser.add_argument(_WORKER_FLAG, action='store_true', dest='torch_worker',
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  pair = PAIRS[args.pair]
  args.batch = args.batch or pair.batch
  args.size = args.size or pair.size
  args.num_classes = args.num_classes or pair.num_classes
  if args.steps < 1 or args.warmup < 1:
    parser.error('--steps and --warmup must be at least 1.')
  return args


def make_batch(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
  """Images float32 [B, H, W, 3] and int32 labels [B, H, W] (NHWC)."""
  rng = np.random.default_rng(0)
  shape = (args.batch, args.size, args.size)
  images = rng.standard_normal((*shape, 3), dtype=np.float32)
  labels = rng.integers(0, args.num_classes, shape, dtype=np.int32)
  # Some ignored pixels, so that both sides exercise the masking.
  labels[rng.random(shape) < 0.1] = 255
  return images, labels


def time_calls(fn: Callable[[], Any], warmup: int, steps: int
               ) -> tuple[float, list[float]]:
  """Returns (total warm-up seconds, per-call seconds of the timed calls).

  `fn` must return only once its work is done (it synchronises itself).
  """
  start = time.perf_counter()
  for _ in range(warmup):
    fn()
  warm = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return warm, times


def _rate(batch: int, times: list[float]) -> float:
  return batch / statistics.median(times)


# kdseg ----------------------------------------------------------------------


def kdseg_models(args: argparse.Namespace):
  """The kdseg teacher and student modules and the teacher dtype."""
  import jax.numpy as jnp
  from kdseg import models

  pair = PAIRS[args.pair]
  teacher_dtype = jnp.bfloat16 if args.teacher_dtype == 'bfloat16' else (
      jnp.float32)
  teacher = models.create(pair.teacher, num_classes=args.num_classes,
                          dtype=teacher_dtype, **pair.teacher_options)
  student = models.create(pair.student, num_classes=args.num_classes,
                          **pair.student_options)
  return teacher, student, teacher_dtype


def kdseg_param_counts(args: argparse.Namespace) -> tuple[int, int]:
  """(teacher, student) parameter counts, from abstract shapes (no compute)."""
  import jax
  from kdseg import train_state

  teacher, student, _ = kdseg_models(args)
  image_shape = (args.size, args.size, 3)
  counts = []
  for model in (teacher, student):
    shapes = jax.eval_shape(
        lambda m=model: train_state.init_variables(
            m, jax.random.PRNGKey(0), image_shape))
    counts.append(sum(int(np.prod(x.shape))
                      for x in jax.tree.leaves(shapes['params'])))
  return counts[0], counts[1]


def bench_kdseg(args: argparse.Namespace, impl: str) -> dict:
  """Times kdseg's mapped train_step and the two inference forwards."""
  import jax
  from kdseg import compiler
  from kdseg import forward
  from kdseg import optim
  from kdseg import parallel
  from kdseg import train_state
  from kdseg import train_step
  from kdseg.config import defaults
  from kdseg.ops import conv as conv_ops

  # Chosen at trace time, so it must be set before anything is jitted below.
  conv_ops.set_implementation(impl)
  teacher, student, teacher_dtype = kdseg_models(args)
  config = defaults()
  config.train.weight_decay = 0.0
  config.train.learning_rate = {'name': 'constant', 'value': 0.01}
  config.loss.temperature = {'name': 'constant', 'value': args.temperature}
  config.loss.aux_weight = 0.0
  lr_fn = optim.create_learning_rate_fn(config)
  temperature_fn = optim.create_temperature_fn(config)
  tx = optim.create_optimizer(config, lr_fn)

  mesh = parallel.make_mesh()
  image_shape = (args.size, args.size, 3)
  teacher_vars = train_state.init_variables(teacher, jax.random.PRNGKey(0),
                                            image_shape)
  state = parallel.replicate(
      train_state.create_train_state(student, tx, jax.random.PRNGKey(1),
                                     image_shape), mesh)
  teacher_vars = parallel.replicate(teacher_vars, mesh)
  images, labels = make_batch(args)
  batch = parallel.shard_batch({'image': images, 'label': labels}, mesh)

  step = parallel.map_over_devices(
      functools.partial(
          train_step.train_step, model=student, tx=tx, lr_fn=lr_fn,
          temperature_fn=temperature_fn, loss_config=config.loss,
          teacher_model=teacher, teacher_dtype=teacher_dtype),
      mesh, batch_argnums=(1,), num_args=3, donate_argnums=(0,))
  start = time.perf_counter()
  compiled = step.lower(state, batch, teacher_vars).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  peak_bytes = None
  if memory is not None:
    peak_bytes = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
                  + memory.output_size_in_bytes)

  holder = {'state': state}

  def one_step():
    # The state is donated: always feed back the step's own output.
    holder['state'], holder['metrics'] = compiled(holder['state'], batch,
                                                  teacher_vars)
    jax.block_until_ready((holder['state'], holder['metrics']))

  warm_s, times = time_calls(one_step, args.warmup, args.steps)
  loss = float(holder['metrics']['loss'])

  # Inference: eval mode, logits only (no feature maps to write back).
  student_vars = {'params': holder['state'].params,
                  'batch_stats': holder['state'].batch_stats}
  teacher_fwd = compiler.jit(lambda v, x: forward.teacher_apply(
      teacher, v, x, dtype=teacher_dtype)[0])
  student_fwd = compiler.jit(
      lambda v, x: student.apply(v, x, train=False)[0])
  x = batch['image']
  infer = {}
  for name, fn, variables in (('teacher', teacher_fwd, teacher_vars),
                              ('student', student_fwd, student_vars)):
    _, infer_times = time_calls(
        lambda f=fn, v=variables: jax.block_until_ready(f(v, x)),
        args.warmup, args.steps)
    infer[name] = _rate(args.batch, infer_times)
  return {'compile_s': compile_s, 'warmup_s': warm_s,
          'step_ms': 1e3 * statistics.median(times),
          'step_range_ms': (1e3 * min(times), 1e3 * max(times)),
          'images_per_s': _rate(args.batch, times), 'peak_bytes': peak_bytes,
          'loss': loss, 'teacher_ips': infer['teacher'],
          'student_ips': infer['student']}


# PyTorch (runs in a child process) -------------------------------------------


def _rss_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _vm_hwm_bytes() -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) * 1024
  raise RuntimeError('VmHWM not found in /proc/self/status.')


def _reset_vm_hwm() -> bool:
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')  # '5' resets the peak resident set size (VmHWM).
    return True
  except OSError:
    return False


def torch_models_for(args: argparse.Namespace):
  """(teacher, student, outputs_are_dicts) PyTorch modules for the pair."""
  pair = PAIRS[args.pair]
  if args.pair == 'small':
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_models  # pylint: disable=import-outside-toplevel
    teacher = getattr(torch_models, pair.teacher)(
        num_classes=args.num_classes, **pair.teacher_options)
    student = getattr(torch_models, pair.student)(
        num_classes=args.num_classes, **pair.student_options)
    return teacher, student, False
  from torchvision.models import segmentation  # pylint: disable=g-import-not-at-top
  teacher = segmentation.deeplabv3_resnet50(
      weights=None, weights_backbone=None, num_classes=args.num_classes,
      aux_loss=False)
  student = segmentation.lraspp_mobilenet_v3_large(
      weights=None, weights_backbone=None, num_classes=args.num_classes)
  return teacher, student, True


def bench_torch(args: argparse.Namespace) -> dict:
  """Times the textbook PyTorch distillation step and the inference passes."""
  import contextlib
  import torch
  import torch.nn.functional as F

  # All cores, like XLA's CPU thread pool. On a CPU shared with other work,
  # fewer threads can be faster: each parallel op waits for its slowest
  # thread, which may be descheduled (see --torch-threads).
  torch.set_num_threads(args.torch_threads or os.cpu_count())
  torch.manual_seed(0)
  teacher, student, dict_outputs = torch_models_for(args)
  teacher.eval()
  student.train()
  for p in teacher.parameters():
    p.requires_grad_(False)
  optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
  images, labels = make_batch(args)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  y = torch.from_numpy(labels).long()
  size = tuple(y.shape[1:])
  temperature = args.temperature
  bf16 = args.teacher_dtype == 'bfloat16'

  def logits_of(model, inputs):
    out = model(inputs)
    return out['out'] if dict_outputs else out

  def teacher_logits(inputs):
    autocast = (torch.autocast('cpu', dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())
    with torch.no_grad(), autocast:
      t = logits_of(teacher, inputs)
    # The softmaxes of the loss run in float32 whatever the teacher dtype.
    return t.float()

  def up(logits):
    return F.interpolate(logits, size=size, mode='bilinear',
                         align_corners=False)

  state = {}

  def one_step():
    t = up(teacher_logits(x))
    s = up(logits_of(student, x))
    ce = F.cross_entropy(s, y, ignore_index=255)
    mask = (y != 255).float()
    log_q = F.log_softmax(s / temperature, dim=1)
    log_p = F.log_softmax(t / temperature, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    kd = temperature ** 2 * (kl * mask).sum() / mask.sum().clamp_min(1.0)
    loss = ce + kd
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    state['loss'] = loss.detach()

  # Warm-up separately so that the memory window covers the timed steps only.
  start = time.perf_counter()
  for _ in range(args.warmup):
    one_step()
  warm_s = time.perf_counter() - start
  hwm_reset = _reset_vm_hwm()
  baseline = _rss_bytes()
  _, times = time_calls(one_step, 0, args.steps)
  peak_increase = _vm_hwm_bytes() - baseline if hwm_reset else None

  student.eval()
  infer = {}
  with torch.no_grad():
    for name, fn in (('teacher', lambda: teacher_logits(x)),
                     ('student', lambda: logits_of(student, x))):
      _, infer_times = time_calls(fn, args.warmup, args.steps)
      infer[name] = _rate(args.batch, infer_times)
  return {'compile_s': None, 'warmup_s': warm_s,
          'step_ms': 1e3 * statistics.median(times),
          'step_range_ms': (1e3 * min(times), 1e3 * max(times)),
          'images_per_s': _rate(args.batch, times),
          'peak_bytes': peak_increase, 'loss': float(state['loss']),
          'teacher_ips': infer['teacher'], 'student_ips': infer['student'],
          'teacher_params': sum(p.numel() for p in teacher.parameters()),
          'student_params': sum(p.numel() for p in student.parameters()),
          'threads': torch.get_num_threads(), 'version': torch.__version__}


def run_torch_child(argv: list[str]) -> Optional[dict]:
  """Runs `bench_torch` in a fresh interpreter; returns its result or None."""
  cmd = [sys.executable, os.path.abspath(__file__), *argv, _WORKER_FLAG]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  for line in proc.stdout.splitlines():
    if line.startswith(_RESULT_PREFIX):
      return json.loads(line[len(_RESULT_PREFIX):])
  print(f'PyTorch child failed (exit {proc.returncode}):\n'
        f'{proc.stderr[-3000:]}')
  return None


# Report ---------------------------------------------------------------------


def _fmt_mib(value: Optional[int]) -> str:
  return 'n/a' if value is None else f'{value / 2**20:.1f} MiB'


def _fmt_s(value: Optional[float]) -> str:
  return '-' if value is None else f'{value:.2f} s'


def print_result(label: str, result: dict, args: argparse.Namespace,
                 memory_kind: str) -> None:
  """Prints one side's numbers; `memory_kind` says what the memory means."""
  print(f'{label}')
  print(f'  compile            {_fmt_s(result["compile_s"])}')
  print(f'  warm-up            {_fmt_s(result["warmup_s"])} '
        f'({args.warmup} step(s))')
  low, high = result['step_range_ms']
  # The range shows how much background load disturbed the timed steps.
  print(f'  train step         {result["step_ms"]:.1f} ms median '
        f'[{low:.1f}-{high:.1f}], {result["images_per_s"]:.1f} images/s '
        f'(last loss {result["loss"]:.4f})')
  print(f'  peak memory        {_fmt_mib(result["peak_bytes"])} '
        f'({memory_kind})')
  print(f'  teacher inference  {result["teacher_ips"]:.1f} images/s')
  print(f'  student inference  {result["student_ips"]:.1f} images/s')


def main(argv: list[str]) -> None:
  """Runs both sides (or, with the hidden worker flag, the PyTorch one)."""
  args = parse_args(argv)
  if args.torch_worker:
    print(_RESULT_PREFIX + json.dumps(bench_torch(args)), flush=True)
    return

  import jax
  from kdseg import compiler

  pair = PAIRS[args.pair]
  start_all = time.perf_counter()
  print(f'loadavg at start: {os.getloadavg()}  cpus: {os.cpu_count()}')
  print(f'jax {jax.__version__} ({jax.default_backend()}, '
        f'{jax.device_count()} device(s)); kdseg compiler options '
        f'{compiler.options()}')
  print(f'pair {args.pair}: teacher {pair.teacher} {pair.teacher_options}, '
        f'student {pair.student} {pair.student_options}; '
        f'{args.size}x{args.size}, batch {args.batch}, '
        f'{args.num_classes} classes, T={args.temperature}, '
        f'teacher dtype {args.teacher_dtype}; '
        f'{args.warmup} warm-up + {args.steps} timed steps')
  t_params, s_params = kdseg_param_counts(args)
  print(f'kdseg params:   teacher {t_params:,}  student {s_params:,}')

  # PyTorch first: a parameter-count mismatch should stop the run early.
  torch_result = None
  if args.pair == 'mobile' and importlib.util.find_spec('torchvision') is None:
    print(_TORCHVISION_HINT)
  else:
    torch_result = run_torch_child(argv)
    if torch_result is not None:
      print(f'PyTorch params: teacher {torch_result["teacher_params"]:,}  '
            f'student {torch_result["student_params"]:,}')
      if args.pair == 'small':
        assert (torch_result['teacher_params'], torch_result['student_params']
                ) == (t_params, s_params), 'PyTorch twins differ from kdseg.'

  # (conv2d implementation, KDSEG_CPU_COMPILER_OPTIONS) per kdseg run.
  variants = [(args.conv_impl, 'auto')]
  if args.also_xla:
    variants.append(('xla', 'auto'))
  if args.also_defaults:
    variants.append((args.conv_impl, 'off'))
  kdseg_results = {}
  for impl, setting in variants:
    # Read when the step is traced and compiled, inside bench_kdseg.
    os.environ[compiler.ENV_VAR] = setting
    label = f'{impl}, options {setting}'
    kdseg_results[label] = bench_kdseg(args, impl)

  print()
  for label, result in kdseg_results.items():
    print_result(f'kdseg (conv impl {label})', result, args,
                 'memory_analysis temp+argument+output')
  if torch_result is not None:
    print_result(f'PyTorch {torch_result["version"]} '
                 f'({torch_result["threads"]} threads)', torch_result, args,
                 'peak RSS increase over the timed steps')
    for label, result in kdseg_results.items():
      print(f'ratio kdseg[{label}]/PyTorch images/s: train step '
            f'{result["images_per_s"] / torch_result["images_per_s"]:.2f}x, '
            f'teacher inference '
            f'{result["teacher_ips"] / torch_result["teacher_ips"]:.2f}x, '
            f'student inference '
            f'{result["student_ips"] / torch_result["student_ips"]:.2f}x')
  print(f'loadavg at end: {os.getloadavg()}  '
        f'(total {time.perf_counter() - start_all:.0f} s)')


if __name__ == '__main__':
  main(sys.argv[1:])
