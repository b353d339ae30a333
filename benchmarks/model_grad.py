r"""Times one model's training gradient and inference with and without kdseg's
CPU compiler options.

For each setting of `KDSEG_CPU_COMPILER_OPTIONS` ('auto': kdseg's options and
the conv formulation for them; 'off': XLA's defaults and the YNNPACK custom
VJP) it prints the median wall time of

  v&g    jax.value_and_grad of the mean squared logits with respect to the
         parameters, train mode (batch statistics, dropout)
  infer  the eval-mode forward pass

after one warm-up call, with `block_until_ready`, and the largest relative
difference between the two settings' gradients, next to the difference that
scaling the images by (1 + 1e-6) makes under one setting: a deep model in
train mode (batch statistics) at a small batch is that sensitive, so float32
gradients from different kernels differ by about as much.

Usage:
  python benchmarks/model_grad.py [--model deeplabv3_resnet50] [--size 256]
      [--batch 4] [--runs 5]
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from kdseg import compiler
from kdseg import models
from kdseg import train_state

import timing  # benchmarks/timing.py, beside this script


def run(setting: str, args: argparse.Namespace, scale: float = 1.0):
  """(v&g ms, inference ms, gradients) under one setting."""
  os.environ[compiler.ENV_VAR] = setting
  model = models.create(args.model, num_classes=21)
  shape = (args.size, args.size, 3)
  variables = train_state.init_variables(model, jax.random.PRNGKey(0), shape)
  images = jax.random.uniform(jax.random.PRNGKey(1), (args.batch, *shape))
  images = images * scale

  def loss(params):
    (logits, _), _ = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']}, images,
        train=True, mutable=['batch_stats'],
        rngs={'dropout': jax.random.PRNGKey(2)})
    return jnp.mean(logits ** 2)

  # compiler.jit reads the setting now; conv2d reads it when traced (below).
  grad_fn = compiler.jit(jax.value_and_grad(loss))
  infer_fn = compiler.jit(lambda v, x: model.apply(v, x, train=False)[0])
  vg_ms = timing.median_ms(grad_fn, variables['params'], runs=args.runs)
  infer_ms = timing.median_ms(infer_fn, variables, images, runs=args.runs)
  return vg_ms, infer_ms, grad_fn(variables['params'])[1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='deeplabv3_resnet50',
                      choices=models.available())
  parser.add_argument('--size', type=int, default=256)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--runs', type=int, default=5)
  args = parser.parse_args()
  print(f'jax {jax.__version__}, backend {jax.default_backend()}, '
        f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; '
        f'{args.model} {args.size}x{args.size}, batch {args.batch}, '
        f'median of {args.runs}')
  results = {s: run(s, args) for s in ('off', 'auto')}
  perturbed = run('off', args, scale=1.0 + 1e-6)[2]
  for setting, (vg_ms, infer_ms, _) in results.items():
    print(f'  options {setting:4s}  v&g {vg_ms:8.1f} ms   infer '
          f'{infer_ms:8.1f} ms')
  def max_rel_diff(grads_a, grads_b) -> float:
    return max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max()
              / max(np.abs(np.asarray(b)).max(), 1e-12))
        for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)))

  err = max_rel_diff(results['auto'][2], results['off'][2])
  sensitivity = max_rel_diff(perturbed, results['off'][2])
  print(f'  speed-up off/auto: v&g '
        f'{results["off"][0] / results["auto"][0]:.2f}x, infer '
        f'{results["off"][1] / results["auto"][1]:.2f}x; gradients max rel '
        f'diff {err:.1e} (images x (1 + 1e-6), options off: {sensitivity:.1e}); '
        f'load average now {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  main()
