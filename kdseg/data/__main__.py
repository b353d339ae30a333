"""Prepares a data set and prints what was read, split by split.

  python -m kdseg.data --dataset camvid --manual-dir PATH [--data-dir DIR]
  python -m kdseg.data --dataset synthetic
  python -m kdseg.data --dataset cityscapes --manual-dir PATH  (likewise
      scene_parse150; oxford_iiit_pet downloads without --manual-dir)
  python -m kdseg.data --dataset segmentation_folder --root PATH \
      --class-names background,lesion [--value-map 0:0,255:1] [--data-dir DIR]

For each split present: the example count and the pixel count of every class
and of ignored pixels, so that a user can check the data before training.
"""

import argparse
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top

from kdseg import data as data_lib  # pylint: disable=g-import-not-at-top
from kdseg.data import tf_setup  # pylint: disable=g-import-not-at-top


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


# Data sets that cannot be downloaded: preparing them needs --manual-dir.
_NEEDS_MANUAL_DIR = ('camvid', 'cityscapes', 'scene_parse150')


def _value_map(text: str) -> dict[int, int]:
  """'0:0,255:1' -> {0: 0, 255: 1}."""
  try:
    return {int(value): int(label) for value, label in
            (item.split(':') for item in text.split(',') if item.strip())}
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'expected VALUE:LABEL pairs separated by commas, e.g. 0:0,255:1; got '
        f'{text!r}') from None


def _add_folder_flags(parser: argparse.ArgumentParser):
  group = parser.add_argument_group('segmentation_folder')
  group.add_argument('--root', help='folder holding images/ and masks/')
  group.add_argument('--image-dir', help='folder of images (or of splits)')
  group.add_argument('--mask-dir', help='folder of masks, laid out alike')
  group.add_argument('--class-names',
                     help='comma-separated names of classes 0, 1, ...')
  group.add_argument('--value-map', type=_value_map,
                     help='mask value to label, e.g. 0:0,255:1')
  group.add_argument('--mask-suffix', default='',
                     help="mask of X.jpg is X<suffix>.png, e.g. '_mask'")
  group.add_argument('--split-name', default='train',
                     help='split name of a folder without split sub-folders')


def _kwargs(parser: argparse.ArgumentParser,
            args: argparse.Namespace) -> dict:
  """The data set kwargs that the flags give."""
  kwargs = {}
  if args.ignore_index is not None:
    kwargs['ignore_index'] = args.ignore_index
  if args.dataset == 'synthetic':
    return kwargs
  if args.data_dir:
    kwargs['data_dir'] = args.data_dir
  if args.dataset == 'segmentation_folder':
    if not args.class_names:
      parser.error('--class-names is required for segmentation_folder')
    if not (args.root or (args.image_dir and args.mask_dir)):
      parser.error('segmentation_folder needs --root, or --image-dir and '
                   '--mask-dir')
    for key in ('root', 'image_dir', 'mask_dir', 'class_names', 'value_map'):
      if getattr(args, key) is not None:
        kwargs[key] = getattr(args, key)
    kwargs.update(mask_suffix=args.mask_suffix, split_name=args.split_name)
    return kwargs
  if args.dataset in _NEEDS_MANUAL_DIR and not args.manual_dir:
    parser.error(f'--manual-dir is required for {args.dataset}')
  if args.manual_dir:
    kwargs['manual_dir'] = args.manual_dir
  return kwargs


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m kdseg.data', description=__doc__.splitlines()[0])
  parser.add_argument('--dataset', required=True,
                      choices=data_lib.list_sources())
  parser.add_argument('--manual-dir',
                      help='folder with the raw data (camvid, cityscapes, '
                      'scene_parse150, oxford_iiit_pet)')
  parser.add_argument('--data-dir', help='where prepared records are stored')
  parser.add_argument('--ignore-index', type=int,
                      help='label of ignored pixels (default 255)')
  _add_folder_flags(parser)
  args = parser.parse_args(argv)
  kwargs = _kwargs(parser, args)
  printed = 0
  try:
    splits = data_lib.list_splits(args.dataset, **kwargs)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for split in splits:
    try:
      source = data_lib.get_source(args.dataset, split, **kwargs)
      counts = count_pixels(source)
    except ValueError as e:
      if 'has no split' in str(e):
        continue  # This split is absent from the user's folder.
      print(f'error: {e}', file=sys.stderr)
      return 2
    except tf_setup.import_tensorflow().errors.OpError as e:
      # A check inside the tf.data pipeline (a bad label in a data set that
      # TFDS prepared) fails as a TensorFlow error.
      print(f'error: {e.message}', file=sys.stderr)
      return 2
    print(format_split(source, *counts), flush=True)
    printed += 1
  return 0 if printed else 1


if __name__ == '__main__':
  sys.exit(main())
