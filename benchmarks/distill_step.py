r"""kdseg's distillation training step against the same step in plain PyTorch.

Both sides run on this machine in the same invocation, on the same synthetic
batch (random images, random labels with ~10% of the pixels set to the
ignore index 255), taking turns call by call (see `interleave`):

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
  It runs in a child process, so that its resident memory and its threads
  are its own, which waits while kdseg runs.

Both sides start from the same weights where kdseg can convert PyTorch's
(the `mobile` pair, torchvision's own modules): the PyTorch side's random
initialisation (`torch.manual_seed(0)`) is written to a file and converted
with `kdseg.convert.from_torchvision`, so that after the same number of steps
on the same batch the two losses agree up to float32 rounding; the report
prints both and their relative difference. The `small` pair's PyTorch twins
have no converter: each side starts from its own initialisation, and the
losses are printed but not compared.

For each side it prints the compile / warm-up time, the steady throughput
(images/s from the median of `--steps` synchronised steps after `--warmup`
ones), the peak memory and the teacher and student inference throughput
(eval mode, median of `--steps` calls), then the kdseg / PyTorch ratios: of
the medians, and the median of the per-round ratios ('paired'). Each round
runs one call of every side back to back, so a VM whose speed drifts by
20-30% over minutes (this one's does) still compares like with like.

The memory figures are not the same quantity: for kdseg it is the static
buffer assignment of the compiled step (`memory_analysis()`: temporaries +
arguments + outputs); for PyTorch on the CPU it is the measured growth of
the resident set during the timed steps (VmHWM after resetting it through
/proc/self/clear_refs, minus the resident size just before them), and on a
GPU the peak of `torch.cuda.max_memory_allocated()` over the timed steps.

Accelerators: kdseg runs on JAX's default backend (a GPU or TPU when
present). PyTorch runs on CUDA when it is available (`--torch-device auto`,
the default), synchronising after every call. JAX is told not to
preallocate most of the GPU's memory (`XLA_PYTHON_CLIENT_PREALLOCATE=false`,
unless set otherwise), so that both fit on one card.

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
      [--torch-threads N] [--torch-device auto|cpu|cuda]
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

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


# Pairs whose PyTorch modules kdseg.convert reads (torchvision's own).
CONVERTIBLE = ('mobile',)
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
                      help='timed rounds: one call of each side per round '
                      '(medians reported)')
  parser.add_argument('--warmup', type=int, default=2,
                      help='untimed steps before the timed ones')
  parser.add_argument('--temperature', type=float, default=4.0)
  parser.add_argument('--teacher-dtype', choices=('float32', 'bfloat16'),
                      default='float32')
  parser.add_argument('--conv-impl', choices=('auto', 'xla', 'fast'),
                      default='auto', help='kdseg.ops.conv implementation')
  parser.add_argument('--torch-threads', type=int, default=None,
                      help='PyTorch intra-op threads (default: all CPUs)')
  parser.add_argument('--torch-device', choices=('auto', 'cpu', 'cuda'),
                      default='auto',
                      help="PyTorch's device; auto: CUDA when available")
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


def converted_variables(args: argparse.Namespace, path: str
                        ) -> tuple[dict, dict]:
  """kdseg (teacher, student) variables from the PyTorch side's initial
  state dicts in `path` (an .npz written by `serve_torch`)."""
  from kdseg import convert

  pair = PAIRS[args.pair]
  with np.load(path) as data:
    flat = {key: data[key] for key in data.files}
  out = []
  for role, name in (('teacher', pair.teacher), ('student', pair.student)):
    prefix = role + '/'
    state_dict = {k[len(prefix):]: v for k, v in flat.items()
                  if k.startswith(prefix)}
    out.append(convert.from_torchvision(name, state_dict))
  return out[0], out[1]


def prepare_kdseg(args: argparse.Namespace, impl: str,
                  initial: Optional[tuple[dict, dict]] = None) -> dict:
  """Compiles kdseg's mapped train_step and the two inference forwards.

  `initial`: (teacher, student) variables to start from (`converted_variables`);
  None: kdseg's own random initialisation.

  Returns {'calls': {'step', 'teacher', 'student'} -> a function that runs
  one synchronised call and returns its seconds, 'compile_s', 'peak_bytes',
  'loss' -> the last step's loss}.
  """
  import jax
  import jax.numpy as jnp
  from kdseg import compiler
  from kdseg import forward
  from kdseg import optim
  from kdseg import parallel
  from kdseg import stages
  from kdseg import teachers
  from kdseg import train_state
  from kdseg import train_step
  from kdseg.config import defaults
  from kdseg.ops import conv as conv_ops

  # Chosen at trace time: everything is traced and compiled in here.
  conv_ops.set_implementation(impl)
  teacher, student, teacher_dtype = kdseg_models(args)
  config = defaults()
  config.train.weight_decay = 0.0
  config.train.learning_rate = {'name': 'constant', 'value': 0.01}
  config.loss.temperature = {'name': 'constant', 'value': args.temperature}
  config.loss.aux_weight = 0.0
  lr_fn = optim.create_learning_rate_fn(config)
  temperature_fn = stages.temperature_fn(stages.resolve(config)[0])
  tx = optim.create_optimizer(config, lr_fn)

  mesh = parallel.make_mesh()
  image_shape = (args.size, args.size, 3)
  teacher_vars = train_state.init_variables(teacher, jax.random.PRNGKey(0),
                                            image_shape)
  state = train_state.create_train_state(student, tx, jax.random.PRNGKey(1),
                                         image_shape)
  if initial is not None:
    teacher_vars = jax.tree.map(jnp.asarray, initial[0])
    student_vars = jax.tree.map(jnp.asarray, initial[1])
    state = state.replace(params=student_vars['params'],
                          batch_stats=student_vars['batch_stats'],
                          opt_state=tx.init(train_state.join_trainable(
                              student_vars['params'], state.connector_params)))
  state = parallel.replicate(state, mesh)
  teacher_vars = parallel.replicate({'teacher': teacher_vars}, mesh)
  images, labels = make_batch(args)
  batch = parallel.shard_batch({'image': images, 'label': labels}, mesh)

  step = parallel.map_over_devices(
      train_step.make_train_step(
          student, tx, lr_fn=lr_fn, temperature_fn=temperature_fn,
          loss_config=config.loss,
          teachers=teachers.TeacherSet.single(teacher, teacher_dtype)),
      mesh, batch_argnums=(1,), num_args=3, donate_argnums=(0,))
  start = time.perf_counter()
  compiled = step.lower(state, batch, teacher_vars).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  peak_bytes = None
  if memory is not None:
    peak_bytes = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
                  + memory.output_size_in_bytes)

  # Inference: eval mode, logits only (no feature maps to write back).
  x = batch['image']
  student_vars = {'params': state.params, 'batch_stats': state.batch_stats}
  teacher_fwd = compiler.jit(lambda v, x: forward.teacher_apply(
      teacher, v, x, dtype=teacher_dtype)[0]).lower(
          teacher_vars['teacher'], x).compile()
  student_fwd = compiler.jit(
      lambda v, x: student.apply(v, x, train=False)[0]).lower(
          student_vars, x).compile()

  holder = {'state': state}

  def timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start

  def one_step():
    # The state is donated: always feed back the step's own output.
    holder['state'], holder['metrics'] = compiled(holder['state'], batch,
                                                  teacher_vars)
    return holder['state'], holder['metrics']

  def student_call():
    variables = {'params': holder['state'].params,
                 'batch_stats': holder['state'].batch_stats}
    return student_fwd(variables, x)

  return {
      'calls': {'step': lambda: timed(one_step),
                'teacher': lambda: timed(lambda: teacher_fwd(teacher_vars['teacher'], x)),
                'student': lambda: timed(student_call)},
      'compile_s': compile_s, 'peak_bytes': peak_bytes,
      'loss': lambda: float(holder['metrics']['loss'])}


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


def serve_torch(args: argparse.Namespace) -> None:
  """The PyTorch side, in a child process: runs calls on request.

  Builds the textbook distillation step and the inference passes, prints
  one ready line, then answers commands read from stdin, one per line, each
  with one result line on stdout:
    'step' | 'teacher' | 'student'  one synchronised call; its seconds
    'weights'    writes the models' initial state dicts to an .npz (keys
                 'teacher/...' and 'student/...'); its path
    'mem_reset'  resets the peak resident set size, before the timed steps
    'mem_peak'   its growth since then, in bytes (None if unmeasurable)
    'loss'       the last step's loss
  and ends at 'quit' or end of input.
  """
  import contextlib
  import torch
  import torch.nn.functional as F

  device = torch_device(args.torch_device, torch.cuda.is_available())
  cuda = device == 'cuda'

  # All cores, like XLA's CPU thread pool. On a CPU shared with other work,
  # fewer threads can be faster: each parallel op waits for its slowest
  # thread, which may be descheduled (see --torch-threads).
  torch.set_num_threads(args.torch_threads or os.cpu_count())
  torch.manual_seed(0)
  teacher, student, dict_outputs = torch_models_for(args)
  teacher.to(device)
  student.to(device)
  teacher.eval()
  for p in teacher.parameters():
    p.requires_grad_(False)
  optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
  images, labels = make_batch(args)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
  y = torch.from_numpy(labels).long().to(device)
  size = tuple(y.shape[1:])
  temperature = args.temperature
  bf16 = args.teacher_dtype == 'bfloat16'

  def logits_of(model, inputs):
    out = model(inputs)
    return out['out'] if dict_outputs else out

  def teacher_logits(inputs):
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())
    with torch.no_grad(), autocast:
      t = logits_of(teacher, inputs)
    # The softmaxes of the loss run in float32 whatever the teacher dtype.
    return t.float()

  def up(logits):
    return F.interpolate(logits, size=size, mode='bilinear',
                         align_corners=False)

  state = {'loss': float('nan'), 'baseline': None}
  initial = {f'{role}/{k}': v.detach().cpu().numpy()
             for role, model in (('teacher', teacher), ('student', student))
             for k, v in model.state_dict().items()}

  def write_weights():
    fd, path = tempfile.mkstemp(suffix='.npz')
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **initial)
    return path

  def one_step():
    student.train()
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
    state['loss'] = float(loss.detach())

  def student_logits():
    student.eval()
    with torch.no_grad():
      logits_of(student, x)

  def timed(fn):
    start = time.perf_counter()
    fn()
    if cuda:  # CUDA calls return before the GPU has finished.
      torch.cuda.synchronize()
    return time.perf_counter() - start

  def mem_reset():
    if cuda:
      torch.cuda.reset_peak_memory_stats()
    else:
      state['baseline'] = _rss_bytes() if _reset_vm_hwm() else None

  def mem_peak():
    if cuda:
      return torch.cuda.max_memory_allocated()
    if state['baseline'] is None:
      return None
    return _vm_hwm_bytes() - state['baseline']

  commands = {
      'step': lambda: timed(one_step),
      'teacher': lambda: timed(lambda: teacher_logits(x)),
      'student': lambda: timed(student_logits),
      'weights': write_weights, 'mem_reset': mem_reset, 'mem_peak': mem_peak,
      'loss': lambda: state['loss'],
  }
  print(_RESULT_PREFIX + json.dumps({
      'teacher_params': sum(p.numel() for p in teacher.parameters()),
      'student_params': sum(p.numel() for p in student.parameters()),
      'threads': torch.get_num_threads(), 'version': torch.__version__,
      'device': (torch.cuda.get_device_name() if cuda else 'cpu'),
      'memory_kind': ('peak torch.cuda.max_memory_allocated over the timed '
                      'steps' if cuda else
                      'peak RSS increase over the timed steps')}),
        flush=True)
  for line in sys.stdin:
    command = line.strip()
    if command == 'quit':
      break
    print(_RESULT_PREFIX + json.dumps(commands[command]()), flush=True)


def torch_device(choice: str, cuda_available: bool) -> str:
  """'cpu' or 'cuda' for `--torch-device`; a clear error if CUDA is missing."""
  if choice == 'cuda' and not cuda_available:
    raise SystemExit(
        '--torch-device cuda: torch.cuda.is_available() is False (a CPU '
        'build of torch, or no GPU); use --torch-device cpu or auto.')
  if choice == 'auto':
    return 'cuda' if cuda_available else 'cpu'
  return choice


class TorchChild:
  """The parent's handle on `serve_torch` running in a fresh interpreter."""

  def __init__(self, argv: list[str]):
    cmd = [sys.executable, os.path.abspath(__file__), *argv, _WORKER_FLAG]
    self._stderr = tempfile.TemporaryFile(mode='w+')
    self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self._stderr,
                                  text=True)
    self.info = self._read()

  def _read(self):
    for line in self._proc.stdout:
      if line.startswith(_RESULT_PREFIX):
        return json.loads(line[len(_RESULT_PREFIX):])
    self._stderr.seek(0)
    raise RuntimeError(f'PyTorch child failed (exit {self._proc.wait()}):\n'
                       f'{self._stderr.read()[-3000:]}')

  def ask(self, command: str):
    self._proc.stdin.write(command + '\n')
    self._proc.stdin.flush()
    return self._read()

  def close(self) -> None:
    if self._proc.poll() is None:
      self._proc.stdin.write('quit\n')
      self._proc.stdin.close()
      self._proc.wait()
    self._stderr.close()


def interleave(sides: dict[str, Callable[[], float]], warmup: int,
               calls: int) -> tuple[dict[str, float], dict[str, list[float]]]:
  """Runs the sides' calls in turn: `warmup` untimed rounds, then `calls`
  timed ones, rotating who goes first.

  Alternating keeps slow drifts of the machine's speed (other tenants of a
  shared VM) out of the comparison: each round's calls run moments apart.

  Returns (warm-up seconds per side, timed seconds per side and round).
  """
  labels = list(sides)
  warm = {label: 0.0 for label in labels}
  for _ in range(warmup):
    for label in labels:
      warm[label] += sides[label]()
  times = {label: [] for label in labels}
  for i in range(calls):
    for label in labels[i % len(labels):] + labels[:i % len(labels)]:
      times[label].append(sides[label]())
  return warm, times


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
  times = result['step']
  # The range shows how much background load disturbed the timed steps.
  print(f'  train step         {1e3 * statistics.median(times):.1f} ms median '
        f'[{1e3 * min(times):.1f}-{1e3 * max(times):.1f}], '
        f'{_rate(args.batch, times):.1f} images/s '
        f'(last loss {result["loss"]:.4f})')
  print(f'  peak memory        {_fmt_mib(result["peak_bytes"])} '
        f'({memory_kind})')
  for kind in ('teacher', 'student'):
    print(f'  {kind} inference  {_rate(args.batch, result[kind]):.1f} '
          f'images/s')


def print_ratios(label: str, result: dict, reference: dict) -> None:
  """kdseg / PyTorch throughput: of the medians, and the median of the
  per-round ratios (each round's calls ran back to back)."""
  cells = []
  for kind, name in (('step', 'train step'), ('teacher', 'teacher inference'),
                     ('student', 'student inference')):
    ratio = statistics.median(reference[kind]) / statistics.median(
        result[kind])
    paired = statistics.median(
        r / k for r, k in zip(reference[kind], result[kind]))
    cells.append(f'{name} {ratio:.2f}x (paired {paired:.2f}x)')
  print(f'ratio kdseg[{label}]/PyTorch images/s: ' + ', '.join(cells))


def print_losses(label: str, loss: float, reference: float,
                 args: argparse.Namespace) -> None:
  """Both sides' loss after the same steps from the same weights."""
  steps = args.warmup + args.steps
  print(f'loss after {steps} steps from the same weights: kdseg[{label}] '
        f'{loss:.6f}, PyTorch {reference:.6f}, relative difference '
        f'{abs(loss - reference) / abs(reference):.2e}')


def main(argv: list[str]) -> None:
  """Runs both sides (or, with the hidden worker flag, the PyTorch one)."""
  args = parse_args(argv)
  if args.torch_worker:
    serve_torch(args)
    return

  # Before JAX starts: on a GPU it would otherwise take 75% of the memory at
  # once, leaving too little for PyTorch on the same card.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  import jax
  from kdseg import compiler

  pair = PAIRS[args.pair]
  start_all = time.perf_counter()
  print(f'loadavg at start: {os.getloadavg()}  cpus: {os.cpu_count()}')
  print(f'jax {jax.__version__} ({jax.default_backend()}, '
        f'{jax.device_count()} device(s): {jax.devices()[0].device_kind}); '
        f'kdseg compiler options {compiler.options()}')
  print(f'pair {args.pair}: teacher {pair.teacher} {pair.teacher_options}, '
        f'student {pair.student} {pair.student_options}; '
        f'{args.size}x{args.size}, batch {args.batch}, '
        f'{args.num_classes} classes, T={args.temperature}, '
        f'teacher dtype {args.teacher_dtype}; '
        f'{args.warmup} warm-up + {args.steps} timed rounds')
  t_params, s_params = kdseg_param_counts(args)
  print(f'kdseg params:   teacher {t_params:,}  student {s_params:,}')

  # PyTorch first: a parameter-count mismatch should stop the run early.
  child = None
  if args.pair == 'mobile' and importlib.util.find_spec('torchvision') is None:
    print(_TORCHVISION_HINT)
  else:
    child = TorchChild(argv)
    print(f'PyTorch params: teacher {child.info["teacher_params"]:,}  '
          f'student {child.info["student_params"]:,}')
    if args.pair == 'small':
      assert (child.info['teacher_params'], child.info['student_params']
              ) == (t_params, s_params), 'PyTorch twins differ from kdseg.'

  initial = None
  if child is not None and args.pair in CONVERTIBLE:
    path = child.ask('weights')
    try:
      initial = converted_variables(args, path)
    finally:
      os.remove(path)
    print("Both sides start from PyTorch's initialisation, converted "
          '(kdseg.convert.from_torchvision).')
  elif child is not None:
    print('Each side starts from its own random initialisation (no converter '
          'for this pair): the losses are not comparable.')

  # (conv2d implementation, KDSEG_CPU_COMPILER_OPTIONS) per kdseg run.
  variants = [(args.conv_impl, 'auto')]
  if args.also_xla:
    variants.append(('xla', 'auto'))
  if args.also_defaults:
    variants.append((args.conv_impl, 'off'))
  prepared = {}
  for impl, setting in variants:
    # Read when the step is traced and compiled, inside prepare_kdseg.
    os.environ[compiler.ENV_VAR] = setting
    prepared[f'{impl}, options {setting}'] = prepare_kdseg(args, impl,
                                                           initial)
  results = {label: {'compile_s': p['compile_s'],
                     'peak_bytes': p['peak_bytes']}
             for label, p in prepared.items()}
  torch_label = 'PyTorch'
  if child is not None:
    results[torch_label] = {'compile_s': None}
  try:
    for kind in ('step', 'teacher', 'student'):
      sides = {label: p['calls'][kind] for label, p in prepared.items()}
      if child is not None:
        sides[torch_label] = lambda kind=kind: child.ask(kind)
        if kind == 'step':
          child.ask('mem_reset')
      warm, times = interleave(sides, args.warmup, args.steps)
      for label in sides:
        results[label][kind] = times[label]
        if kind == 'step':
          results[label]['warmup_s'] = warm[label]
      if child is not None and kind == 'step':
        results[torch_label]['peak_bytes'] = child.ask('mem_peak')
        results[torch_label]['loss'] = child.ask('loss')
    for label, p in prepared.items():
      results[label]['loss'] = p['loss']()
  finally:
    if child is not None:
      child.close()

  print()
  for label in prepared:
    print_result(f'kdseg (conv impl {label})', results[label], args,
                 'memory_analysis temp+argument+output')
  if child is not None:
    print_result(f'PyTorch {child.info["version"]} on '
                 f'{child.info["device"]} ({child.info["threads"]} threads)',
                 results[torch_label], args, child.info['memory_kind'])
    for label in prepared:
      print_ratios(label, results[label], results[torch_label])
    if initial is not None:
      for label in prepared:
        print_losses(label, results[label]['loss'],
                     results[torch_label]['loss'], args)
  print(f'loadavg at end: {os.getloadavg()}  '
        f'(total {time.perf_counter() - start_all:.0f} s)')


if __name__ == '__main__':
  main(sys.argv[1:])
