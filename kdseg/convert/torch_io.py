"""Reads a saved state dict (.pth through PyTorch, or .npz) as NumPy arrays.

PyTorch is needed only for .pth files, and it runs in a child process:
importing torch into a process that already holds XLA (or TensorFlow) can
crash with some builds, and kdseg never imports torch itself. The child
`torch.load`s the file with `weights_only=True` (tensors only, no pickled
code) onto the CPU and hands the tensors over as an .npz.
"""

import importlib.util
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np

INSTALL_HINT = ('reading .pth files needs PyTorch: pip install kdseg[convert] '
                '(or save the state dict as .npz with NumPy)')

_LOAD_SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    import torch
    state = torch.load(sys.argv[1], weights_only=True, map_location='cpu')
    if not isinstance(state, dict):
      sys.exit(f'{sys.argv[1]} holds a {type(state).__name__}, not a state '
               'dict: save model.state_dict().')
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
      sys.exit(f'{sys.argv[1]}: not a state dict of tensors; entries {bad[:5]} '
               'are not tensors (a training checkpoint? save '
               'model.state_dict()).')
    np.savez(sys.argv[2], **{
        k: (v.float() if v.is_floating_point() else v).numpy()
        for k, v in state.items()})
''')


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """{key: array} of the state dict saved at `path` (.pth/.pt or .npz).

  Raises:
    FileNotFoundError: no such file.
    ImportError: a .pth file and PyTorch is not installed.
    ValueError: the file holds something else than a state dict of tensors.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No weights file at {path!r}.')
  if path.endswith('.npz'):
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  if importlib.util.find_spec('torch') is None:
    raise ImportError(f'{path}: {INSTALL_HINT}.')
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'state_dict.npz')
    result = subprocess.run(
        [sys.executable, '-c', _LOAD_SCRIPT, os.path.abspath(path), out],
        capture_output=True, text=True)
    if result.returncode != 0:
      raise ValueError(f'Could not read {path} with torch.load: '
                       f'{result.stderr.strip()[-2000:]}')
    with np.load(out) as data:
      return {k: data[k] for k in data.files}
