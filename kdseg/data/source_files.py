"""What a prepared data set was prepared from, to notice later edits.

Preparing a manually downloaded folder (CamVid, a folder of images and
masks) copies every image and mask into TFDS records once; later runs read
the records. A mask fixed or an image replaced after that would silently be
ignored. `stamp` records the size, modification time and SHA-256 of every
source file next to the records (`source_files.json` in the prepared
folder); `check` compares them on every later use and fails with the files
that changed and how to prepare again.

Only sizes and times are read on every use (cheap). A file whose time
changed but not its size is hashed: a copy, a restore from a backup or a
re-mounted folder changes times only, and must not make a user prepare
again. Files are keyed by their path relative to the source folder, so that
a moved folder is still the same data.
"""

import json
import os
from typing import Iterable

from kdseg import files as files_lib

STAMP_FILE = 'source_files.json'



def _root(paths: list[str]) -> str:
  absolute = [os.path.abspath(p) for p in paths]
  return os.path.commonpath(absolute) if len(absolute) > 1 else (
      os.path.dirname(absolute[0]) if absolute else '')


def _state(paths: list[str], *, digests: bool
           ) -> dict[str, list]:
  """relative path -> [size, mtime_ns, sha256 or None]."""
  root = _root(paths)
  out = {}
  for path in paths:
    info = os.stat(path)
    out[os.path.relpath(os.path.abspath(path), root)] = [
        info.st_size, info.st_mtime_ns,
        files_lib.sha256(path) if digests else None]
  return out


def _write(prepared_dir: str, state: dict[str, list]) -> None:
  path = os.path.join(prepared_dir, STAMP_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump({'version': 2, 'files': state}, f)
  os.replace(path + '.tmp', path)


def stamp(prepared_dir: str, paths: Iterable[str]) -> None:
  """Records `paths` (the source files) in `prepared_dir`."""
  _write(prepared_dir, _state(list(paths), digests=True))


def check(prepared_dir: str, paths: Iterable[str], source: str) -> None:
  """Raises ValueError naming the source files changed since `stamp`.

  A prepared folder without a stamp (prepared by an older kdseg) is
  stamped now and trusted.
  """
  path = os.path.join(prepared_dir, STAMP_FILE)
  paths = list(paths)
  then = {}
  if os.path.exists(path):
    with open(path) as f:
      then = json.load(f)
  now = _state(paths, digests=False)
  root = _root(paths)
  if then.get('version') != 2:
    # No stamp (trusted), or an older kdseg's stamp of absolute paths, sizes
    # and times, without hashes: sizes and the file list are checked, and
    # the folder is stamped anew with hashes.
    then = {os.path.relpath(name, root): [size, mtime, None]
            for name, (size, mtime) in then.items()} if then else {
                name: value for name, value in now.items()}
    _raise_if_changed(now, then, [n for n in now if n in then and now[n][0]
                                  != then[n][0]], prepared_dir, source)
    stamp(prepared_dir, paths)
    return
  then = then['files']
  changed, touched = [], []
  for name, (size, mtime, _) in now.items():
    if name not in then or [size, mtime] == then[name][:2]:
      continue
    if size != then[name][0] or files_lib.sha256(
        os.path.join(root, name)) != then[name][2]:
      changed.append(name)
    else:
      touched.append(name)
  _raise_if_changed(now, then, changed, prepared_dir, source)
  if touched:
    # Same content, new times: remember the times, so the next use is cheap.
    for name in touched:
      then[name] = [now[name][0], now[name][1], then[name][2]]
    _write(prepared_dir, then)


def _raise_if_changed(now, then, changed, prepared_dir, source) -> None:
  changed = sorted(changed)
  added = sorted(set(now) - set(then))
  removed = sorted(set(then) - set(now))
  if changed or added or removed:
    parts = [f'{len(items)} {what} (e.g. {items[0]})'
             for what, items in (('changed', changed), ('new', added),
                                 ('gone', removed)) if items]
    raise ValueError(
        f'{source} has changed since it was prepared into {prepared_dir}: '
        f'{"; ".join(parts)} files. The prepared records would be stale. '
        f'Fix: delete {prepared_dir} to prepare it again from {source}.')
