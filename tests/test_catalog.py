"""Tests of the catalog data sets: Oxford-IIIT Pet, Cityscapes, ADE20K.

Pet and Cityscapes run on `tfds.testing.mock_data` with hand-made records
(the real data sets are gigabytes and need downloads); the expected labels
come from tables written out here, independently of kdseg's. ADE20K is
prepared by kdseg itself, from a tiny ADEChallengeData2016-like folder.
"""

import contextlib
import os

import numpy as np
import pytest

from kdseg import data
from kdseg.data import __main__ as data_cli
from kdseg.data import ade20k
from kdseg.data import catalog
from kdseg.data import tf_setup

tf = tf_setup.import_tensorflow()
# pylint: disable-next=g-import-not-at-top,g-bad-import-order
import tensorflow_datasets as tfds

# The Cityscapes label table: (name, label id, training class or None).
CITYSCAPES_LABELS = [
    ('unlabeled', 0, None), ('ego vehicle', 1, None),
    ('rectification border', 2, None), ('out of roi', 3, None),
    ('static', 4, None), ('dynamic', 5, None), ('ground', 6, None),
    ('road', 7, 0), ('sidewalk', 8, 1), ('parking', 9, None),
    ('rail track', 10, None), ('building', 11, 2), ('wall', 12, 3),
    ('fence', 13, 4), ('guard rail', 14, None), ('bridge', 15, None),
    ('tunnel', 16, None), ('pole', 17, 5), ('polegroup', 18, None),
    ('traffic light', 19, 6), ('traffic sign', 20, 7),
    ('vegetation', 21, 8), ('terrain', 22, 9), ('sky', 23, 10),
    ('person', 24, 11), ('rider', 25, 12), ('car', 26, 13),
    ('truck', 27, 14), ('bus', 28, 15), ('caravan', 29, None),
    ('trailer', 30, None), ('train', 31, 16), ('motorcycle', 32, 17),
    ('bicycle', 33, 18)]


def _png(array):
  array = np.asarray(array, np.uint8)
  return tf.io.encode_png(array[..., None] if array.ndim == 2 else
                          array).numpy()


def _image(height, width, seed):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3),
                                              dtype=np.uint8)


def _write_metadata(meta_dir, name, splits, config=None):
  """Writes the metadata of `name` prepared with {split: num_examples}."""
  builder = tfds.builder(name, config=config, data_dir=str(meta_dir))
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0)
      for split, n in splits.items()]))
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)


@contextlib.contextmanager
def _mock(meta_dir, records_by_split):
  """TFDS mocked to serve {split: {feature: [values]}} as stored records."""
  requested = []

  def as_dataset(self, split, decoders=None, read_config=None,
                 shuffle_files=False):
    del self, read_config, shuffle_files
    requested.append((str(split), sorted(decoders)))
    return tf.data.Dataset.from_tensor_slices(records_by_split[str(split)])

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=str(meta_dir),
                              as_dataset_fn=as_dataset):
    yield requested


def _decoded(source):
  return [{k: v.numpy() for k, v in source.decode(r).items()}
          for r in source.read()]


# Oxford-IIIT Pet.


def _pet_records(trimaps, seed=0):
  images = [_image(*t.shape, seed + i) for i, t in enumerate(trimaps)]
  return images, {
      'image': [tf.io.encode_jpeg(image).numpy() for image in images],
      'segmentation_mask': [_png(t) for t in trimaps],
      'file_name': [f'pet_{seed + i}.jpg' for i in range(len(trimaps))],
      'label': list(range(len(trimaps)))}


def test_pet_trimap_classes(tmp_path):
  rng = np.random.default_rng(0)
  trimaps = [rng.integers(1, 4, (5, 7)), rng.integers(1, 4, (3, 4))]
  _, train = _pet_records(trimaps)
  _write_metadata(tmp_path, 'oxford_iiit_pet', {'train': 2, 'test': 1})
  with _mock(tmp_path, {'train': train}) as requested:
    source = data.get_source('oxford_iiit_pet', 'train',
                             data_dir=str(tmp_path / 'unused'))
    border_ignored = data.get_source('oxford_iiit_pet', 'train',
                                     ignore_border=True, ignore_index=-1)
    examples = _decoded(source)
    two_class = _decoded(border_ignored)
    record = source.lookup(tf.constant(1, tf.int64))
  assert record['file_name'].numpy() == b'pet_1.jpg'
  assert requested[0] == ('train', ['image', 'segmentation_mask'])
  assert source.num_examples == 2  # From the prepared metadata.
  assert source.class_names == ('pet', 'background', 'border')
  assert border_ignored.class_names == ('pet', 'background')
  for trimap, example, two in zip(trimaps, examples, two_class):
    # 1 = pet, 2 = background, 3 = border.
    want = np.choose(trimap - 1, [0, 1, 2])
    np.testing.assert_array_equal(example['label'], want)
    np.testing.assert_array_equal(two['label'],
                                  np.where(trimap == 3, -1, want))
    assert example['image'].shape == (*trimap.shape, 3)


def test_pet_bad_values_and_sizes_name_the_file(tmp_path):
  good = np.ones((4, 4), np.uint8)
  bad = good.copy()
  bad[0, :2] = (0, 7)
  _, records = _pet_records([good, bad, good])
  # The last trimap does not fit its image.
  records['segmentation_mask'][2] = _png(np.ones((2, 2), np.uint8))
  _write_metadata(tmp_path, 'oxford_iiit_pet', {'train': 3})
  with _mock(tmp_path, {'train': records}):
    source = catalog.make_pet_source('train')
    # As the pipelines meet them: inside tf.data.
    examples = source.as_dataset().as_numpy_iterator()
    next(examples)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r'label values other than 1\.\.3 in\] '
                       r'\[pet_1\.jpg\] \[unknown values:\] \[0 7\]'):
      next(examples)
    examples = source.read().skip(2).map(source.decode).as_numpy_iterator()
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r'sizes differ .*\[pet_2\.jpg\] \[image\] '
                       r'\[4 4\] \[label\] \[2 2\]'):
      next(examples)


def test_pet_manual_dir_without_archives(tmp_path):
  os.makedirs(tmp_path / 'pets')
  (tmp_path / 'pets' / 'images.tar.gz').write_bytes(b'')
  with pytest.raises(ValueError, match=r"lacks \['annotations\.tar\.gz'\]"
                     r"(.|\n)*Expected:(.|\n)*images\.tar\.gz "):
    catalog.make_pet_source('train', manual_dir=str(tmp_path / 'pets'),
                            data_dir=str(tmp_path / 'tfds'))
  assert not os.path.exists(tmp_path / 'tfds' / 'oxford_iiit_pet' / '4.0.0')


# Cityscapes.


def test_cityscapes_train_ids(tmp_path):
  rng = np.random.default_rng(1)
  ids = [rng.integers(0, 34, (6, 10)) for _ in range(2)]
  ids[0][0, :34] = np.arange(34)[:10]  # Many ids in one row for sure.
  records = {
      'image_left': [_png(_image(6, 10, i)) for i in range(2)],
      'segmentation_label': [_png(i) for i in ids],
      'image_id': ['aachen_000000_000019', 'bonn_000001_000019']}
  _write_metadata(tmp_path, 'cityscapes',
                  {'train': 2, 'validation': 2, 'test': 2},
                  config='semantic_segmentation')
  with _mock(tmp_path, {'validation': records}) as requested:
    source = data.get_source('cityscapes', 'val', manual_dir=None)
    examples = _decoded(source)
  assert requested[0][0] == 'validation'
  assert source.split == 'val'
  assert source.num_classes == 19
  names = [name for name, _, train_id in CITYSCAPES_LABELS
           if train_id is not None]
  assert list(source.class_names) == names
  table = np.full(256, 255)
  for _, label_id, train_id in CITYSCAPES_LABELS:
    if train_id is not None:
      table[label_id] = train_id
  for label_ids, example in zip(ids, examples):
    np.testing.assert_array_equal(example['label'], table[label_ids])
    assert example['image'].shape == (6, 10, 3)


def test_cityscapes_unknown_id_names_the_image(tmp_path):
  ids = np.full((2, 3), 7, np.uint8)
  ids[1, 1] = 40
  records = {'image_left': [_png(_image(2, 3, 0))],
             'segmentation_label': [_png(ids)],
             'image_id': ['bonn_000001_000019']}
  _write_metadata(tmp_path, 'cityscapes', {'train': 1},
                  config='semantic_segmentation')
  with _mock(tmp_path, {'train': records}):
    source = catalog.make_cityscapes_source('train')
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r'cityscapes: label values other than 0\.\.33 '
                       r'in\] \[bonn_000001_000019\] \[unknown values:\] '
                       r'\[40\]'):
      list(source.as_dataset())


def test_cityscapes_needs_the_zips(tmp_path):
  with pytest.raises(ValueError, match=r'not prepared(.|\n)*manual_dir'
                     r'(.|\n)*gtFine_trainvaltest\.zip'):
    catalog.make_cityscapes_source('train', data_dir=str(tmp_path / 'tfds'))
  os.makedirs(tmp_path / 'downloads')
  (tmp_path / 'downloads' / 'leftImg8bit_trainvaltest.zip').write_bytes(b'')
  with pytest.raises(ValueError, match=r"lacks \['gtFine_trainvaltest\.zip'\]"
                     r"(.|\n)*Expected:(.|\n)*leftImg8bit_trainvaltest\.zip"):
    catalog.make_cityscapes_source('train',
                                   manual_dir=str(tmp_path / 'downloads'),
                                   data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(ValueError, match='valid splits'):
    data.get_source('cityscapes', 'validation')


# ADE20K (SceneParse150), prepared by kdseg.


def _write_ade(root, split_folder, masks):
  for i, mask in enumerate(masks):
    stem = f'ADE_{split_folder[:5]}_{i + 1:08d}'
    for sub, array, encode in (
        ('images', _image(*mask.shape, i), tf.io.encode_jpeg),
        ('annotations', mask[..., None].astype(np.uint8), tf.io.encode_png)):
      folder = os.path.join(root, sub, split_folder)
      os.makedirs(folder, exist_ok=True)
      suffix = '.jpg' if sub == 'images' else '.png'
      tf.io.write_file(os.path.join(folder, stem + suffix), encode(array))
  return str(root)


def test_ade20k_classes(tmp_path):
  rng = np.random.default_rng(2)
  train = [rng.integers(0, 151, (5, 6)) for _ in range(2)]
  train[0][0, :3] = (0, 1, 150)
  val = [rng.integers(0, 151, (4, 4))]
  root = tmp_path / 'ADEChallengeData2016'
  _write_ade(root, 'training', train)
  _write_ade(root, 'validation', val)
  kwargs = dict(manual_dir=str(root), data_dir=str(tmp_path / 'tfds'))
  source = data.get_source('scene_parse150', 'train', **kwargs)
  assert source.num_classes == 150
  assert source.class_names[:3] == ('wall', 'building', 'sky')
  assert source.class_names[12] == 'person'
  assert source.class_names[149] == 'flag'
  assert len(set(source.class_names)) == 150
  for mask, example in zip(train, _decoded(source)):
    np.testing.assert_array_equal(example['label'],
                                  np.where(mask == 0, 255, mask - 1))
  val_source = data.get_source('scene_parse150', 'val', ignore_index=-1,
                               data_dir=kwargs['data_dir'])  # Prepared.
  np.testing.assert_array_equal(_decoded(val_source)[0]['label'],
                                np.where(val[0] == 0, -1, val[0] - 1))


def test_ade20k_bad_value_and_layout(tmp_path):
  root = tmp_path / 'ADEChallengeData2016'
  mask = np.ones((3, 3), np.uint8)
  mask[1, 1] = 151
  _write_ade(root, 'training', [np.ones((3, 3)), mask])
  data_dir = str(tmp_path / 'tfds')
  with pytest.raises(ValueError, match=r'ADE_train_00000002\.png: mask values '
                     r'\[151\]'):
    ade20k.make_source('train', manual_dir=str(root), data_dir=data_dir)
  dataset_dir = os.path.join(data_dir, 'ade20k_scene_parsing')
  assert not os.path.isdir(dataset_dir) or not os.listdir(dataset_dir)
  with pytest.raises(ValueError, match=r'Neither images/training/(.|\n)*'
                     r'ADEChallengeData2016(.|\n)*annotations/training/'):
    ade20k.make_source('train', manual_dir=str(tmp_path), data_dir=data_dir)
  with pytest.raises(ValueError, match='not prepared'):
    ade20k.make_source('train', data_dir=data_dir)


def test_cli_requires_manual_dir_for_manual_data_sets(capsys):
  for name in ('cityscapes', 'scene_parse150'):
    with pytest.raises(SystemExit):
      data_cli.main(['--dataset', name])
    assert f'--manual-dir is required for {name}' in capsys.readouterr().err


def test_registry_lists_the_catalog():
  assert {'oxford_iiit_pet', 'cityscapes', 'scene_parse150',
          'segmentation_folder'} <= set(data.list_sources())
  assert data.list_splits('oxford_iiit_pet') == ['train', 'test']
  assert data.list_splits('scene_parse150') == ['train', 'val']
  assert data.has_fixed_splits('cityscapes')
  assert not data.has_fixed_splits('segmentation_folder')
  with pytest.raises(ValueError, match='pass its kwargs'):
    data.list_splits('segmentation_folder')
