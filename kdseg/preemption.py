"""Stopping a run cleanly when it is told to (SIGTERM, SIGINT).

A preempted Colab or Cloud TPU VM, or a cluster scheduler, sends SIGTERM
and kills the process some seconds later; Ctrl-C sends SIGINT. While a
`StopSignals` is active, either signal only sets a flag: the training loop
finishes its current step, saves a checkpoint, waits for it and raises
`Preempted`, and the command line says how to resume. A second signal of the
same kind stops the process at once (the default action).

With several processes, each process may receive the signal at a different
step (or only one process receives it): `requested` agrees across processes
with a tiny all-gather, so that every process stops after the same step.
"""

import signal
import threading
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """The run stopped on a signal after saving a checkpoint at `step`."""

  def __init__(self, signum: int, step: int, directory: str):
    self.signum, self.step, self.directory = signum, step, directory
    name = signal.Signals(signum).name
    super().__init__(
        f'Stopped by {name} after step {step}; its checkpoint is saved in '
        f'{directory}. Run the same command again to resume from step '
        f'{step}.')

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


class StopSignals:
  """Context manager that turns SIGTERM/SIGINT into a stop request."""

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous = {}

  def __enter__(self) -> 'StopSignals':
    # Handlers can only be installed from the main thread (a notebook cell
    # or a test runner thread elsewhere runs without them).
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signum == signum:
      # Asked twice: give up on the clean stop.
      signal.signal(signum, signal.SIG_DFL)
      signal.raise_signal(signum)
    self.signum = signum

  def requested(self) -> Optional[int]:
    """The signal to stop on, agreed by every process, or None."""
    local = self.signum or 0
    if jax.process_count() > 1:
      agreed = multihost_utils.process_allgather(np.int32(local))
      local = int(np.max(agreed))
    return local or None
