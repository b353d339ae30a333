"""One process of a multi-process (or the single-process reference) run.

Used by tests/test_multiprocess.py: XLA_FLAGS and the distributed runtime
must be set before JAX starts, so every process is its own interpreter.

  python tests/multiprocess_run.py WORKDIR STEPS DEVICES [PROCESS_ID
      NUM_PROCESSES PORT]

Trains tiny_lraspp (no dropout, whose masks depend on the device layout) on
synthetic data with a global batch of 4, checkpoints every 2 steps, and
writes the final parameters of process 0 to WORKDIR/params.npz.
"""

import os
import sys

_DEVICES = int(sys.argv[3])
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           f' --xla_force_host_platform_device_count={_DEVICES}')

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from kdseg import checkpoint
from kdseg import modes
from kdseg import train

sys.path.insert(0, os.path.dirname(__file__))
from conftest import make_tiny_config  # pylint: disable=g-import-not-at-top


def main():
  workdir, steps = sys.argv[1], int(sys.argv[2])
  overrides = {'model.name': 'tiny_lraspp', 'train.steps': steps,
               'train.log_every': 1, 'train.eval_every': 2}
  if len(sys.argv) > 4:
    process_id, count, port = map(int, sys.argv[4:7])
    overrides.update({
        'parallel.distributed': True,
        'parallel.coordinator_address': f'127.0.0.1:{port}',
        'parallel.num_processes': count, 'parallel.process_id': process_id,
        'parallel.heartbeat_timeout_s': 10})
  config = make_tiny_config(**overrides)
  modes.run(config, workdir)
  assert jax.device_count() == 4, jax.devices()
  # Every process takes part in Orbax's restore (it synchronises them).
  variables, _ = checkpoint.restore_model_variables(workdir, which='latest')
  if jax.process_index() == 0:
    flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
            jax.tree_util.tree_flatten_with_path(variables)[0]}
    np.savez(os.path.join(workdir, 'params.npz'), **flat)


if __name__ == '__main__':
  main()
