r"""Times the distillation loss path at label resolution, value and gradient.

Student and teacher logits [B, h, w, C] are bilinearly up-sampled to the
labels [B, H, W] (an integer factor), then cross-entropy and pixel KD are
taken, as in `kdseg.losses.distillation_loss`. Prints the median wall time
(ms) of jitted value-and-gradient with respect to the student logits of

  resize        sum(resize_bilinear(s) * t)
  ce            cross-entropy at label resolution
  loss          the whole `distillation_loss` from the low-resolution logits

for kdseg's formulations and for the gather-based ones they replace
(`jnp.take` for the resize, whose gradient is a scatter-add, and
`take_along_axis` for the label's log-probability), with the largest
difference between the two.

Usage:
  python benchmarks/loss_path.py [--batch 4] [--size 256] [--stride 8]
      [--classes 21] [--runs 7]
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from kdseg import compiler
from kdseg import losses
from kdseg.models import layers

import timing  # benchmarks/timing.py, beside this script


def gather_resize(x, size):
  """The bilinear resize as gathers (kdseg's fallback for other sizes)."""
  return layers.gather_resize_axis(
      layers.gather_resize_axis(x, size[0], 1), size[1], 2)


def gather_ce(logits, labels):
  log_p = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
  return jnp.mean(nll)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--size', type=int, default=256)
  parser.add_argument('--stride', type=int, default=8)
  parser.add_argument('--classes', type=int, default=21)
  parser.add_argument('--runs', type=int, default=7)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  low = args.size // args.stride
  size = (args.size, args.size)
  s_low = jnp.asarray(rng.standard_normal(
      (args.batch, low, low, args.classes), np.float32))
  t_low = jnp.asarray(rng.standard_normal(s_low.shape, np.float32))
  t_full = jnp.asarray(rng.standard_normal(
      (args.batch, *size, args.classes), np.float32))
  labels = jnp.asarray(rng.integers(0, args.classes, (args.batch, *size)),
                       jnp.int32)
  s_full = layers.resize_bilinear(s_low, size)

  def kdseg_loss(s, t, y):
    return losses.distillation_loss(s, y, t, temperature=4.0)[0]

  def gather_loss(s, t, y):
    s, t = gather_resize(s, size), gather_resize(t, size)
    kd = losses.pixel_kd(s, t, temperature=4.0)
    return gather_ce(s, y) + kd

  cases = {
      'resize': ((lambda s, t: jnp.sum(layers.resize_bilinear(s, size) * t)),
                 (lambda s, t: jnp.sum(gather_resize(s, size) * t)),
                 (s_low, t_full)),
      'ce': ((lambda s, y: losses.cross_entropy(s, y)), gather_ce,
             (s_full, labels)),
      'loss': (kdseg_loss, gather_loss, (s_low, t_low, labels)),
  }
  print(f'jax {jax.__version__}, {os.cpu_count()} CPUs, load average '
        f'{os.getloadavg()[0]:.2f}; logits {list(s_low.shape)} -> {list(size)}'
        f', median of {args.runs}, ms (value and gradient)')
  for name, (ours, theirs, inputs) in cases.items():
    results = {}
    for label, fn in (('kdseg', ours), ('gather', theirs)):
      vg = compiler.jit(jax.value_and_grad(fn))
      results[label] = (timing.median_ms(vg, *inputs, runs=args.runs),
                        vg(*inputs))
    (a_val, a_grad), (b_val, b_grad) = results['kdseg'][1], results['gather'][1]
    diff = max(float(jnp.abs(a_val - b_val) / jnp.abs(b_val)),
               float(jnp.abs(a_grad - b_grad).max() / jnp.abs(b_grad).max()))
    print(f'  {name:7s} kdseg {results["kdseg"][0]:8.1f}   gather '
          f'{results["gather"][0]:8.1f}   max rel diff {diff:.1e}')


if __name__ == '__main__':
  main()
