"""Two processes for real: JAX's distributed runtime on 127.0.0.1 (gloo
collectives), two simulated CPU devices per process, against one process
with four devices. Each process is its own interpreter
(tests/multiprocess_run.py)."""

import os
import socket
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.join(HERE, 'multiprocess_run.py')
ENV = {**os.environ, 'PYTHONUNBUFFERED': '1'}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _single(workdir: str, steps: int) -> str:
  done = subprocess.run([sys.executable, SCRIPT, workdir, str(steps), '4'],
                        cwd=ROOT, capture_output=True, text=True, env=ENV,
                        timeout=600)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  return done.stdout


def _two_processes(workdir: str, steps: int) -> str:
  port = str(_free_port())
  procs = [subprocess.Popen(
      [sys.executable, SCRIPT, workdir, str(steps), '2', str(i), '2', port],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=ENV) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, out[-2000:] + err[-3000:]
  return outputs[0][0]


def _losses(stdout: str) -> dict[int, str]:
  out = {}
  for line in stdout.splitlines():
    if line.startswith('tiny_lraspp step ') and ': ce ' in line:
      step = int(line.split()[2].rstrip(':'))
      out[step] = line
  return out


def test_two_processes_with_save_and_resume_equal_one(tmp_path):
  single = _single(str(tmp_path / 'single'), 6)
  multi_dir = str(tmp_path / 'multi')
  first = _two_processes(multi_dir, 4)  # Saves at steps 2 and 4.
  second = _two_processes(multi_dir, 6)  # Resumes from step 4.
  assert 'Resumed from' in second and 'at step 4.' in second
  # The logged loss terms of every step agree (as printed, 4 digits).
  expected = _losses(single)
  got = {**_losses(first), **_losses(second)}
  assert sorted(got) == sorted(expected) == list(range(1, 7))
  assert got == expected
  a = np.load(os.path.join(tmp_path, 'single', 'params.npz'))
  b = np.load(os.path.join(multi_dir, 'params.npz'))
  assert sorted(a.files) == sorted(b.files)
  for key in a.files:
    if key.startswith("['params']"):
      np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-6,
                                 err_msg=key)
    else:  # Batch-norm variances reach ~7: compared relatively.
      np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6,
                                 err_msg=key)


def test_a_killed_process_stops_the_other(tmp_path):
  port = str(_free_port())
  workdir = str(tmp_path)
  command = lambda i: [sys.executable, SCRIPT, workdir, '100000', '2', str(i),
                       '2', port]
  survivor = subprocess.Popen(command(0), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=ENV)
  victim = subprocess.Popen(command(1), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV)
  try:
    # Both processes have joined the runtime once the survivor reads its
    # data; killing the other then (mid-compilation, or later mid-step)
    # must end the survivor too.
    for line in survivor.stdout:
      if 'decoded once' in line:
        break
    victim.kill()
    killed = time.monotonic()
    out, _ = survivor.communicate(timeout=120)
    waited = time.monotonic() - killed
  finally:
    for p in (survivor, victim):
      if p.poll() is None:
        p.kill()
  # The heartbeat timeout is 10 s (multiprocess_run.py): it neither hangs
  # nor exits cleanly.
  assert survivor.returncode != 0
  assert waited < 60, waited
  assert 'heartbeat' in out, out[-3000:]  # The runtime names the cause.
