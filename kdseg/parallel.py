"""Mapping per-device steps over all devices, and placing batches on them.

The steps in `kdseg.train_step` are written for one device with collectives
over the 'data' axis. `map_over_devices` maps such a function with
`jax.shard_map` on a one-axis mesh inside `jax.jit` (the state replicated,
the batch split along its first axis). `pmap_over_devices` does the same with
`jax.pmap`, which is in maintenance mode since JAX 0.8 and is kept for
comparison and older code.
"""

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from kdseg import compiler

AXIS = 'data'


def make_mesh(devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
  """A one-axis ('data') mesh over all (or the given) devices."""
  devices = list(devices) if devices is not None else jax.devices()
  return jax.make_mesh((len(devices),), (AXIS,), devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def map_over_devices(fn: Callable, mesh, *, batch_argnums: Sequence[int],
                     num_args: int, out_batched: bool = False,
                     donate_argnums: Sequence[int] = ()) -> Callable:
  """jit(shard_map(fn)): the args in `batch_argnums` split, the rest replicated.

  Args:
    fn: a per-device function of `num_args` positional arguments.
    mesh: from `make_mesh`.
    batch_argnums: positions of batch-like arguments (split on axis 0).
    num_args: how many positional arguments `fn` takes.
    out_batched: whether outputs are per-example (split) or replicated.
    donate_argnums: arguments whose buffers may be reused (the state).
  """
  in_specs = tuple(P(AXIS) if i in batch_argnums else P()
                   for i in range(num_args))
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=in_specs,
                         out_specs=P(AXIS) if out_batched else P(),
                         check_vma=False)
  return compiler.jit(mapped, donate_argnums=tuple(donate_argnums))


def pmap_over_devices(fn: Callable, *, batch_argnums: Sequence[int],
                      num_args: int, donate_argnums: Sequence[int] = ()
                      ) -> Callable:
  """The same mapping with `jax.pmap`.

  `jax.pmap` takes no compiler options: on the CPU this compiles with XLA's
  defaults (YNNPACK convolutions), the same numbers as `map_over_devices`
  but slower (see `kdseg.compiler`).

  Takes and returns the same global values as `map_over_devices`: replicated
  arguments are broadcast to every device, batch arguments reshaped to
  [devices, per_device, ...], and the (replicated) outputs of device 0 are
  returned.
  """
  n = jax.local_device_count()
  pmapped = jax.pmap(fn, axis_name=AXIS, donate_argnums=tuple(donate_argnums))

  def split(x):
    x = np.asarray(x)
    if x.shape[0] % n:
      raise ValueError(f'batch of {x.shape[0]} is not divisible by {n} devices.')
    return x.reshape(n, x.shape[0] // n, *x.shape[1:])

  def stack(x):
    x = np.asarray(x)
    return np.broadcast_to(x, (n, *x.shape))

  def call(*args):
    args = [jax.tree.map(split if i in batch_argnums else stack, a)
            for i, a in enumerate(args)]
    out = pmapped(*args)
    return jax.tree.map(lambda x: x[0], out)

  return call


def shard_batch(batch: Any, mesh) -> Any:
  """Assembles a global batch from this process's slice.

  Each process passes its own examples ([per_process_batch, ...] NumPy); the
  result is a global array split over the mesh's 'data' axis. On one process
  this is a plain device_put with the batch sharding.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)


def replicate(tree: Any, mesh) -> Any:
  """Places a pytree on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def initialize_distributed(enabled: bool, *, coordinator_address: str = '',
                           num_processes: int = 0, process_id: int = -1,
                           heartbeat_timeout_s: int = 100) -> None:
  """Calls jax.distributed.initialize() for multi-process runs.

  On TPU pods and managed clusters JAX finds the coordinator itself; else
  give `coordinator_address` ('host:port' of process 0), `num_processes`
  and `process_id`, and run the same command on every host. CPU processes
  exchange collectives over gloo. Idempotent.
  """
  if not enabled or jax.distributed.is_initialized():
    return
  # Only the CPU client reads it; it must be set before any backend starts.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=coordinator_address or None,
      num_processes=num_processes or None,
      process_id=None if process_id < 0 else process_id,
      heartbeat_timeout_seconds=int(heartbeat_timeout_s))


def initialize_from_config(config) -> None:
  """`initialize_distributed` with `config.parallel`'s settings."""
  p = config.parallel
  initialize_distributed(
      bool(p.distributed), coordinator_address=p.coordinator_address,
      num_processes=int(p.num_processes), process_id=int(p.process_id),
      heartbeat_timeout_s=int(p.heartbeat_timeout_s))
