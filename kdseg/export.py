"""Mode 'export': the student as a TensorFlow SavedModel and LiteRT models.

The student (`config.model`) is restored from the workdir's checkpoint with
`kdseg.build.restore_student`, which reads the student's variables and
nothing else (no teacher, no distillation connectors). `jax2tf` serializes
`kdseg.inference.segment` natively (StableHLO, lowered for
`export.platforms`) behind a serving signature

  serving_default(images: uint8 [N, H, W, 3]) -> {'classes': int32 [N, H, W]}

with N free and (H, W) = `export.resolution`; normalisation happens inside.
The weights are TensorFlow variables of the SavedModel, not constants of its
graph. Beside it, in the same folder, `kdseg.litert` writes LiteRT (TFLite)
models of the same function for one image (uint8 [1, H, W, 3] in, int32
[1, H, W] out), one per `export.tflite` format: `student_float32.tflite`
and `student_int8.tflite` (full-integer quantization calibrated on the first
`export.calibration_images` images of the training split).

The exported models are then run on `export.num_check_images` images of the
eval split: the SavedModel (when lowered for 'cpu') and each LiteRT model
are compared with the JAX student's class maps, and each one's mIoU against
the labels is computed next to the JAX student's. The shares of equal pixels
are printed and written, with the files' sizes, to `<workdir>/export.json`.
"""

import dataclasses
import json
import os
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from kdseg import build
from kdseg.data import tf_setup
from kdseg import inference
from kdseg import litert
from kdseg import metrics
from kdseg import models
from kdseg import predict
from kdseg import progress

SIGNATURE = 'serving_default'
INPUT_NAME = 'images'
OUTPUT_NAME = 'classes'


def resolution(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(H, W) of the serving signature: `export.resolution` or the crop size."""
  size = config.export.resolution or config.data.crop_size
  return int(size[0]), int(size[1])


def export_saved_model(model, variables: Any, directory: str, *,
                       size: Sequence[int],
                       platforms: Sequence[str] = ('cpu',)) -> str:
  """Writes `segment(model, variables, images)` as a SavedModel.

  Args:
    model: the segmentation model.
    variables: its {'params', 'batch_stats'}: the only weights exported.
    directory: the SavedModel folder (created or overwritten).
    size: (H, W) of the input images.
    platforms: platforms the computation is lowered for.

  Returns:
    `directory`.
  """
  tf = tf_setup.import_tensorflow()
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  height, width = (int(s) for s in size)
  weights = tf.nest.map_structure(
      lambda x: tf.Variable(np.asarray(x), trainable=False),
      jax.device_get(variables))
  converted = jax2tf.convert(
      lambda v, images: inference.segment(model, v, images),
      polymorphic_shapes=[None, f'(n, {height}, {width}, 3)'],
      native_serialization_platforms=tuple(platforms), with_gradient=False)

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None, height, width, 3], tf.uint8, name=INPUT_NAME)])
  def serve(images):
    return {OUTPUT_NAME: converted(weights, images)}

  module = tf.Module()
  # Tracked as an attribute, so that the weights are saved as variables.
  module.weights = weights
  module.serve = serve
  tf.saved_model.save(module, directory, signatures={SIGNATURE: serve})
  return directory


def run_saved_model(directory: str, images: np.ndarray) -> np.ndarray:
  """The SavedModel's class maps (int32 [N, H, W]) of uint8 `images`."""
  tf = tf_setup.import_tensorflow()
  serve = tf.saved_model.load(directory).signatures[SIGNATURE]
  return serve(**{INPUT_NAME: tf.constant(images, tf.uint8)})[
      OUTPUT_NAME].numpy()


def split_examples(config: ml_collections.ConfigDict, split: str,
                   size: Sequence[int], num_images: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """The first `num_images` examples of `split` at `size`: uint8 images
  [N, H, W, 3] (resized bilinearly) and labels [N, H, W] (nearest)."""
  tf = tf_setup.import_tensorflow()
  source = build.split_source(config, split)
  images, labels = [], []
  for _, image, label in predict.split_examples(source, num_images):
    if image.shape[:2] != tuple(size):
      image = tf.image.resize(image, size, method='bilinear').numpy()
      image = np.clip(np.round(image), 0, 255).astype(np.uint8)
      label = tf.image.resize(label[..., None], size,
                              method='nearest').numpy()[..., 0]
    images.append(image)
    labels.append(label)
  return np.stack(images), np.stack(labels)


@dataclasses.dataclass(frozen=True)
class _Check:
  """The check's eval images and labels, and the JAX student's class maps."""
  images: np.ndarray
  labels: np.ndarray
  expected: np.ndarray
  num_classes: int
  ignore_index: int

  def agreement(self, classes: np.ndarray) -> float:
    """Share of pixels where `classes` equal the JAX student's."""
    return float(np.mean(classes == self.expected))

  def miou(self, classes: np.ndarray) -> float:
    """mIoU of `classes` against the labels."""
    cm = metrics.confusion_matrix(classes, self.labels,
                                  num_classes=self.num_classes,
                                  ignore_index=self.ignore_index)
    return metrics.segmentation_metrics(cm)['miou']


def _check_set(config: ml_collections.ConfigDict, model, variables: Any,
               size: Sequence[int], num_classes: int) -> _Check:
  images, labels = split_examples(config, config.data.eval_split, size,
                                  config.export.num_check_images)
  # The reference runs on the CPU, the backend of the exported models' checks.
  with jax.default_device(jax.devices('cpu')[0]):
    expected = np.asarray(inference.jit_segment(
        model, jax.device_put(variables, jax.devices('cpu')[0]), images))
  return _Check(images, labels, expected, num_classes,
                build.split_source(config).ignore_index)


def _write_litert(config: ml_collections.ConfigDict, model, variables: Any,
                  directory: str, size: Sequence[int], check: _Check,
                  bar) -> dict[str, Any]:
  """Writes and checks `export.tflite`'s LiteRT models; their export.json
  entry."""
  spec = config.export
  for fmt in litert.FORMATS:  # None left over from an earlier export.
    stale = os.path.join(directory, f'student_{fmt}.tflite')
    if os.path.exists(stale) and jax.process_index() == 0:
      os.remove(stale)
  calibration = None
  if 'int8' in spec.tflite:
    calibration, _ = split_examples(config, config.data.train_split, size,
                                    spec.calibration_images)
  out = {'interpreter': litert.interpreter_name()}
  for fmt in spec.tflite:
    start = time.perf_counter()
    flatbuffer = litert.convert(model, variables, size=size, fmt=fmt,
                                calibration_images=calibration)
    seconds = time.perf_counter() - start
    path = os.path.join(directory, f'student_{fmt}.tflite')
    if jax.process_index() == 0:
      with open(path, 'wb') as f:
        f.write(flatbuffer)
    classes = litert.run(flatbuffer, check.images)
    out[fmt] = {'path': path, 'bytes': len(flatbuffer),
                'convert_seconds': round(seconds, 2),
                'agreement': check.agreement(classes),
                'miou': check.miou(classes)}
    if fmt == 'int8':
      out[fmt]['calibration'] = {'split': config.data.train_split,
                                 'images': len(calibration)}
      # What the converter kept in float (the input's cast, see litert).
      out[fmt]['float_tensors'] = litert.float_tensors(flatbuffer)
    bar.update(1)
  return out


def _litert_line(fmt: str, entry: dict[str, Any], check: _Check,
                 jax_miou: float) -> str:
  return (f'LiteRT {fmt} ({os.path.basename(entry["path"])}, '
          f'{entry["bytes"] / 1024:.0f} KiB) vs JAX student: '
          f'{100 * entry["agreement"]:.4f}% of pixels agree on '
          f'{len(check.images)} images; mIoU {entry["miou"]:.4f} '
          f'(JAX {jax_miou:.4f}).')


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Exports and checks the student; returns what export.json holds."""
  spec = config.export
  size = resolution(config)
  directory = os.path.abspath(spec.dir or os.path.join(workdir, 'export'))
  checks = 'cpu' in spec.platforms
  formats = tuple(spec.tflite)
  # Steps: restore, convert and save, check, one per LiteRT model.
  bar = progress.bar(total=2 + int(checks) + len(formats), desc='export',
                     enabled=config.train.progress_bar)
  num_classes, _ = build.classes(config, workdir)
  model, variables, meta = build.restore_student(config, workdir, num_classes)
  variables = {'params': variables['params'],
               'batch_stats': variables.get('batch_stats', {})}
  bar.update(1)
  export_saved_model(model, variables, directory, size=size,
                     platforms=spec.platforms)
  bar.update(1)
  result = {
      'saved_model': directory, 'signature': SIGNATURE,
      'input': f'{INPUT_NAME}: uint8 [N, {size[0]}, {size[1]}, 3]',
      'output': f'{OUTPUT_NAME}: int32 [N, {size[0]}, {size[1]}]',
      'platforms': list(spec.platforms), 'model': config.model.name,
      'step': meta.get('step'), 'num_classes': num_classes,
      'params': models.count_params(variables['params']),
  }
  messages = ["No check: the SavedModel was not lowered for 'cpu'."]
  if checks or formats:
    check = _check_set(config, model, variables, size, num_classes)
    result['num_check_images'] = len(check.images)
    result['jax_miou'] = check.miou(check.expected)
  if checks:
    result['agreement'] = check.agreement(
        run_saved_model(directory, check.images))
    messages = [f'SavedModel vs JAX student: '
                f'{100 * result["agreement"]:.4f}% of pixels agree on '
                f'{len(check.images)} images.']
    bar.update(1)
  if formats:
    result['tflite'] = _write_litert(config, model, variables, directory,
                                     size, check, bar)
    messages += [_litert_line(fmt, result['tflite'][fmt], check,
                              result['jax_miou']) for fmt in formats]
  bar.close()
  progress.write(f'Exported {config.model.name} (step {meta.get("step")}) '
                 f'to {directory}.')
  for message in messages:
    progress.write(message)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'export.json'), 'w') as f:
      json.dump(result, f, indent=1)
  return result
