"""ADE20K scene parsing (SceneParse150): 150 classes, from ADEChallengeData2016.

Registered in kdseg as `scene_parse150`. The data set is prepared by kdseg
from the benchmark's own folder, not by TensorFlow Datasets: the TFDS
`scene_parse150` builder (1.0.0, as of tensorflow-datasets 4.9.10) stores the
*instance* annotations of the 2017 Places challenge (`annotations_instance/`:
red channel = one of 100 object categories, green = instance), which hold no
labels for the 50 "stuff" classes (wall, sky, floor, ...) and number the
others differently, so they cannot give the 150-class semantic labels.

The folder, as the official ADEChallengeData2016.zip unpacks:

  ADEChallengeData2016/
    images/training/ADE_train_00000001.jpg ...      (20,210)
    images/validation/ADE_val_00000001.jpg ...      (2,000)
    annotations/training/ADE_train_00000001.png ... one-channel PNGs
    annotations/validation/ADE_val_00000001.png ...

Mask value 0 is "other" (none of the 150 classes) and becomes the ignore
index; value k in 1..150 becomes class k - 1. Splits: 'train' (training/) and
'val' (validation/), whichever are present. Every pair is checked while
preparing, like CamVid.
"""

import os
from typing import Optional


from kdseg.data import image_files
from kdseg.data import source as source_lib
from kdseg.data import tf_setup
from kdseg.data import tfds_source

tf = tf_setup.import_tensorflow()
# pylint: disable-next=g-import-not-at-top,g-bad-import-order
import tensorflow_datasets as tfds

NAME = 'scene_parse150'
# The first name of each class in the benchmark's objectInfo150 list, in
# order: class k - 1 is mask value k.
CLASS_NAMES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed',
    'windowpane', 'grass', 'cabinet', 'sidewalk', 'person', 'earth', 'door',
    'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field',
    'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp',
    'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace',
    'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case',
    'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge',
    'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill',
    'bench', 'countertop', 'stove', 'palm', 'kitchen island', 'computer',
    'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel',
    'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight',
    'booth', 'television receiver', 'airplane', 'dirt track', 'apparel',
    'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet',
    'poster', 'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy',
    'washer', 'plaything', 'swimming pool', 'stool', 'barrel', 'basket',
    'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food',
    'step', 'tank', 'trade name', 'microwave', 'pot', 'animal', 'bicycle',
    'lake', 'dishwasher', 'screen', 'blanket', 'sculpture', 'hood', 'sconce',
    'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen',
    'plate', 'monitor', 'bulletin board', 'shower', 'radiator', 'glass',
    'clock', 'flag')
NUM_CLASSES = len(CLASS_NAMES)
# Mask value of pixels in none of the 150 classes.
OTHER = 0
# kdseg split -> sub-folder of images/ and annotations/.
SPLIT_FOLDERS = {'train': 'training', 'val': 'validation'}

# Stored labels are classes 0..149 and 255 (ignored), as for every folder.
CODING = image_files.MaskCoding(
    num_classes=NUM_CLASSES, ignore_index=image_files.STORED_IGNORE,
    value_map=((OTHER, image_files.STORED_IGNORE),) + tuple(
        (value, value - 1) for value in range(1, NUM_CLASSES + 1)))

EXPECTED_LAYOUT = """\
  <manual_dir>/                       (ADEChallengeData2016/, as unzipped)
    images/training/ADE_train_00000001.jpg ...
    annotations/training/ADE_train_00000001.png ...
                  (one-channel PNGs: 0 = other, 1..150 = classes)
    images/validation/ ...  annotations/validation/ ...   (optional split)"""


def _layout_error(manual_dir: str, problem: str) -> ValueError:
  return ValueError(
      f'{problem} The ADE20K manual dir {manual_dir!r} must be the '
      f'ADEChallengeData2016 folder of the scene parsing benchmark '
      f'(sceneparsing.csail.mit.edu):\n{EXPECTED_LAYOUT}')


def present_splits(manual_dir: str) -> list[str]:
  """Splits whose image and annotation folders both exist."""
  return [split for split, folder in SPLIT_FOLDERS.items()
          if os.path.isdir(os.path.join(manual_dir, 'images', folder)) and
          os.path.isdir(os.path.join(manual_dir, 'annotations', folder))]


def find_pairs(manual_dir: str) -> dict[str, list[tuple[str, str, str]]]:
  """{split: [(stem, image path, mask path)]} of an ADEChallengeData2016."""
  if not os.path.isdir(manual_dir):
    raise _layout_error(manual_dir, 'The folder does not exist.')
  splits = present_splits(manual_dir)
  if not splits:
    raise _layout_error(
        manual_dir, 'Neither images/training/ with annotations/training/ nor '
        'images/validation/ with annotations/validation/ is there.')
  return {split: image_files.pair_files(
      os.path.join(manual_dir, 'images', SPLIT_FOLDERS[split]),
      os.path.join(manual_dir, 'annotations', SPLIT_FOLDERS[split]))
          for split in splits}


class Ade20kSceneParsing(tfds_source.PairedFilesBuilder):
  """ADE20K SceneParse150 semantic labels, from ADEChallengeData2016/."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'ADEChallengeData2016, 150 classes + other.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download ADEChallengeData2016.zip from the MIT scene parsing '
      'benchmark, unzip it and pass the ADEChallengeData2016/ folder as '
      f'manual_dir:\n{EXPECTED_LAYOUT}')
  DESCRIPTION = (
      'ADE20K scene parsing benchmark (SceneParse150): labels 0..149 are its '
      f'150 classes, {image_files.STORED_IGNORE} is "other".')
  HOMEPAGE = 'http://sceneparsing.csail.mit.edu/'

  def find_pairs(self, dl_manager: tfds.download.DownloadManager):
    return find_pairs(os.fspath(dl_manager.manual_dir))

  def read_pair(self, image_path: str, mask_path: str):
    return image_files.read_checked_pair(image_path, mask_path, CODING)


def prepare(*, manual_dir: Optional[str],
            data_dir: Optional[str] = None) -> Ade20kSceneParsing:
  """The builder, prepared from `manual_dir` if needed (all or nothing)."""
  builder = Ade20kSceneParsing(
      data_dir=data_dir or tfds_source.default_data_dir())
  if not builder.is_prepared():
    if manual_dir is None:
      raise ValueError(
          f'ADE20K is not prepared in {builder.data_dir}; pass manual_dir, '
          f'the ADEChallengeData2016 folder:\n{EXPECTED_LAYOUT}')
    # Check the layout before TFDS, whose own error for an empty or missing
    # manual dir does not show it.
    find_pairs(os.fspath(manual_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir)))
  return builder


def make_source(split: str, *, manual_dir: Optional[str] = None,
                data_dir: Optional[str] = None,
                ignore_index: int = 255) -> source_lib.Source:
  """One ADE20K split ('train' or 'val') as a `Source`, preparing it once.

  Args:
    split: 'train' or 'val'; must be present in the prepared data.
    manual_dir: The ADEChallengeData2016 folder; only read when the data set
      is not yet prepared in `data_dir` (may then be None).
    data_dir: TFDS data dir; defaults to $KDSEG_DATA_DIR or
      ~/tensorflow_datasets.
    ignore_index: Label of "other" pixels (mask value 0).

  Returns:
    A Source with camvid's record and example conventions: labels 0..149 or
    `ignore_index`.

  Raises:
    ValueError: For a bad layout, unpaired files, mismatched sizes or mask
      values above 150 (naming the file), or an absent split.
  """
  builder = prepare(manual_dir=manual_dir, data_dir=data_dir)
  label_map = {label: label for label in range(NUM_CLASSES)}
  label_map[image_files.STORED_IGNORE] = ignore_index
  return tfds_source.make_source(
      builder, split, name=NAME, class_names=CLASS_NAMES,
      label_map=label_map, ignore_index=ignore_index)
