"""Input data for kdseg: sources (datasets and splits) and tf.data pipelines.

Importing this package does not import TensorFlow; the pipelines do so lazily
through `tf_setup.import_tensorflow()`, which keeps accelerators for JAX.
"""

from typing import Any, Callable, Optional

from kdseg.data import decoded
from kdseg.data import pipeline
from kdseg.data import source as source_lib
from kdseg.data import synthetic

rescale = source_lib.rescale
resize = source_lib.resize

Source = source_lib.Source
build_train_dataset = pipeline.build_train_dataset
build_eval_dataset = pipeline.build_eval_dataset
decode_once = decoded.decode_once


# The builders below import TensorFlow (Datasets), which importing this
# package must not do, so each imports its module when called.


def _make_camvid(split: str, **kwargs: Any) -> Source:
  from kdseg.data import camvid  # pylint: disable=g-import-not-at-top
  return camvid.make_source(split, **kwargs)


def _make_pet(split: str, **kwargs: Any) -> Source:
  from kdseg.data import catalog  # pylint: disable=g-import-not-at-top
  return catalog.make_pet_source(split, **kwargs)


def _make_cityscapes(split: str, **kwargs: Any) -> Source:
  from kdseg.data import catalog  # pylint: disable=g-import-not-at-top
  return catalog.make_cityscapes_source(split, **kwargs)


def _make_ade20k(split: str, **kwargs: Any) -> Source:
  from kdseg.data import ade20k  # pylint: disable=g-import-not-at-top
  return ade20k.make_source(split, **kwargs)


def _make_folder(split: str, **kwargs: Any) -> Source:
  from kdseg.data import folder  # pylint: disable=g-import-not-at-top
  return folder.make_source(split, **kwargs)


def _folder_splits(**kwargs: Any) -> list[str]:
  from kdseg.data import folder  # pylint: disable=g-import-not-at-top
  return folder.list_splits(**kwargs)


# name -> (source builder taking (split, **kwargs), valid splits). Splits
# listed here may still be absent from a user's copy (make_source rejects
# those); None: the data decide (see `list_splits`).
_SOURCES: dict[str, tuple[Callable[..., Source], Optional[tuple[str, ...]]]] = {
    'synthetic': (synthetic.make_source, tuple(synthetic.SPLITS)),
    'camvid': (_make_camvid, ('train', 'val', 'test')),
    'oxford_iiit_pet': (_make_pet, ('train', 'test')),
    'cityscapes': (_make_cityscapes, ('train', 'val', 'test')),
    'scene_parse150': (_make_ade20k, ('train', 'val')),
    # Splits are the folder's split sub-folders, or one split.
    'segmentation_folder': (_make_folder, None),
}
# Split listers of the data sets whose splits the data decide.
_SPLIT_LISTERS: dict[str, Callable[..., list[str]]] = {
    'segmentation_folder': _folder_splits,
}


def _check_name(name: str):
  if name not in _SOURCES:
    raise ValueError(f'Unknown data set {name!r}; valid ones: '
                     f'{list_sources()}.')


def get_source(name: str, split: str, **kwargs: Any) -> Source:
  """Returns split `split` of data set `name`.

  Args:
    name: Registered data set name; see `list_sources()`.
    split: Split name, e.g. 'train' or 'val'.
    **kwargs: Data-set specific options. 'synthetic': num_examples, height,
      width, num_classes, seed, ignore_index (see `synthetic.make_source`).
      'camvid': manual_dir, data_dir, ignore_index (see
      `camvid.make_source`). 'oxford_iiit_pet': manual_dir, data_dir,
      ignore_index, ignore_border; 'cityscapes': manual_dir, data_dir,
      ignore_index (see `catalog`). 'scene_parse150': manual_dir, data_dir,
      ignore_index (see `ade20k.make_source`). 'segmentation_folder':
      class_names, root or image_dir and mask_dir, ignore_index, value_map,
      mask_suffix, split_name, data_dir (see `folder.make_source`).

  Raises:
    ValueError: For an unknown data set or split.
  """
  _check_name(name)
  make, splits = _SOURCES[name]
  if splits is not None and split not in splits:
    raise ValueError(f'Unknown split {split!r} of {name!r}; valid splits: '
                     f'{list(splits)}.')
  return make(split, **kwargs)


def has_fixed_splits(name: str) -> bool:
  """Whether `list_splits(name)` is known without reading the data."""
  _check_name(name)
  return _SOURCES[name][1] is not None


def list_splits(name: str, **kwargs: Any) -> list[str]:
  """The splits data set `name` may have (not all need to be present).

  For data sets whose splits the data decide (`has_fixed_splits` is False:
  'segmentation_folder'), pass the data set's kwargs: the splits are those
  of the data, which this prepares if needed.

  Raises:
    ValueError: For an unknown name, or data-decided splits without kwargs.
  """
  _check_name(name)
  splits = _SOURCES[name][1]
  if splits is not None:
    return list(splits)
  if not kwargs:
    raise ValueError(f'The splits of {name!r} are those of its data: pass its '
                     f'kwargs (config.data.kwargs) to list them.')
  return _SPLIT_LISTERS[name](**kwargs)


def list_sources() -> list[str]:
  """Names accepted by `get_source`."""
  return sorted(_SOURCES)
