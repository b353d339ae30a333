"""Checksums of finished checkpoints, and what to do with damaged ones.

Orbax writes a step to a temporary folder and renames it when complete, so
a crash never leaves a half-written step under its final name. It does not
notice a step damaged afterwards (a truncated copy, a missing file, flipped
bytes on a failing disk): such a step restores without complaint, or with a
raw traceback. kdseg therefore seals every step it saved, once complete,
with a manifest of its files' sizes and SHA-256 digests
(`<step>/kdseg_checksums.json`), and checks the manifest before restoring.

A damaged step is never deleted: a resuming run moves it to
`WORKDIR/damaged_checkpoints/<step>` (so that the run can write that step
again) and falls back to the newest good step; read-only restores skip it.
"""

import json
import os
import shutil
from typing import Optional

from kdseg import files as files_lib

MANIFEST = 'kdseg_checksums.json'
DAMAGED_DIR = 'damaged_checkpoints'



def _files(step_dir: str) -> list[str]:
  out = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel != MANIFEST:
        out.append(rel)
  return sorted(out)


def seal(step_dir: str) -> None:
  """Writes the manifest of the complete step in `step_dir` (atomically)."""
  files = {rel: {'bytes': os.path.getsize(os.path.join(step_dir, rel)),
                 'sha256': files_lib.sha256(os.path.join(step_dir, rel))}
           for rel in _files(step_dir)}
  tmp = os.path.join(step_dir, MANIFEST + '.tmp')
  with open(tmp, 'w') as f:
    json.dump({'files': files}, f, indent=0)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(step_dir, MANIFEST))


def is_sealed(step_dir: str) -> bool:
  return os.path.exists(os.path.join(step_dir, MANIFEST))


def problem(step_dir: str) -> Optional[str]:
  """What is wrong with the sealed step in `step_dir`, or None.

  An unsealed step (saved by an older kdseg, or a run killed between the
  save and its seal) has nothing to check against and gives None: the
  restore itself is then the check.
  """
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.isdir(step_dir):
    return 'the folder is missing'
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      expected = json.load(f)['files']
  except (OSError, ValueError, KeyError) as e:
    return f'its checksum manifest is unreadable ({e})'
  present = set(_files(step_dir))
  missing = sorted(set(expected) - present)
  if missing:
    return f'{len(missing)} file(s) missing, e.g. {missing[0]!r}'
  extra = sorted(present - set(expected))
  if extra:
    return f'{len(extra)} unexpected file(s), e.g. {extra[0]!r}'
  for rel, want in expected.items():
    full = os.path.join(step_dir, rel)
    size = os.path.getsize(full)
    if size != want['bytes']:
      return f'{rel!r} has {size} bytes, {want["bytes"]} were written'
    if files_lib.sha256(full) != want['sha256']:
      return f'{rel!r} does not match its checksum (changed on disk)'
  return None


def quarantine(step_dir: str, workdir_checkpoints: str) -> str:
  """Moves a damaged step out of the checkpoint folder; returns where."""
  target_root = os.path.join(os.path.dirname(workdir_checkpoints),
                             DAMAGED_DIR)
  os.makedirs(target_root, exist_ok=True)
  name = os.path.basename(step_dir.rstrip(os.sep))
  target = os.path.join(target_root, name)
  suffix = 1
  while os.path.exists(target):
    target = os.path.join(target_root, f'{name}.{suffix}')
    suffix += 1
  shutil.move(step_dir, target)
  return target


def size_bytes(step_dir: str) -> int:
  return sum(os.path.getsize(os.path.join(step_dir, rel))
             for rel in _files(step_dir))
