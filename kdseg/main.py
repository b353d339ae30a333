"""Command line: `python -m kdseg.main --config configs/<name>.py --workdir DIR`.

Config fields can be overridden from the command line, e.g.
`--config.train.steps=200 --config.mode=distill`.
"""

import os

# TensorFlow serves only the input pipeline: keep its logging quiet.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import sys  # pylint: disable=g-import-not-at-top

from absl import app
from absl import flags
from ml_collections import config_flags

from kdseg import checkpoint
from kdseg import configs
from kdseg import logs
from kdseg import modes
from kdseg import preemption
from kdseg import train
from kdseg import workdir_lock

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, '
                               'TensorBoard summaries and results.')
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py).', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])

# The functional entry point (notebooks call `kdseg.main.run` too).
run = modes.run


# Failures that a message explains fully: printed without a traceback.
_EXPLAINED = (checkpoint.CheckpointSaveError, checkpoint.DamagedCheckpointError,
              workdir_lock.WorkdirBusyError, train.NonFiniteLossError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Progress and results are printed; library logs go to WORKDIR/logs
  # (`--alsologtostderr` shows them too).
  log_path = logs.to_file(_WORKDIR.value)
  try:
    run(_CONFIG.value, _WORKDIR.value)
  except preemption.Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
  except _EXPLAINED as e:
    where = f' (library logs: {log_path})' if log_path else ''
    print(f'kdseg: {e}{where}', file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == '__main__':
  # Without a checkout here, `configs/<name>.py` is kdseg's bundled copy.
  sys.argv = configs.resolve_argv(sys.argv)
  app.run(main)
