"""One live run per workdir.

Two runs writing one workdir would interleave checkpoints of different
trainings. `hold(workdir)` takes an exclusive `flock` on `WORKDIR/.lock` for
the life of the run and writes the holder (host, PID, command) into it. The
kernel drops the lock when its process dies, however it dies, so a stale
lock (a killed run) is taken over without asking; a live holder makes the
second run stop with a message naming it.
"""

import contextlib
import fcntl
import json
import os
import socket
import sys
import time

LOCK_FILE = '.lock'


class WorkdirBusyError(RuntimeError):
  """Another live process holds the workdir."""


def _holder() -> dict:
  return {'host': socket.gethostname(), 'pid': os.getpid(),
          'command': ' '.join(sys.argv), 'since': time.strftime('%F %T')}


@contextlib.contextmanager
def hold(workdir: str):
  """Holds `workdir` for the duration of the block."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      with open(path) as f:
        text = f.read().strip()
      try:
        other = json.loads(text)
        who = (f"process {other['pid']} on {other['host']} (since "
               f"{other['since']}: {other['command']})")
      except (ValueError, KeyError):
        who = 'another process'
      raise WorkdirBusyError(
          f'{workdir} is in use by {who}. Wait for it to finish, stop it, '
          'or give another --workdir.') from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(_holder()).encode())
    os.fsync(fd)
    yield
  finally:
    os.close(fd)  # Releases the lock.
