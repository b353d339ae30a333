"""Tests of `segmentation_folder`: pairing, mask coding, preparation, errors.

Every test builds a tiny folder of PNGs in tmp; the expected labels are
computed with NumPy from the arrays written, not through kdseg.
"""

import glob
import json
import os
import re

import numpy as np
import pytest

from kdseg import data
from kdseg.data import __main__ as data_cli
from kdseg.data import folder
from kdseg.data import image_files
from kdseg.data import source_files
from kdseg.data import tf_setup
from kdseg.data import tfds_source

tf = tf_setup.import_tensorflow()

CLASSES = ['background', 'lesion', 'tool']


def _write_png(path, array, bit_depth=8):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  array = np.asarray(array, np.uint16 if bit_depth == 16 else np.uint8)
  if array.ndim == 2:
    array = array[..., None]
  tf.io.write_file(path, tf.io.encode_png(array))


def _image(height=6, width=8, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3),
                                              dtype=np.uint8)


def _mask(height=6, width=8, seed=0, values=(0, 1, 2)):
  return np.random.default_rng(seed + 100).choice(
      np.array(values, np.uint8), size=(height, width))


def _make_folder(root, pairs, split=None, mask_suffix=''):
  """Writes {stem: (image, mask)} under root/images[/split], root/masks."""
  sub = [split] if split else []
  for stem, (image, mask) in pairs.items():
    _write_png(os.path.join(root, 'images', *sub, stem + '.png'), image)
    _write_png(os.path.join(root, 'masks', *sub, stem + mask_suffix + '.png'),
               mask)
  return str(root)


def _labels(source):
  return [source.decode(r)['label'].numpy() for r in source.read()]


def _assert_nothing_prepared(data_dir):
  """No config folder with a version folder or temporary leftovers."""
  dataset_dir = os.path.join(data_dir, folder.NAME)
  if os.path.isdir(dataset_dir):
    for config in os.listdir(dataset_dir):
      assert not os.listdir(os.path.join(dataset_dir, config)), config


# Reading and coding of mask files.


def test_read_mask_formats(tmp_path):
  grey = np.array([[0, 1], [2, 255]], np.uint8)
  _write_png(str(tmp_path / 'grey.png'), grey)
  np.testing.assert_array_equal(image_files.read_mask(
      str(tmp_path / 'grey.png')), grey)
  deep = np.array([[0, 1], [300, 65535]], np.uint16)
  _write_png(str(tmp_path / 'deep.png'), deep, bit_depth=16)
  np.testing.assert_array_equal(image_files.read_mask(
      str(tmp_path / 'deep.png')), deep)
  # Channels that agree are one value per pixel.
  _write_png(str(tmp_path / 'rgb.png'), np.repeat(grey[..., None], 3, -1))
  np.testing.assert_array_equal(image_files.read_mask(
      str(tmp_path / 'rgb.png')), grey)


def test_read_mask_low_bit_depth_and_palette(tmp_path):
  pil = pytest.importorskip('PIL.Image')
  binary = np.array([[0, 1, 1], [1, 0, 0]], bool)
  pil.fromarray(binary).save(tmp_path / 'one_bit.png')
  assert open(tmp_path / 'one_bit.png', 'rb').read()[24] == 1  # Bit depth.
  np.testing.assert_array_equal(
      image_files.read_mask(str(tmp_path / 'one_bit.png')), binary)
  indices = np.array([[0, 1, 2], [3, 0, 21]], np.uint8)
  palette = pil.fromarray(indices, mode='P')
  palette.putpalette([value for i in range(256) for value in (i, 255 - i, 7)])
  palette.save(tmp_path / 'palette.png')
  np.testing.assert_array_equal(
      image_files.read_mask(str(tmp_path / 'palette.png')), indices)


def test_colour_and_jpeg_masks_are_refused(tmp_path):
  colours = np.zeros((2, 2, 3), np.uint8)
  colours[0, 0] = (128, 0, 0)
  _write_png(str(tmp_path / 'colour.png'), colours)
  with pytest.raises(ValueError, match=r'colour\.png is a colour mask \(2 '
                     r'colours'):
    image_files.read_mask(str(tmp_path / 'colour.png'))
  tf.io.write_file(str(tmp_path / 'mask.png'),
                   tf.io.encode_jpeg(np.zeros((2, 2, 1), np.uint8)))
  with pytest.raises(ValueError, match=r'mask\.png is not a PNG file'):
    image_files.read_mask(str(tmp_path / 'mask.png'))


def test_mask_coding():
  mask = np.array([[0, 255, 7], [7, 0, 0]], np.uint16)
  coding = image_files.MaskCoding(num_classes=2, ignore_index=-1,
                                  value_map=((0, 0), (7, 1), (255, -1)))
  np.testing.assert_array_equal(coding.encode(mask, 'm.png'),
                                [[0, 255, 1], [1, 0, 0]])
  with pytest.raises(ValueError, match=r'm\.png: mask values \[3\] are not '
                     r'listed in value_map.*values found: \[0, 3\]'):
    coding.encode(np.array([[0, 3]]), 'm.png')
  plain = image_files.MaskCoding(num_classes=3)
  with pytest.raises(ValueError, match=r'x\.png: mask values \[3, 9\]'):
    plain.encode(np.array([[0, 3, 255, 9]]), 'x.png')
  with pytest.raises(ValueError, match='ignore_index 1 is one of the classes'):
    image_files.MaskCoding(num_classes=2, ignore_index=1)
  with pytest.raises(ValueError, match='sends mask value 5 to 9'):
    image_files.MaskCoding(num_classes=2, value_map=((5, 9),))


def test_value_map_from_config_forms():
  expected = ((0, 0), (255, 1))
  assert image_files.normalize_value_map({'255': 1, '0': 0}) == expected
  assert image_files.normalize_value_map([[255, 1], [0, 0]]) == expected
  with pytest.raises(ValueError, match='twice'):
    image_files.normalize_value_map([(0, 0), (0, 1)])


# Preparing folders.


def test_flat_folder_with_value_map_and_holdout(tmp_path):
  # Binary masks saved as 0/255, 128 = unsure (ignored).
  masks = {f'case{i}': _mask(seed=i, values=(0, 128, 255)) for i in range(5)}
  root = _make_folder(tmp_path / 'polyps', {
      stem: (_image(seed=i), mask)
      for i, (stem, mask) in enumerate(masks.items())})
  kwargs = dict(root=root, class_names='background,polyp', ignore_index=-1,
                value_map={0: 0, 255: 1, 128: -1},
                data_dir=str(tmp_path / 'tfds'))
  source = data.get_source('segmentation_folder', 'train', **kwargs)
  assert (source.num_examples, source.num_classes) == (5, 2)
  assert source.class_names == ('background', 'polyp')
  assert source.ignore_index == -1
  expected = [np.select([m == 0, m == 255], [0, 1], -1) for m in masks.values()]
  for got, want in zip(_labels(source), expected):
    np.testing.assert_array_equal(got, want)
  names = [r['file_name'].decode() for r in source.read().as_numpy_iterator()]
  assert names == [f'case{i}.png' for i in range(5)]
  images = [source.decode(r)['image'].numpy() for r in source.read()]
  np.testing.assert_array_equal(images[3], _image(seed=3))
  # A flat folder has one split; TFDS slices hold out part of it.
  assert data.list_splits('segmentation_folder', **kwargs) == ['train']
  held_out = data.get_source('segmentation_folder', 'train[80%:]', **kwargs)
  assert held_out.num_examples == 1
  np.testing.assert_array_equal(_labels(held_out)[0], expected[4])
  with pytest.raises(ValueError, match=r"no split 'val'.*\['train'\]"):
    data.get_source('segmentation_folder', 'val', **kwargs)


def test_split_folders_suffix_and_random_access(tmp_path):
  pairs = {'train': {'a': (_image(seed=1), _mask(seed=1)),
                     'b': (_image(seed=2), _mask(seed=2))},
           'val': {'c': (_image(seed=3), _mask(seed=3, values=(0, 2, 255)))}}
  root = tmp_path / 'scans'
  for split, split_pairs in pairs.items():
    _make_folder(root, split_pairs, split=split, mask_suffix='_mask')
  kwargs = dict(image_dir=str(root / 'images'), mask_dir=str(root / 'masks'),
                mask_suffix='_mask', class_names=CLASSES,
                data_dir=str(tmp_path / 'tfds'))
  assert data.list_splits('segmentation_folder', **kwargs) == ['train', 'val']
  train = data.get_source('segmentation_folder', 'train', **kwargs)
  val = data.get_source('segmentation_folder', 'val', **kwargs)
  assert (train.num_examples, val.num_examples) == (2, 1)
  # Mask values are the classes, 255 the ignore index.
  np.testing.assert_array_equal(_labels(val)[0], pairs['val']['c'][1])
  records = list(train.read().as_numpy_iterator())
  for index in (1, 0):
    record = train.lookup(tf.constant(index, tf.int64))
    assert record['file_name'].numpy() == records[index]['file_name']
    assert record['label'].numpy() == records[index]['label']
  batch = next(data.build_train_dataset(
      train, batch_size=2, crop_size=(4, 4), seed=0).as_numpy_iterator())
  assert batch['label'].shape == (2, 4, 4)
  assert set(np.unique(batch['label']).tolist()) <= {0, 1, 2, 255}


def test_images_converted_to_rgb(tmp_path):
  grey = np.arange(48, dtype=np.uint8).reshape(6, 8, 1)
  rgba = np.concatenate([_image(seed=5), np.full((6, 8, 1), 9, np.uint8)], -1)
  root = tmp_path / 'mixed'
  _write_png(str(root / 'images' / 'grey.png'), grey)
  _write_png(str(root / 'images' / 'rgba.png'), rgba)
  tf.io.write_file(str(root / 'images' / 'photo.jpg'),
                   tf.io.encode_jpeg(_image(seed=6), quality=100))
  for stem in ('grey', 'rgba', 'photo'):
    _write_png(str(root / 'masks' / f'{stem}.png'), _mask())
  source = folder.make_source('train', root=str(root), class_names=CLASSES,
                              data_dir=str(tmp_path / 'tfds'))
  images = {r['file_name'].numpy().decode(): source.decode(r)['image'].numpy()
            for r in source.read()}
  np.testing.assert_array_equal(images['grey.png'], np.repeat(grey, 3, -1))
  np.testing.assert_array_equal(images['rgba.png'], rgba[..., :3])
  # The JPEG is stored as it was, not decoded and re-encoded.
  jpeg = open(root / 'images' / 'photo.jpg', 'rb').read()
  record = next(r for r in source.read().as_numpy_iterator()
                if r['file_name'] == b'photo.jpg')
  assert record['image'] == jpeg
  np.testing.assert_array_equal(images['photo.jpg'],
                                tf.io.decode_jpeg(jpeg).numpy())


def test_folders_and_codings_do_not_collide(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  first = _make_folder(tmp_path / 'one' / 'data', {'a': (_image(), _mask())})
  second = _make_folder(tmp_path / 'two' / 'data',
                        {'a': (_image(), _mask()), 'b': (_image(), _mask())})
  assert folder.make_source('train', root=first, class_names=CLASSES,
                            data_dir=data_dir).num_examples == 1
  assert folder.make_source('train', root=second, class_names=CLASSES,
                            data_dir=data_dir).num_examples == 2
  remapped = folder.make_source('train', root=first, class_names=CLASSES[:2],
                                value_map={0: 0, 1: 1, 2: 255},
                                data_dir=data_dir)
  np.testing.assert_array_equal(
      _labels(remapped)[0], np.where(_mask() == 2, 255, _mask()))
  configs = sorted(os.listdir(os.path.join(data_dir, folder.NAME)))
  assert len(configs) == 3
  assert all(re.fullmatch(r'data_[0-9a-f]{12}', c) for c in configs)


def test_changed_folder_is_noticed(tmp_path):
  root = _make_folder(tmp_path / 'grow', {'a': (_image(), _mask())})
  kwargs = dict(root=root, class_names=CLASSES, data_dir=str(tmp_path / 't'))
  assert folder.make_source('train', **kwargs).num_examples == 1
  _make_folder(tmp_path / 'grow', {'b': (_image(), _mask())})
  with pytest.raises(ValueError, match=r"changed since.*now \{'train': 2\}, "
                     r"prepared \{'train': 1\}.*delete"):
    folder.make_source('train', **kwargs)


def test_mask_edited_after_preparation_is_noticed(tmp_path):
  root = _make_folder(tmp_path / 'edit', {'a': (_image(), _mask())})
  kwargs = dict(root=root, class_names=CLASSES, data_dir=str(tmp_path / 't'))
  assert folder.make_source('train', **kwargs).num_examples == 1
  assert folder.make_source('train', **kwargs).num_examples == 1  # Unchanged.
  mask_path = os.path.join(root, 'masks', 'a.png')
  _write_png(mask_path, np.zeros_like(_mask()))  # Same pairs, new content.
  stat = os.stat(mask_path)
  os.utime(mask_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  with pytest.raises(ValueError, match=r"changed since it was prepared.*1 "
                     r"changed \(e.g. .*a.png\).*delete"):
    folder.make_source('train', **kwargs)


def test_touched_or_moved_folder_is_not_stale(tmp_path):
  # A copy or a restore changes the files' times, not their content: the
  # prepared records are still good (the content is compared by hash).
  root = _make_folder(tmp_path / 'touch', {'a': (_image(), _mask())})
  kwargs = dict(class_names=CLASSES, data_dir=str(tmp_path / 't'))
  assert folder.make_source('train', root=root, **kwargs).num_examples == 1
  for dirpath, _, names in os.walk(root):
    for name in names:
      path = os.path.join(dirpath, name)
      stat = os.stat(path)
      os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  assert folder.make_source('train', root=root, **kwargs).num_examples == 1
  # The new times are remembered: nothing is hashed again next time.
  stamps = glob.glob(os.path.join(kwargs['data_dir'], '**',
                                 source_files.STAMP_FILE), recursive=True)
  assert len(stamps) == 1
  with open(stamps[0]) as f:
    files = json.load(f)['files']
  mask = os.path.join(root, 'masks', 'a.png')
  assert files['masks/a.png'][1] == os.stat(mask).st_mtime_ns


# Bad input.


def test_bad_mask_value_names_file_and_leaves_nothing_prepared(tmp_path):
  bad = _mask()
  bad[2, 3] = 7
  bad[0, 0] = 9
  root = _make_folder(tmp_path / 'bad', {'a': (_image(), _mask()),
                                         'b': (_image(), bad)})
  data_dir = str(tmp_path / 'tfds')
  with pytest.raises(ValueError, match=r'masks/b\.png: mask values \[7, 9\] '
                     r'are not a class \(0\.\.2\) or ignore_index \(255\); '
                     r'values found: \[0, 1, 2, 7, 9\]'):
    folder.make_source('train', root=root, class_names=CLASSES,
                       data_dir=data_dir)
  _assert_nothing_prepared(data_dir)
  # Once fixed, the same data dir prepares.
  _make_folder(tmp_path / 'bad', {'b': (_image(), _mask())})
  assert folder.make_source('train', root=root, class_names=CLASSES,
                            data_dir=data_dir).num_examples == 2


def test_size_mismatch_names_file(tmp_path):
  root = _make_folder(tmp_path / 'sizes', {
      'a': (_image(), _mask()), 'b': (_image(6, 8), _mask(4, 4))})
  data_dir = str(tmp_path / 'tfds')
  with pytest.raises(ValueError, match=r'images/b\.png is 8x6 \(WxH\) but its '
                     r'mask .*masks/b\.png is 4x4'):
    folder.make_source('train', root=root, class_names=CLASSES,
                       data_dir=data_dir)
  _assert_nothing_prepared(data_dir)


def test_layout_errors_show_expected_layout(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  os.makedirs(tmp_path / 'empty' / 'images')
  with pytest.raises(ValueError, match=r'masks is not a folder(.|\n)*'
                     r'laid out as:(.|\n)*images/a\.jpg'):
    folder.make_source('train', root=str(tmp_path / 'empty'),
                       class_names=CLASSES, data_dir=data_dir)
  mixed = _make_folder(tmp_path / 'mixed', {'a': (_image(), _mask())})
  _make_folder(tmp_path / 'mixed', {'b': (_image(), _mask())}, split='train')
  with pytest.raises(ValueError, match=r'both images(.|\n)*sub-folder per '
                     r'split'):
    folder.make_source('train', root=mixed, class_names=CLASSES,
                       data_dir=data_dir)
  split_root = tmp_path / 'splits'
  _make_folder(split_root, {'a': (_image(), _mask())}, split='train')
  os.makedirs(split_root / 'images' / 'val')
  with pytest.raises(ValueError, match=r"\['val'\] .* have no counterpart"):
    folder.make_source('train', root=str(split_root), class_names=CLASSES,
                       data_dir=data_dir)
  with pytest.raises(ValueError, match='needs root'):
    folder.make_source('train', class_names=CLASSES, data_dir=data_dir)
  _assert_nothing_prepared(data_dir)


def test_unpaired_files(tmp_path):
  root = _make_folder(tmp_path / 'unpaired', {'a': (_image(), _mask())})
  _write_png(os.path.join(root, 'images', 'lonely.png'), _image())
  with pytest.raises(ValueError, match=r"^1 images .* no mask .*"
                     r"\['lonely\.png'\]\)\. Images and masks pair up"):
    folder.make_source('train', root=root, class_names=CLASSES,
                       data_dir=str(tmp_path / 'tfds'))
  os.remove(os.path.join(root, 'images', 'lonely.png'))
  _write_png(os.path.join(root, 'masks', 'stray.png'), _mask())
  with pytest.raises(ValueError, match=r"^1 masks .* no image .*"
                     r"\['stray\.png'\]\)"):
    folder.make_source('train', root=root, class_names=CLASSES,
                       data_dir=str(tmp_path / 'tfds'))


def test_leftover_temporary_folder_is_not_prepared(tmp_path):
  """A run killed mid-way leaves TFDS's temporary folder, never a dataset."""
  root = _make_folder(tmp_path / 'killed', {'a': (_image(), _mask())})
  data_dir = str(tmp_path / 'tfds')
  spec, _ = folder.make_spec(root=root, class_names=CLASSES)
  config_dir = os.path.join(data_dir, folder.NAME, spec.config_name())
  leftover = os.path.join(config_dir, 'incomplete.ABC123_1.0.0')
  os.makedirs(leftover)
  with open(os.path.join(leftover, 'dataset_info.json'), 'w') as f:
    f.write('{}')
  builder = folder.SegmentationFolder(config=folder.FolderConfig(spec),
                                      data_dir=data_dir)
  assert not builder.is_prepared()
  assert folder.make_source('train', root=root, class_names=CLASSES,
                            data_dir=data_dir).num_examples == 1
  assert os.path.isdir(os.path.join(config_dir, '1.0.0'))


def test_streamed_when_large(tmp_path, monkeypatch):
  root = _make_folder(tmp_path / 'big', {'a': (_image(), _mask())})
  monkeypatch.setattr(tfds_source, 'IN_MEMORY_MAX_BYTES', 0)
  source = folder.make_source('train', root=root, class_names=CLASSES,
                              data_dir=str(tmp_path / 'tfds'))
  assert source.lookup is None
  batch = next(data.build_train_dataset(
      source, batch_size=1, crop_size=(4, 4), seed=0).as_numpy_iterator())
  assert batch['image'].shape == (1, 4, 4, 3)


# Command line.


def _parse_counts(out):
  splits, current = {}, None
  for line in out.splitlines():
    m = re.match(r'segmentation_folder/(\w+): (\d+) examples', line)
    if m:
      current = splits[m.group(1)] = {'examples': int(m.group(2))}
      continue
    m = re.match(r'  (.+?)\s+([\d,]+)\s+[\d.]+%$', line)
    if m and current is not None:
      current[m.group(1)] = int(m.group(2).replace(',', ''))
  return splits


def test_cli_counts(tmp_path, capsys):
  masks = {'train': [_mask(seed=1, values=(0, 255)),
                     _mask(seed=2, values=(0, 255, 7))],
           'val': [_mask(seed=3, values=(0, 7))]}
  root = tmp_path / 'cli'
  for split, split_masks in masks.items():
    _make_folder(root, {f'{split}{i}': (_image(), m)
                        for i, m in enumerate(split_masks)}, split=split)
  code = data_cli.main([
      '--dataset', 'segmentation_folder', '--root', str(root),
      '--class-names', 'background,vessel', '--value-map', '0:0,255:1,7:255',
      '--data-dir', str(tmp_path / 'tfds')])
  assert code == 0
  splits = _parse_counts(capsys.readouterr().out)
  for split, split_masks in masks.items():
    stacked = np.stack(split_masks)
    assert splits[split] == {
        'examples': len(split_masks),
        'background': int(np.sum(stacked == 0)),
        'vessel': int(np.sum(stacked == 255)),
        '(ignored)': int(np.sum(stacked == 7))}


def test_cli_errors(tmp_path, capsys):
  bad = _mask()
  bad[0, 0] = 42
  root = _make_folder(tmp_path / 'clibad', {'a': (_image(), bad)})
  code = data_cli.main(['--dataset', 'segmentation_folder', '--root', root,
                        '--class-names', ','.join(CLASSES),
                        '--data-dir', str(tmp_path / 'tfds')])
  assert code == 2
  assert re.search(r'masks/a\.png: mask values \[42\]',
                   capsys.readouterr().err)
  with pytest.raises(SystemExit):
    data_cli.main(['--dataset', 'segmentation_folder', '--root', root])
  assert '--class-names is required' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    data_cli.main(['--dataset', 'segmentation_folder', '--root', root,
                   '--class-names', 'a', '--value-map', '0-1'])
  assert 'VALUE:LABEL' in capsys.readouterr().err


def test_lookup_first_used_inside_tf_data(tmp_path):
  # The records are read eagerly once, even when `lookup` is first called
  # while tf.data traces a map (the training pipeline does that): a read
  # traced into that graph would rerun for every example, and its tensors
  # could not be used outside it.
  pairs = {f'x{i}': (_image(seed=i), _mask(seed=i)) for i in range(3)}
  _make_folder(tmp_path / 'f', pairs)
  source = data.get_source(
      'segmentation_folder', 'train', root=str(tmp_path / 'f'),
      class_names=CLASSES, data_dir=str(tmp_path / 'tfds'))
  records = list(source.read().as_numpy_iterator())
  traced = tf.data.Dataset.range(3).map(lambda i: source.lookup(i)['label'])
  assert list(traced.as_numpy_iterator()) == [r['label'] for r in records]
  assert source.lookup(tf.constant(2, tf.int64))['label'].numpy() == (
      records[2]['label'])


def test_jpeg_masks_are_named_as_the_problem(tmp_path):
  from kdseg.data import image_files  # pylint: disable=g-import-not-at-top
  images, masks = tmp_path / 'images', tmp_path / 'masks'
  images.mkdir()
  masks.mkdir()
  (images / 'a.jpg').write_bytes(b'x')
  (masks / 'a.jpg').write_bytes(b'x')
  with pytest.raises(ValueError, match=r"not PNG \(e.g. \['a.jpg'\]\).*must be PNG"):
    image_files.pair_files(str(images), str(masks))
