"""Library logs in a file, the terminal for kdseg's own lines.

Orbax, absl and JAX log a few hundred INFO and WARNING lines per run
(checkpoint manager options, save timings, async thread names). They help
when a save misbehaves and drown the progress bar otherwise: `to_file`
sends them to `WORKDIR/logs/kdseg.log` (appended, one file per run folder).
kdseg's own messages (progress, evaluations, errors) are printed, not
logged, so they stay on the terminal. `--alsologtostderr` keeps the library
lines on the terminal too.
"""

import logging
import os
from typing import Optional

from absl import flags
from absl import logging as absl_logging

LOG_DIR = 'logs'
LOG_FILE = 'kdseg.log'


def to_file(workdir: str) -> Optional[str]:
  """Routes absl/Python logging to WORKDIR/logs/kdseg.log; returns its path
  (None when the command line asked for logs on the terminal)."""
  if flags.FLAGS.is_parsed() and (flags.FLAGS['alsologtostderr'].value or
                                  flags.FLAGS['logtostderr'].value):
    return None
  folder = os.path.join(workdir, LOG_DIR)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, LOG_FILE)
  stream = open(path, 'a', buffering=1)  # pylint: disable=consider-using-with
  handler = absl_logging.get_absl_handler()
  handler.python_handler.stream = stream
  # The absl handler decides per record between file and stderr; with
  # `use_absl_log_file` unset it writes to its python_handler's stream.
  absl_logging.set_verbosity(absl_logging.INFO)
  absl_logging.set_stderrthreshold(absl_logging.FATAL)
  root = logging.getLogger()
  if handler not in root.handlers:
    root.addHandler(handler)
  logging.captureWarnings(True)
  return path
