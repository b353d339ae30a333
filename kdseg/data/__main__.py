"""Prepares a data set and prints what was read, split by split.

  python -m kdseg.data --dataset camvid --manual-dir PATH [--data-dir DIR]
  python -m kdseg.data --dataset synthetic

For each split present: the example count and the pixel count of every class
and of ignored pixels, so that a user can check the data before training.
"""

import argparse
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top

from kdseg import data as data_lib  # pylint: disable=g-import-not-at-top


def count_pixels(source: data_lib.Source) -> tuple[int, np.ndarray, int]:
  """Returns (examples, per-class pixel counts [C], ignored pixels)."""
  counts = np.zeros(source.num_classes, np.int64)
  ignored = examples = 0
  for example in source.as_dataset().as_numpy_iterator():
    label = example['label'].astype(np.int64).ravel()
    valid = (label >= 0) & (label < source.num_classes)
    counts += np.bincount(label[valid], minlength=source.num_classes)
    ignored += int(np.sum(label == source.ignore_index))
    examples += 1
  return examples, counts, ignored


def format_split(source: data_lib.Source, examples: int, counts: np.ndarray,
                 ignored: int) -> str:
  total = counts.sum() + ignored
  lines = [f'{source.name}/{source.split}: {examples} examples, '
           f'{total:,d} pixels']
  for name, count in zip(source.class_names, counts):
    lines.append(f'  {name:<16} {count:>14,d}  {100 * count / total:6.2f}%')
  lines.append(f'  {"(ignored)":<16} {ignored:>14,d}  '
               f'{100 * ignored / total:6.2f}%')
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m kdseg.data', description=__doc__.splitlines()[0])
  parser.add_argument('--dataset', required=True,
                      choices=data_lib.list_sources())
  parser.add_argument('--manual-dir', help='folder with the raw data (camvid)')
  parser.add_argument('--data-dir', help='where prepared records are stored')
  args = parser.parse_args(argv)
  kwargs = {}
  if args.dataset != 'synthetic':
    if not args.manual_dir:
      parser.error(f'--manual-dir is required for {args.dataset}')
    kwargs['manual_dir'] = args.manual_dir
    if args.data_dir:
      kwargs['data_dir'] = args.data_dir
  printed = 0
  for split in data_lib.list_splits(args.dataset):
    try:
      source = data_lib.get_source(args.dataset, split, **kwargs)
    except ValueError as e:
      if 'has no split' in str(e):
        continue  # This split is absent from the user's folder.
      print(f'error: {e}', file=sys.stderr)
      return 2
    print(format_split(source, *count_pixels(source)), flush=True)
    printed += 1
  return 0 if printed else 1


if __name__ == '__main__':
  sys.exit(main())
