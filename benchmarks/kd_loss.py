"""Time and peak memory of pixel KD forward+backward, kdseg vs. plain PyTorch.

  python benchmarks/kd_loss.py                      # [8, 512, 1024, 19]
  python benchmarks/kd_loss.py --shape 2,128,256,19 # a quick run

kdseg's figures: XLA's own buffer assignment for the compiled
value-and-gradient (arguments, outputs and temporaries, in units of one
logit-sized float32 array), and wall time (median of --repeats after a
warm-up). The autodiff formulation of the same loss (no custom VJP) is shown
for comparison. PyTorch's figures (when torch is installed): the peak
resident-memory increase of a fresh process running the textbook formulation
(`F.kl_div(log_softmax(s/T), softmax(t/T))` summed over classes, masked
mean, times T^2, then backward), in the same units, and its wall time.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np

from kdseg import losses


def _naive_kd(s, t, temperature, mask):
  log_q = jax.nn.log_softmax(s / temperature, -1)
  log_p = jax.nn.log_softmax(t / temperature, -1)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), -1)
  return temperature**2 * jnp.sum(kl * mask) / jnp.sum(mask)


def _kdseg_kd(s, t, temperature, mask):
  return losses.pixel_kd(s, t, temperature=temperature, mask=mask)


def measure_jax(fn, shape, repeats):
  s = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float32)
  t = jax.random.normal(jax.random.PRNGKey(1), shape, jnp.float32)
  mask = (jax.random.uniform(jax.random.PRNGKey(2), shape[:3]) > 0.1).astype(
      jnp.float32)
  step = jax.jit(jax.value_and_grad(fn))
  t0 = time.perf_counter()
  compiled = step.lower(s, t, 4.0, mask).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  jax.block_until_ready(compiled(s, t, 4.0, mask))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(s, t, 4.0, mask))
    times.append(time.perf_counter() - t0)
  logit_bytes = np.prod(shape) * 4
  return {
      'compile_s': compile_s, 'median_s': statistics.median(times),
      'temp_logits': mem.temp_size_in_bytes / logit_bytes,
      'total_logits': (mem.temp_size_in_bytes + mem.argument_size_in_bytes +
                       mem.output_size_in_bytes) / logit_bytes,
  }


_TORCH_SCRIPT = textwrap.dedent('''
    import json, resource, statistics, sys, time
    import torch
    import torch.nn.functional as F
    torch.set_num_threads({threads})
    shape = {shape}
    def current_rss():
      with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize()
    def peak_rss():
      with open('/proc/self/status') as f:
        for line in f:
          if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024
    def reset_peak():
      # Linux: writing 5 resets the peak resident set size (VmHWM).
      with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    g = torch.Generator().manual_seed(0)
    # NCHW, PyTorch's layout.
    s = torch.randn(shape[0], shape[3], shape[1], shape[2], generator=g)
    t = torch.randn(shape[0], shape[3], shape[1], shape[2], generator=g)
    mask = (torch.rand(shape[0], shape[1], shape[2], generator=g) > 0.1).float()
    T = 4.0
    def step():
      x = s.detach().requires_grad_(True)
      with torch.no_grad():
        p = F.softmax(t / T, dim=1)
      kl = F.kl_div(F.log_softmax(x / T, dim=1), p, reduction='none').sum(1)
      loss = T * T * (kl * mask).sum() / mask.sum()
      loss.backward()
      return loss.item(), x.grad
    step()  # Warm-up: allocator pools and lazy initialisation.
    base = current_rss()
    reset_peak()
    step()
    peak = peak_rss() - base
    times = []
    for _ in range({repeats}):
      t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    print(json.dumps({{'median_s': statistics.median(times),
                       'peak_increase_logits': peak / (4 * shape[0] * shape[1] * shape[2] * shape[3])}}))
''')


def measure_torch(shape, repeats):
  # Checked without importing: torch runs in its own process.
  if importlib.util.find_spec('torch') is None:
    return None
  script = _TORCH_SCRIPT.format(shape=list(shape), repeats=repeats,
                                threads=os.cpu_count())
  out = subprocess.run([sys.executable, '-c', script], capture_output=True,
                       text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--shape', default='8,512,1024,19')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  shape = tuple(int(x) for x in args.shape.split(','))
  print(f'pixel KD forward+backward on logits {list(shape)} '
        f'({np.prod(shape) * 4 / 2**20:.0f} MiB each), {jax.devices()[0]}')
  rows = {'kdseg pixel_kd': measure_jax(_kdseg_kd, shape, args.repeats),
          'jax autodiff (reference)': measure_jax(_naive_kd, shape,
                                                  args.repeats)}
  for name, r in rows.items():
    print(f'{name:<26} time {r["median_s"] * 1e3:8.1f} ms   XLA temporaries '
          f'{r["temp_logits"]:.2f} x logits   with inputs/outputs '
          f'{r["total_logits"]:.2f} x logits   (compile {r["compile_s"]:.1f} s)')
  torch_row = measure_torch(shape, args.repeats)
  if torch_row is None:
    print('pytorch: not installed (pip install torch==2.13.0 for the '
          'comparison)')
  else:
    print(f'{"pytorch (textbook)":<26} time {torch_row["median_s"] * 1e3:8.1f} '
          f'ms   peak RSS increase {torch_row["peak_increase_logits"]:.2f} x '
          'logits (inputs excluded)')
    print(f'time ratio kdseg / pytorch: '
          f'{rows["kdseg pixel_kd"]["median_s"] / torch_row["median_s"]:.2f}')


if __name__ == '__main__':
  main()
