"""What a prepared data set was prepared from, to notice later edits.

Preparing a manually downloaded folder (CamVid, a folder of images and
masks) copies every image and mask into TFDS records once; later runs read
the records. A mask fixed or an image replaced after that would silently be
ignored. `stamp` records the size and modification time of every source
file next to the records (`source_files.json` in the prepared folder);
`check` compares them on every later use and fails with the files that
changed and how to prepare again.
"""

import json
import os
from typing import Iterable

STAMP_FILE = 'source_files.json'


def _state(paths: Iterable[str]) -> dict[str, list[int]]:
  out = {}
  for path in paths:
    info = os.stat(path)
    out[os.path.abspath(path)] = [info.st_size, info.st_mtime_ns]
  return out


def stamp(prepared_dir: str, paths: Iterable[str]) -> None:
  """Records `paths` (the source files) in `prepared_dir`."""
  with open(os.path.join(prepared_dir, STAMP_FILE), 'w') as f:
    json.dump(_state(paths), f)


def check(prepared_dir: str, paths: Iterable[str], source: str) -> None:
  """Raises ValueError naming the source files changed since `stamp`.

  A prepared folder without a stamp (prepared by an older kdseg) is
  stamped now and trusted.
  """
  path = os.path.join(prepared_dir, STAMP_FILE)
  paths = list(paths)
  if not os.path.exists(path):
    stamp(prepared_dir, paths)
    return
  with open(path) as f:
    then = json.load(f)
  now = _state(paths)
  changed = sorted(p for p in now if p in then and now[p] != then[p])
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
