"""Teacher logits computed once per training image, warped to every crop.

In a distillation step the frozen teacher's forward pass is most of the
work, and every epoch recomputes it on the same images. With
`config.teacher.cache`, the trainer runs the teacher once over the (decoded)
training split, whole images at the decode resolution, and stores its logits
at the teacher's own output stride in float16. The input pipeline then warps
each example's logits with exactly the random scale, crop and flip of its
image and label (`kdseg.data.transforms.warp_logits`, bilinear), and the
step reads `batch['teacher_logits']` instead of running the teacher.

The target differs from the online one in one way: the teacher saw the
whole image (more context) rather than the crop. Photometric augmentation
does not change cached targets (the teacher saw the unjittered image).

A cache is a folder `<cache_dir>/<data>_<split>_<key>/`:

  logits.f16     every example's float16 [h, w, C] logits, flat, in order
  progress.json  examples written so far (resumes an interrupted build)
  meta.json      written last: the key, shapes and byte count

The key hashes the teacher (model, options, checkpoint path and step, dtype)
and a fingerprint of the decoded examples (every image and label byte), so a
changed teacher, data set or decode resolution gets a new cache, never a stale
one. A logits file whose size differs from meta.json's is rebuilt, never read.
Several processes each cache into their own folder (`..._p<index>`).
"""

import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Optional

import jax
import numpy as np

from kdseg.data import source as source_lib
from kdseg.data import tf_setup
from kdseg.data import transforms
from kdseg import forward
from kdseg import progress

VERSION = 1
DTYPE = np.float16
LOGITS_FILE = 'logits.f16'
_BATCH = 8


def default_dir() -> str:
  """`teacher_cache/` under the data dir ($KDSEG_DATA_DIR or
  ~/tensorflow_datasets)."""
  # Imported here: tfds_source imports TensorFlow Datasets.
  from kdseg.data import tfds_source  # pylint: disable=g-import-not-at-top
  return os.path.join(tfds_source.default_data_dir(), 'teacher_cache')


def fingerprint(source: source_lib.Source) -> str:
  """SHA-1 of every decoded example's shape, image and label bytes."""
  digest = hashlib.sha1()
  for example in source.as_dataset().as_numpy_iterator():
    digest.update(np.asarray(example['image'].shape).tobytes())
    digest.update(np.ascontiguousarray(example['image']).tobytes())
    digest.update(np.ascontiguousarray(example['label']).tobytes())
  return digest.hexdigest()


def cache_key(teacher: dict[str, Any], data_fingerprint: str) -> str:
  """The cache's identity: teacher spec and checkpoint step, data, dtype."""
  blob = json.dumps({'version': VERSION, 'teacher': teacher,
                     'data': data_fingerprint,
                     'dtype': np.dtype(DTYPE).name}, sort_keys=True)
  return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _write_json(path: str, value: Any) -> None:
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + '.tmp', path)


def _read_json(path: str) -> Optional[dict]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _normalize(images: np.ndarray) -> np.ndarray:
  return ((images.astype(np.float32) - np.array(transforms.MEAN_RGB)) /
          np.array(transforms.STDDEV_RGB)).astype(np.float32)


def _valid(folder: str, key: str) -> Optional[dict]:
  """meta.json when the cache in `folder` is complete and intact."""
  meta = _read_json(os.path.join(folder, 'meta.json'))
  if meta is None or meta.get('key') != key:
    return None
  path = os.path.join(folder, LOGITS_FILE)
  if not os.path.exists(path) or os.path.getsize(path) != meta['bytes']:
    return None
  return meta


def build(folder: str, key: str, source: source_lib.Source,
          teacher_fn: Callable[[Any], Any], *,
          progress_bar: bool = True) -> dict:
  """Writes (or completes) the cache of `source` in `folder`; returns meta.

  Args:
    folder: The cache folder.
    key: `cache_key(...)`, stored in meta.json and progress.json.
    source: The decoded training split, in order.
    teacher_fn: float32 normalised images [B, H, W, 3] -> logits [B, h, w, C].
    progress_bar: Show a progress bar.
  """
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, LOGITS_FILE)
  state = _read_json(os.path.join(folder, 'progress.json'))
  if state is None or state.get('key') != key or not os.path.exists(path) \
      or os.path.getsize(path) < state['bytes']:
    state = {'key': key, 'done': 0, 'bytes': 0, 'shapes': []}
  with open(path, 'ab') as f:
    f.truncate(state['bytes'])  # Drop a chunk written after the last record.
  bar = progress.bar(total=source.num_examples, initial=state['done'],
                     desc='caching teacher logits', enabled=progress_bar)
  start = time.perf_counter()
  pending = []

  def flush():
    logits = np.asarray(jax.device_get(teacher_fn(
        _normalize(np.stack([image for image, _ in pending])))))
    with open(path, 'ab') as f:
      for row in logits.astype(DTYPE):
        f.write(row.tobytes())
        state['shapes'].append(list(row.shape))
      f.flush()
      os.fsync(f.fileno())
    state['done'] += len(pending)
    state['bytes'] = os.path.getsize(path)
    _write_json(os.path.join(folder, 'progress.json'), state)
    bar.update(len(pending))
    pending.clear()

  try:
    examples = source.as_dataset().skip(state['done']).as_numpy_iterator()
    for i, example in enumerate(examples, start=state['done']):
      image = example['image']
      if pending and image.shape != pending[0][0].shape:
        flush()
      pending.append((image, i))
      if len(pending) == _BATCH:
        flush()
    if pending:
      flush()
  finally:
    bar.close()
  if state['done'] != source.num_examples:
    raise ValueError(f'{source.name}/{source.split}: cached {state["done"]} '
                     f'examples, the source has {source.num_examples}.')
  meta = {'key': key, 'bytes': state['bytes'], 'shapes': state['shapes'],
          'dtype': np.dtype(DTYPE).name, 'num_examples': state['done'],
          'build_seconds': time.perf_counter() - start}
  _write_json(os.path.join(folder, 'meta.json'), meta)
  return meta


def ensure(folder: str, key: str, source: source_lib.Source,
           teacher_fn: Callable[[Any], Any], *,
           progress_bar: bool = True) -> dict:
  """meta of a complete, intact cache in `folder`, building it if needed."""
  meta = _valid(folder, key)
  if meta is not None:
    return meta
  stale = _read_json(os.path.join(folder, 'meta.json'))
  if stale is not None:
    # Complete once, but damaged (or another key): start again.
    progress.write(f'Teacher cache {folder} is damaged or stale '
                   '(logits file size or key differs); rebuilding it.')
    shutil.rmtree(folder)
  return build(folder, key, source, teacher_fn, progress_bar=progress_bar)


def lookup_fn(folder: str, meta: dict) -> Callable[[Any], Any]:
  """int64 index tensor -> float16 [h, w, C] logits of that example."""
  tf = tf_setup.import_tensorflow()
  shapes = np.asarray(meta['shapes'], np.int64)
  offsets = np.concatenate([[0], np.cumsum(np.prod(shapes, axis=1))])
  values = np.memmap(os.path.join(folder, LOGITS_FILE), DTYPE, 'r')
  if values.size != offsets[-1]:
    raise ValueError(f'{folder}: the logits file holds {values.size} values, '
                     f'meta.json says {offsets[-1]}; delete the folder.')

  def read(i):
    return np.asarray(values[offsets[i]:offsets[i + 1]]).reshape(shapes[i])

  def lookup(index):
    logits = tf.numpy_function(read, [index], tf.float16, stateful=False)
    logits.set_shape([None, None, int(shapes[0][-1])])
    return logits

  return lookup


def prepare(source: source_lib.Source, *, teacher_spec: dict[str, Any],
            teacher_module, teacher_variables, teacher_dtype,
            crop_size, cache_dir: str = '', progress_bar: bool = True):
  """Builds or finds the cache of `source`; returns (lookup, logits_size,
  folder).

  Args:
    source: The decoded training split (random access).
    teacher_spec: JSON-able identity of the teacher: name, options,
      checkpoint path and step, dtype.
    teacher_module, teacher_variables, teacher_dtype: The frozen teacher.
    crop_size: Training crop (h, w).
    cache_dir: Parent folder of caches; `default_dir()` when empty.
    progress_bar: Show progress bars.

  Returns:
    (lookup: int64 index -> float16 [h, w, C], logits_size: the teacher's
    output (h, w) on a crop, the size the pipeline warps to, the cache's
    folder).
  """
  key = cache_key(teacher_spec, fingerprint(source))
  name = f'{source.name}_{source.split}_{key}'.replace('/', '_')
  if jax.process_count() > 1:
    name += f'_p{jax.process_index()}'
  folder = os.path.join(cache_dir or default_dir(), name)
  teacher_fn = forward.make_teacher_forward(teacher_module, teacher_variables,
                                            dtype=teacher_dtype)
  meta = ensure(folder, key, source, lambda x: teacher_fn(x)[0],
                progress_bar=progress_bar)
  size_mib = meta['bytes'] / 2**20
  progress.write(f'Teacher logits of {meta["num_examples"]} examples cached '
                 f'in {folder} ({size_mib:.1f} MiB).')
  logits_shape, _ = forward.output_shapes(teacher_module, (*crop_size, 3))
  return lookup_fn(folder, meta), tuple(logits_shape[1:3]), folder
