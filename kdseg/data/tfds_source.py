"""Prepared TensorFlow Datasets splits as `Source`s of encoded records.

Every TFDS-backed source in kdseg (CamVid, the catalog data sets, folders of
images) has the same records, {'image': string [] (encoded RGB image),
'label': string [] (encoded one-channel PNG), 'file_name': string []}, in the
order TFDS stores them, and decodes a record into {'image': uint8 [H, W, 3],
'label': int32 [H, W]}. Stored label values become classes or the ignore index
through a 256-entry table, so every data set's own label coding (CamVid's void
11, Cityscapes' 34 ids, a trimap's 1..3) is one lookup away from the
convention of `Source`.

Importing this module imports TensorFlow (through `tf_setup`) and TensorFlow
Datasets.
"""

import abc
import functools
import os
from typing import Iterator, Mapping, Optional

from etils import epath
import numpy as np

from kdseg.data import source as source_lib
from kdseg.data import tf_setup

tf = tf_setup.import_tensorflow()
# pylint: disable-next=g-import-not-at-top,g-bad-import-order
import tensorflow_datasets as tfds

DATA_DIR_ENV = 'KDSEG_DATA_DIR'
# Splits whose encoded records take less than this are held in memory, which
# gives O(1) random access (exactly resumable, freshly permuted epochs).
# Larger ones are streamed: the pipeline shuffles a buffer of records instead.
IN_MEMORY_MAX_BYTES = 2 * 1024**3
# Stored label value of ignored pixels in the label PNGs that kdseg writes.
STORED_IGNORE = 255


def default_data_dir() -> str:
  """Where prepared data sets go: $KDSEG_DATA_DIR or ~/tensorflow_datasets."""
  return os.environ.get(DATA_DIR_ENV) or os.path.expanduser(
      '~/tensorflow_datasets')


def record_features() -> tfds.features.FeaturesDict:
  """The features of the data sets that kdseg prepares itself."""
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3)),
      'label': tfds.features.Image(shape=(None, None, 1),
                                   encoding_format='png'),
      'file_name': tfds.features.Text(),
  })


Pairs = list[tuple[str, str, str]]  # (stem, image path, mask path).


class PairedFilesBuilder(tfds.core.GeneratorBasedBuilder):
  """The base of the builders that prepare local image/mask files (CamVid,
  ADE20K, user folders): `record_features` records in file-name order, one
  a pair, every split paired before any is written (a bad layout fails
  before TFDS writes anything).

  A subclass sets VERSION, RELEASE_NOTES, DESCRIPTION (and HOMEPAGE) and
  defines `find_pairs` and `read_pair`. Abstract, so TFDS does not register
  it as a data set.
  """

  # TFDS finds a builder's code (for its checksums file) through
  # `importlib_resources`, an optional package that may be missing; naming
  # the folder's file directly avoids that import. Nothing is downloaded, so
  # no checksums file is ever read from there.
  code_path = epath.Path(__file__)
  DESCRIPTION = ''
  HOMEPAGE: Optional[str] = None

  @abc.abstractmethod
  def find_pairs(self, dl_manager: tfds.download.DownloadManager
                 ) -> dict[str, Pairs]:
    """{split: [(stem, image path, mask path)]}, each sorted by stem."""

  @abc.abstractmethod
  def read_pair(self, image_path: str, mask_path: str) -> tuple[bytes, bytes]:
    """(encoded RGB image, encoded one-channel label PNG), checked."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=record_features(),
        supervised_keys=('image', 'label'),
        homepage=self.HOMEPAGE,
        # Keep the generation order (sorted by file name) in the stored data,
        # so that record i is the same file for every user.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    return {split: self._generate_examples(pairs)
            for split, pairs in self.find_pairs(dl_manager).items()}

  def _generate_examples(self, pairs: Pairs) -> Iterator[tuple[str, dict]]:
    for stem, image_path, mask_path in pairs:
      image, label = self.read_pair(image_path, mask_path)
      yield stem, {'image': image, 'label': label,
                   'file_name': os.path.basename(image_path)}


def label_table(label_map: Mapping[int, int],
                ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
  """Lookup tables for stored label values 0..255.

  Args:
    label_map: Every valid stored value -> its class, or `ignore_index`.
    ignore_index: Output of stored values that are not in `label_map`
      (they are reported as errors when the source checks its labels).

  Returns:
    (table, valid): int32 [256] output label of each stored value, and
    bool [256] whether the value is valid.
  """
  table = np.full(256, ignore_index, np.int32)
  valid = np.zeros(256, bool)
  for stored, label in label_map.items():
    table[stored] = label
    valid[stored] = True
  return table, valid


def _ranges(values: list[int]) -> str:
  """[0, 1, 2, 3, 7] -> '0..3, 7'."""
  runs = []
  for value in values:
    if runs and value == runs[-1][1] + 1:
      runs[-1][1] = value
    else:
      runs.append([value, value])
  return ', '.join(str(a) if a == b else f'{a}..{b}' for a, b in runs)


def _assert_label_ok(name, record, image, stored, valid):
  """Ops that fail, naming the file, on bad sizes or stored label values."""
  file_name = record['file_name']
  same_size = tf.reduce_all(tf.shape(image)[:2] == tf.shape(stored))
  size_check = tf.debugging.Assert(same_size, [
      f'{name}: image and label sizes differ (H, W) in', file_name, 'image',
      tf.shape(image)[:2], 'label', tf.shape(stored)])
  bad = tf.boolean_mask(stored, ~tf.gather(valid, stored))
  allowed = _ranges(np.flatnonzero(valid).tolist())
  value_check = tf.debugging.Assert(tf.size(bad) == 0, [
      f'{name}: label values other than {allowed} in', file_name,
      'unknown values:', tf.unique(tf.sort(bad))[0]], summarize=64)
  return [size_check, value_check]


def make_source(builder: tfds.core.DatasetBuilder, split: str, *, name: str,
                class_names: tuple[str, ...], label_map: Mapping[int, int],
                ignore_index: int, keys: Optional[Mapping[str, str]] = None,
                check_labels: bool = False,
                in_memory: Optional[bool] = None) -> source_lib.Source:
  """One split of a prepared TFDS builder as a `Source`.

  Args:
    builder: A prepared builder.
    split: A split of `builder` (TFDS slicing such as 'train[:90%]' works).
    name: Data set name shown in the Source and in error messages.
    class_names: The names of classes 0..C-1.
    label_map: Stored label value -> class index or `ignore_index`.
    ignore_index: Label of pixels that are not scored.
    keys: Builder feature name of 'image', 'label' and 'file_name' where they
      differ, e.g. {'label': 'segmentation_mask'}.
    check_labels: Check in `decode` that image and label sizes agree and that
      every stored label value is in `label_map`; a failure raises
      tf.errors.InvalidArgumentError naming the file and the values. For data
      that kdseg did not validate while preparing it.
    in_memory: Hold the records in memory for random access; by default when
      the split is smaller than `IN_MEMORY_MAX_BYTES`.

  Returns:
    A Source whose records are {'image', 'label', 'file_name'} (encoded image,
    encoded label PNG, file name) and whose examples are {'image': uint8
    [H, W, 3], 'label': int32 [H, W]}.

  Raises:
    ValueError: If `split` is not in the prepared data.
  """
  available = sorted(builder.info.splits.keys())
  try:
    split_info = builder.info.splits[split]
  except (KeyError, ValueError):
    raise ValueError(
        f'{name} has no split {split!r} in {builder.data_dir}; present: '
        f'{available}. (Splits are fixed when the data set is prepared: '
        f'delete that folder to prepare again from data with more.)') from None
  num_examples = split_info.num_examples
  keys = {'image': 'image', 'label': 'label', 'file_name': 'file_name',
          **(keys or {})}
  # Keep images and labels encoded: shuffling, skipping and gathering move
  # bytes, and only the examples actually used get decoded.
  decoders = {keys['image']: tfds.decode.SkipDecoding(),
              keys['label']: tfds.decode.SkipDecoding()}
  # No auto-caching: `lookup` already holds small splits in memory, and a
  # partially read cache only produces warnings.
  read_config = tfds.ReadConfig(try_autocache=False)

  def read():
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders=decoders, read_config=read_config)
    # Only the three record fields: other features (class labels, boxes)
    # would cost memory in shuffle buffers and in `all_records`.
    return ds.map(lambda r: {k: r[v] for k, v in keys.items()})

  if in_memory is None:
    in_memory = int(split_info.num_bytes) < IN_MEMORY_MAX_BYTES

  @functools.cache
  def all_records():
    # Every record as string tensors [num_examples], read eagerly even when
    # first called inside a tf.data function: in that graph the read would
    # run again for every looked-up example.
    with tf.init_scope():
      return read().batch(num_examples).get_single_element()

  def lookup(index):
    return {key: tf.gather(value, index)
            for key, value in all_records().items()}

  table, valid = label_table(label_map, ignore_index)

  def decode(record):
    image = tf.io.decode_image(record['image'], channels=3,
                               expand_animations=False)
    image.set_shape([None, None, 3])
    stored = tf.cast(tf.io.decode_png(record['label'], channels=1)[..., 0],
                     tf.int32)
    checks = (_assert_label_ok(name, record, image, stored, valid)
              if check_labels else [])
    with tf.control_dependencies(checks):
      label = tf.gather(table, stored)
    return {'image': image, 'label': label}

  return source_lib.Source(
      name=name, split=split, num_examples=num_examples,
      num_classes=len(class_names), class_names=tuple(class_names),
      ignore_index=ignore_index, read=read, decode=decode,
      lookup=lookup if in_memory else None)
