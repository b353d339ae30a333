"""`segmentation_folder`: any folder of images with a folder of masks.

The way medical, robotics and in-house data usually come: images in one
folder, masks with the same file names in another, either flat (one split,
named `split_name`, 'train' by default) or with one sub-folder per split:

  <root>/                      (or pass image_dir and mask_dir themselves)
    images/                    RGB, greyscale, 16-bit or RGBA images
      a.jpg  b.png  ...        (.png .jpg .jpeg .bmp .gif)
    masks/                     one PNG per image, same stem
      a.png  b.png  ...        (a_mask.png with mask_suffix='_mask')
  or, splits as sub-folders present in both:
    images/train/a.jpg ...   images/val/c.jpg ...
    masks/train/a.png ...    masks/val/c.png ...

Mask values are class indices 0..len(class_names)-1 or `ignore_index`
(default 255), or anything else listed in `value_map` (e.g. {0: 0, 255: 1}
for binary masks saved as 0/255); masks may be greyscale, 16-bit or palette
PNGs (see `image_files`). The folder is checked pair by pair and prepared
once into TFDS records under
`<data_dir>/segmentation_folder/<folder name>_<hash>/`, where the hash covers
the folders' absolute paths and the mask coding, so two folders (or two
codings of one folder) never share records. A flat folder has one split:
TFDS slicing ('train[:90%]', 'train[90%:]') holds out part of it.
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
from typing import Optional, Sequence, Union


from kdseg.data import image_files
from kdseg.data import source as source_lib
from kdseg.data import source_files
from kdseg.data import tf_setup
from kdseg.data import tfds_source

tf = tf_setup.import_tensorflow()
# pylint: disable-next=g-import-not-at-top,g-bad-import-order
import tensorflow_datasets as tfds

NAME = 'segmentation_folder'

EXPECTED_LAYOUT = """\
  root=<folder> holding images/ and masks/, or image_dir=... mask_dir=...:
    images/a.jpg  images/b.png  ...     (.png .jpg .jpeg .bmp .gif)
    masks/a.png   masks/b.png   ...     (PNG, same stem as the image,
                                         or a<mask_suffix>.png)
  or one sub-folder per split, in both folders:
    images/train/...  images/val/...
    masks/train/...   masks/val/..."""


@dataclasses.dataclass(frozen=True)
class FolderSpec:
  """What a prepared folder's records depend on (and nothing else).

  Attributes:
    image_dir: Absolute path of the image folder.
    mask_dir: Absolute path of the mask folder.
    coding: How mask values become labels.
    mask_suffix: The mask of X.jpg is X<mask_suffix>.png.
    split_name: Name of the one split of a flat folder.
  """
  image_dir: str
  mask_dir: str
  coding: image_files.MaskCoding
  mask_suffix: str = ''
  split_name: str = 'train'

  def config_name(self) -> str:
    """'<folder name>_<hash of this spec>', a valid TFDS config name."""
    common = os.path.commonpath([self.image_dir, self.mask_dir])
    folder = os.path.basename(common) or os.path.basename(self.image_dir)
    slug = re.sub(r'[^a-z0-9]+', '_', folder.lower()).strip('_')[:40]
    digest = hashlib.sha256(json.dumps(
        dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]
    return f'{slug or "folder"}_{digest}'


def _layout_error(spec: FolderSpec, problem: str) -> ValueError:
  return ValueError(
      f'{problem} segmentation_folder reads image_dir={spec.image_dir!r} and '
      f'mask_dir={spec.mask_dir!r}, laid out as:\n{EXPECTED_LAYOUT}')


def _subfolders(folder: str) -> list[str]:
  return sorted(name for name in os.listdir(folder)
                if not name.startswith('.') and
                os.path.isdir(os.path.join(folder, name)))


def find_splits(spec: FolderSpec) -> dict[str, tuple[str, str]]:
  """{split: (image folder, mask folder)} of a folder data set.

  Raises:
    ValueError: Showing the expected layout, if a folder is missing, the
      image folder mixes images and sub-folders, or a split sub-folder has no
      counterpart among the masks.
  """
  for folder in (spec.image_dir, spec.mask_dir):
    if not os.path.isdir(folder):
      raise _layout_error(spec, f'{folder} is not a folder.')
  splits = _subfolders(spec.image_dir)
  if not splits:
    return {spec.split_name: (spec.image_dir, spec.mask_dir)}
  loose = image_files.list_files(spec.image_dir, image_files.IMAGE_SUFFIXES)
  if loose:
    raise _layout_error(
        spec, f'{spec.image_dir} holds both images (e.g. {loose[:2]}) and '
        f'sub-folders ({splits}); use one or the other.')
  missing = [s for s in splits
             if not os.path.isdir(os.path.join(spec.mask_dir, s))]
  if missing:
    raise _layout_error(
        spec, f'Split folders {missing} of {spec.image_dir} have no '
        f'counterpart in {spec.mask_dir}.')
  bad = [s for s in splits if not re.fullmatch(r'[A-Za-z0-9_]+', s)]
  if bad:
    raise _layout_error(
        spec, f'Split folder names {bad} must be letters, digits and _ only.')
  return {s: (os.path.join(spec.image_dir, s), os.path.join(spec.mask_dir, s))
          for s in splits}


def find_pairs(spec: FolderSpec) -> dict[str, list[tuple[str, str, str]]]:
  """{split: [(stem, image path, mask path)]}, each sorted by stem."""
  return {split: image_files.pair_files(images, masks,
                                        mask_suffix=spec.mask_suffix)
          for split, (images, masks) in find_splits(spec).items()}


class FolderConfig(tfds.core.BuilderConfig):
  """A `SegmentationFolder` config: one folder spec, named after it."""

  def __init__(self, spec: FolderSpec):
    super().__init__(
        name=spec.config_name(),
        description=(f'Images of {spec.image_dir} with masks of '
                     f'{spec.mask_dir}.'))
    self.spec = spec


class SegmentationFolder(tfds_source.PairedFilesBuilder):
  """Images and same-named masks from user folders, checked pair by pair."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Images and masks paired by file name.'}
  DESCRIPTION = (
      'A folder of images with a folder of masks; labels are class indices '
      f'with {image_files.STORED_IGNORE} for ignored pixels.')

  def find_pairs(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The folders are in the config.
    return find_pairs(self.builder_config.spec)

  def read_pair(self, image_path: str, mask_path: str):
    return image_files.read_checked_pair(image_path, mask_path,
                                         self.builder_config.spec.coding)


def make_spec(*, class_names: Union[str, Sequence[str]],
              root: Optional[str] = None, image_dir: Optional[str] = None,
              mask_dir: Optional[str] = None, ignore_index: int = 255,
              value_map: Optional[image_files.ValueMap] = None,
              mask_suffix: str = '',
              split_name: str = 'train') -> tuple[FolderSpec, tuple[str, ...]]:
  """Checks the user's options; returns (spec, class names)."""
  if isinstance(class_names, str):
    class_names = [name.strip() for name in class_names.split(',')]
  class_names = tuple(class_names)
  if not class_names:
    raise ValueError('segmentation_folder needs class_names, e.g. '
                     "['background', 'lesion'].")
  if root is not None:
    if image_dir is not None or mask_dir is not None:
      raise ValueError('Pass either root or image_dir and mask_dir, not '
                       'both.')
    image_dir = os.path.join(root, 'images')
    mask_dir = os.path.join(root, 'masks')
  if image_dir is None or mask_dir is None:
    raise ValueError(
        'segmentation_folder needs root (holding images/ and masks/) or '
        f'both image_dir and mask_dir. Expected layout:\n{EXPECTED_LAYOUT}')
  coding = image_files.MaskCoding(
      num_classes=len(class_names), ignore_index=int(ignore_index),
      value_map=image_files.normalize_value_map(value_map))
  spec = FolderSpec(
      image_dir=os.path.realpath(os.path.expanduser(image_dir)),
      mask_dir=os.path.realpath(os.path.expanduser(mask_dir)),
      coding=coding, mask_suffix=mask_suffix, split_name=split_name)
  return spec, class_names


def _check_unchanged(builder: SegmentationFolder, spec: FolderSpec):
  """Fails if the folder's pairs no longer match the prepared records."""
  if not os.path.isdir(spec.image_dir):
    return  # Prepared elsewhere or moved: the records are all there is.
  now = {split: len(pairs) for split, pairs in find_pairs(spec).items()}
  prepared = {split: info.num_examples
              for split, info in builder.info.splits.items()}
  if now != prepared:
    raise ValueError(
        f'{spec.image_dir} has changed since it was prepared into '
        f'{builder.data_dir}: pairs per split now {now}, prepared {prepared}. '
        f'Fix: delete {builder.data_dir} to prepare it again.')
  source_files.check(builder.data_dir, _source_files(spec), spec.image_dir)


class _NoCustomConfigWarning(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith('Using custom data config')


@contextlib.contextmanager
def _quiet_custom_config():
  """Silences TFDS's warning about configs made at run time: here they are
  the design, one per folder, and the warning would print on every use."""
  logger = logging.getLogger('absl')
  quiet = _NoCustomConfigWarning()
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def prepare(spec: FolderSpec,
            data_dir: Optional[str] = None) -> SegmentationFolder:
  """The builder of `spec`, preparing it first if needed.

  TFDS writes into a temporary folder and renames it only on success, so a
  failure (a bad mask, say) leaves nothing that reads as prepared.
  """
  with _quiet_custom_config():
    builder = SegmentationFolder(config=FolderConfig(spec),
                                 data_dir=data_dir or
                                 tfds_source.default_data_dir())
  if builder.is_prepared():
    _check_unchanged(builder, spec)
  else:
    builder.download_and_prepare()
    source_files.stamp(builder.data_dir, _source_files(spec))
  return builder


def _source_files(spec: FolderSpec) -> list[str]:
  return [path for pairs in find_pairs(spec).values()
          for _, image, mask in pairs for path in (image, mask)]


def list_splits(**kwargs) -> list[str]:
  """The splits of a folder data set (preparing it if needed)."""
  data_dir = kwargs.pop('data_dir', None)
  spec, _ = make_spec(**kwargs)
  return sorted(prepare(spec, data_dir).info.splits.keys())


def make_source(split: str, *, class_names: Union[str, Sequence[str]],
                root: Optional[str] = None, image_dir: Optional[str] = None,
                mask_dir: Optional[str] = None, ignore_index: int = 255,
                value_map: Optional[image_files.ValueMap] = None,
                mask_suffix: str = '', split_name: str = 'train',
                data_dir: Optional[str] = None) -> source_lib.Source:
  """One split of a folder of images and masks, preparing it once.

  Args:
    split: A split of the folder: a sub-folder name, or `split_name` for a
      flat folder; TFDS slices such as 'train[:90%]' work too.
    class_names: Names of classes 0..C-1 (a list, or one comma-separated
      string).
    root: Folder holding images/ and masks/; or give image_dir and mask_dir.
    image_dir: Folder of images (or of split sub-folders of images).
    mask_dir: Folder of masks, laid out like image_dir.
    ignore_index: Label of pixels that are not scored; also the mask value
      that means so, unless value_map says otherwise.
    value_map: {mask value: class or ignore_index}; when given, it must list
      every value that occurs in the masks.
    mask_suffix: The mask of X.jpg is X<mask_suffix>.png.
    split_name: Name of the split of a flat folder.
    data_dir: TFDS data dir; defaults to $KDSEG_DATA_DIR or
      ~/tensorflow_datasets.

  Returns:
    A Source with camvid's record and example conventions.

  Raises:
    ValueError: For a bad layout, unpaired files, an image and mask of
      different sizes, unknown mask values (each naming the file), a folder
      that changed since it was prepared, or an absent split.
  """
  spec, class_names = make_spec(
      class_names=class_names, root=root, image_dir=image_dir,
      mask_dir=mask_dir, ignore_index=ignore_index, value_map=value_map,
      mask_suffix=mask_suffix, split_name=split_name)
  builder = prepare(spec, data_dir)
  label_map = {label: label for label in range(len(class_names))}
  label_map[image_files.STORED_IGNORE] = spec.coding.ignore_index
  return tfds_source.make_source(
      builder, split, name=NAME, class_names=class_names,
      label_map=label_map, ignore_index=spec.coding.ignore_index)
