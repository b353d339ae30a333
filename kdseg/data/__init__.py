"""Input data for kdseg: sources (datasets and splits) and tf.data pipelines.

Importing this package does not import TensorFlow; the pipelines do so lazily
through `tf_setup.import_tensorflow()`, which keeps accelerators for JAX.
"""

from typing import Any, Callable

from kdseg.data import pipeline
from kdseg.data import source as source_lib
from kdseg.data import synthetic

rescale = source_lib.rescale

Source = source_lib.Source
build_train_dataset = pipeline.build_train_dataset
build_eval_dataset = pipeline.build_eval_dataset


def _make_camvid(split: str, **kwargs: Any) -> Source:
  # Imported here because the CamVid module imports TensorFlow (Datasets),
  # which importing this package must not do.
  from kdseg.data import camvid  # pylint: disable=g-import-not-at-top
  return camvid.make_source(split, **kwargs)


# name -> (source builder taking (split, **kwargs), valid splits).
_SOURCES: dict[str, tuple[Callable[..., Source], tuple[str, ...]]] = {
    'synthetic': (synthetic.make_source, tuple(synthetic.SPLITS)),
    # CamVid's test split is optional: make_source rejects absent splits.
    'camvid': (_make_camvid, ('train', 'val', 'test')),
}


def get_source(name: str, split: str, **kwargs: Any) -> Source:
  """Returns split `split` of data set `name`.

  Args:
    name: Registered data set name; see `list_sources()`.
    split: Split name, e.g. 'train' or 'val'.
    **kwargs: Data-set specific options. 'synthetic': num_examples, height,
      width, num_classes, seed, ignore_index (see `synthetic.make_source`).
      'camvid': manual_dir, data_dir, ignore_index (see
      `camvid.make_source`).

  Raises:
    ValueError: For an unknown data set or split.
  """
  if name not in _SOURCES:
    raise ValueError(f'Unknown data set {name!r}; valid ones: '
                     f'{list_sources()}.')
  make, splits = _SOURCES[name]
  if split not in splits:
    raise ValueError(f'Unknown split {split!r} of {name!r}; valid splits: '
                     f'{list(splits)}.')
  return make(split, **kwargs)


def list_splits(name: str) -> list[str]:
  """The splits data set `name` may have (not all need to be present)."""
  if name not in _SOURCES:
    raise ValueError(f'Unknown data set {name!r}; valid ones: '
                     f'{list_sources()}.')
  return list(_SOURCES[name][1])


def list_sources() -> list[str]:
  """Names accepted by `get_source`."""
  return sorted(_SOURCES)
