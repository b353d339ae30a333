"""Wall-clock timing shared by the benchmark scripts (not by tests)."""

import statistics
import time

import jax


def median_ms(fn, *args, runs: int) -> float:
  """Median wall time of `fn(*args)` in ms, after one warm-up call.

  Each call is synchronised with `jax.block_until_ready`.
  """
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)
