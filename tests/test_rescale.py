"""`data.rescale` and `config.data.image_scale`: examples resized on decode."""

import numpy as np
import pytest

from kdseg import build
from kdseg import data as data_lib


def _blocky_source():
  """A 4x6 one-example source."""
  # Labels constant on 2x2 blocks: halving by nearest neighbour must give
  # exactly one value per block.
  blocks = np.array([[[0, 1, 2], [3, 255, 4]]], np.uint8)
  labels = np.kron(blocks, np.ones((2, 2), np.uint8))
  images = np.zeros((1, 4, 6, 3), np.uint8) + np.array([10, 120, 250],
                                                       np.uint8)
  return data_lib.source_lib.from_arrays(
      images, labels, num_classes=5)


def test_halving_keeps_labels_exact_and_colours():
  source = _blocky_source()
  example = next(iter(data_lib.rescale(source, 0.5).as_dataset()))
  np.testing.assert_array_equal(example['label'].numpy(),
                                [[0, 1, 2], [3, 255, 4]])
  assert example['image'].dtype.name == 'uint8'
  np.testing.assert_array_equal(example['image'].numpy(),
                                np.broadcast_to([10, 120, 250], (2, 3, 3)))


def test_scale_one_is_the_source_and_bad_scale_fails():
  source = _blocky_source()
  assert data_lib.rescale(source, 1.0) is source
  with pytest.raises(ValueError, match='positive'):
    data_lib.rescale(source, 0.0)


def test_config_image_scale_reaches_the_sources():
  from conftest import make_tiny_config
  config = make_tiny_config(**{'data.image_scale': 0.5})
  train_source, val_source = build.get_sources(config)
  full = make_tiny_config()
  full_val = build.get_sources(full)[1]
  small = next(iter(val_source.as_dataset()))['label'].shape
  big = next(iter(full_val.as_dataset()))['label'].shape
  assert (small[0] * 2, small[1] * 2) == tuple(big)


def test_resize_to_a_fixed_size():
  source = data_lib.resize(_blocky_source(), (2, 3))
  example = next(iter(source.as_dataset()))
  np.testing.assert_array_equal(example['label'].numpy(),
                                [[0, 1, 2], [3, 255, 4]])
  with pytest.raises(ValueError, match='two positive integers'):
    data_lib.resize(_blocky_source(), (0, 3))


def test_config_image_size_reaches_the_sources():
  from conftest import make_tiny_config
  _, val = build.get_sources(make_tiny_config(**{'data.image_size': (8, 16)}))
  assert next(iter(val.as_dataset()))['label'].shape == (8, 16)
