"""Segmentation data sets of the TensorFlow Datasets catalog, as `Source`s.

Checked against tensorflow-datasets 4.9.10:

- `oxford_iiit_pet` (4.0.0): pets with a trimap, feature
  `segmentation_mask`, values 1 = pet, 2 = background, 3 = border (the
  not-classified ring around the pet). kdseg classes: 0 pet, 1 background,
  2 border (value - 1), nothing ignored: the border is a class of its own
  that every pixel of the ring carries, and predicting it is part of the
  usual three-class task. `ignore_border=True` instead scores only pet vs
  background and ignores the ring. Splits 'train' (TFDS trainval, 3,680) and
  'test' (3,669). TFDS downloads it; or put images.tar.gz and
  annotations.tar.gz in `manual_dir`.
- `cityscapes/semantic_segmentation` (1.0.0): manual download,
  leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip in `manual_dir`.
  Feature `segmentation_label` holds the 34 label ids (0..33); kdseg maps
  them to the 19 training classes of the benchmark and every other id to the
  ignore index. Splits 'train' (2,975), 'val' (TFDS 'validation', 500) and
  'test' (1,525, whose public labels are all void, so fully ignored).

Not here:
- ADE20K: TFDS `scene_parse150` holds instance annotations (100 object
  categories, no stuff), not the 150-class semantic labels; see `ade20k`,
  which prepares `scene_parse150` from the benchmark's own folder.
- Pascal VOC 2012 segmentation: the installed catalog has none. Its `voc`
  builder (configs 2007 and 2012, 5.0.0) carries only boxes and image
  labels for detection, no masks, and no other builder has the VOC masks.

Labels of these data sets were not checked by kdseg while they were prepared,
so decoding checks every example: image and label of the same size, and only
known label values; a failure names the file and the values found.
"""

import dataclasses
import os
from typing import Optional, Sequence

from kdseg.data import source as source_lib
from kdseg.data import tf_setup
from kdseg.data import tfds_source

tf = tf_setup.import_tensorflow()
# pylint: disable-next=g-import-not-at-top,g-bad-import-order
import tensorflow_datasets as tfds

PET_CLASS_NAMES = ('pet', 'background', 'border')
# Trimap value -> class.
PET_TRIMAP = {1: 0, 2: 1, 3: 2}
PET_SPLITS = ('train', 'test')
PET_ARCHIVES = ('images.tar.gz', 'annotations.tar.gz')

CITYSCAPES_CLASS_NAMES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
    'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car',
    'truck', 'bus', 'train', 'motorcycle', 'bicycle')
# Label id -> training class (the trainId of the benchmark's label table);
# ids 0..33 not listed (void, ego vehicle, parking, rail track, guard rail,
# bridge, tunnel, pole group, caravan, trailer, ...) are ignored.
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_NUM_IDS = 34
# kdseg split -> TFDS split.
CITYSCAPES_SPLITS = {'train': 'train', 'val': 'validation', 'test': 'test'}
CITYSCAPES_ZIPS = ('leftImg8bit_trainvaltest.zip', 'gtFine_trainvaltest.zip')

PET_LAYOUT = """\
  manual_dir is optional (without it TFDS downloads the data); if given:
  <manual_dir>/
    images.tar.gz        the Oxford-IIIT Pet images
    annotations.tar.gz   its annotations (trimaps/, trainval.txt, test.txt)"""

CITYSCAPES_LAYOUT = """\
  <manual_dir>/                     (from cityscapes-dataset.com, after login)
    leftImg8bit_trainvaltest.zip    images
    gtFine_trainvaltest.zip         fine annotations (*_gtFine_labelIds.png)"""


def _check_manual_dir(name: str, manual_dir: str, files: Sequence[str],
                      layout: str):
  """Fails, showing `layout`, unless every one of `files` is in manual_dir."""
  if not os.path.isdir(manual_dir):
    raise ValueError(f'The {name} manual dir {manual_dir!r} does not exist. '
                     f'Expected:\n{layout}')
  missing = [f for f in files
             if not os.path.isfile(os.path.join(manual_dir, f))]
  if missing:
    raise ValueError(
        f'The {name} manual dir {manual_dir!r} lacks {missing}; it holds '
        f'{sorted(os.listdir(manual_dir))[:8]}. Expected:\n{layout}')


def _prepare(builder: tfds.core.DatasetBuilder, *, manual_dir: Optional[str],
             files: Sequence[str], layout: str, manual_only: bool):
  """Prepares `builder` unless it is; TFDS renames its output on success."""
  if builder.is_prepared():
    return builder
  if manual_dir is None:
    if manual_only:
      raise ValueError(
          f'{builder.name} is not prepared in {builder.data_dir}; pass '
          f'manual_dir:\n{layout}')
    builder.download_and_prepare()
    return builder
  manual_dir = os.fspath(manual_dir)
  _check_manual_dir(builder.name, manual_dir, files, layout)
  # TFDS takes an archive found in manual_dir (by its file name) instead of
  # downloading it.
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def _data_dir(data_dir: Optional[str]) -> str:
  return data_dir or tfds_source.default_data_dir()


def make_pet_source(split: str, *, manual_dir: Optional[str] = None,
                    data_dir: Optional[str] = None, ignore_index: int = 255,
                    ignore_border: bool = False) -> source_lib.Source:
  """Oxford-IIIT Pet ('train' or 'test') with its trimap as labels.

  Args:
    split: 'train' or 'test'.
    manual_dir: Optional folder with images.tar.gz and annotations.tar.gz;
      without it, TFDS downloads them (when not yet prepared).
    data_dir: TFDS data dir; defaults to $KDSEG_DATA_DIR or
      ~/tensorflow_datasets.
    ignore_index: Label of ignored pixels.
    ignore_border: Two classes (pet, background) with the border ring
      ignored, instead of three.

  Returns:
    A Source whose records are {'image', 'label', 'file_name'} (JPEG, trimap
    PNG, file name) and whose labels are 0 pet, 1 background, 2 border (or
    `ignore_index` for the border with `ignore_border`).
  """
  builder = _prepare(
      tfds.builder('oxford_iiit_pet', data_dir=_data_dir(data_dir)),
      manual_dir=manual_dir, files=PET_ARCHIVES, layout=PET_LAYOUT,
      manual_only=False)
  label_map = dict(PET_TRIMAP)
  class_names = PET_CLASS_NAMES
  if ignore_border:
    label_map[3] = ignore_index
    class_names = PET_CLASS_NAMES[:2]
  return tfds_source.make_source(
      builder, split, name='oxford_iiit_pet', class_names=class_names,
      label_map=label_map, ignore_index=ignore_index,
      keys={'label': 'segmentation_mask'}, check_labels=True)


def make_cityscapes_source(split: str, *, manual_dir: Optional[str] = None,
                           data_dir: Optional[str] = None,
                           ignore_index: int = 255) -> source_lib.Source:
  """Cityscapes fine annotations ('train', 'val' or 'test'), 19 classes.

  Args:
    split: 'train', 'val' or 'test'.
    manual_dir: Folder with leftImg8bit_trainvaltest.zip and
      gtFine_trainvaltest.zip; only read when the data set is not yet
      prepared in `data_dir` (may then be None).
    data_dir: TFDS data dir; defaults to $KDSEG_DATA_DIR or
      ~/tensorflow_datasets.
    ignore_index: Label of the ids outside the 19 training classes.

  Returns:
    A Source whose records are {'image', 'label', 'file_name'} (PNG image,
    label id PNG, image id) and whose labels are the training classes 0..18
    or `ignore_index`.
  """
  if split not in CITYSCAPES_SPLITS:
    raise ValueError(f'Unknown split {split!r} of cityscapes; valid splits: '
                     f'{list(CITYSCAPES_SPLITS)}.')
  builder = _prepare(
      tfds.builder('cityscapes', config='semantic_segmentation',
                   data_dir=_data_dir(data_dir)),
      manual_dir=manual_dir, files=CITYSCAPES_ZIPS, layout=CITYSCAPES_LAYOUT,
      manual_only=True)
  label_map = {label_id: CITYSCAPES_TRAIN_IDS.get(label_id, ignore_index)
               for label_id in range(CITYSCAPES_NUM_IDS)}
  source = tfds_source.make_source(
      builder, CITYSCAPES_SPLITS[split], name='cityscapes',
      class_names=CITYSCAPES_CLASS_NAMES, label_map=label_map,
      ignore_index=ignore_index,
      keys={'image': 'image_left', 'label': 'segmentation_label',
            'file_name': 'image_id'},
      check_labels=True)
  return dataclasses.replace(source, split=split)
