"""Progress bars that can be switched off (tests, non-interactive logs)."""

import sys

import jax
import tqdm.auto


class _NoBar:

  def update(self, n: int = 1) -> None:
    del n

  def set_postfix(self, **kwargs) -> None:
    del kwargs

  def close(self) -> None:
    pass


def bar(*, total: int, desc: str, initial: int = 0, enabled: bool = True):
  """A tqdm bar on process 0 when enabled, otherwise a silent stand-in.

  `tqdm.auto`: a widget in a notebook (Colab, Jupyter), text elsewhere.
  """
  if not enabled or jax.process_index() != 0:
    return _NoBar()
  return tqdm.auto.tqdm(total=total, initial=initial, desc=desc,
                        file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def write(message: str) -> None:
  """Prints a log line on process 0 without breaking an active progress bar."""
  if jax.process_index() == 0:
    tqdm.auto.tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()
