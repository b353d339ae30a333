"""Mode 'export': the student as a TensorFlow SavedModel.

The student (`config.model`) is restored from the workdir's checkpoint with
`kdseg.build.restore_student`, which reads the student's variables and
nothing else (no teacher, no distillation connectors). `jax2tf` serializes
`kdseg.inference.segment` natively (StableHLO, lowered for
`export.platforms`) behind a serving signature

  serving_default(images: uint8 [N, H, W, 3]) -> {'classes': int32 [N, H, W]}

with N free and (H, W) = `export.resolution`; normalisation happens inside.
The weights are TensorFlow variables of the SavedModel, not constants of its
graph. The exported model is then loaded back and run on
`export.num_check_images` images of the eval split, and its class maps are
compared with the JAX student's: the share of equal pixels is printed and
written to `<workdir>/export.json`. TFLite is not produced: natively
serialized functions are XLA calls, which the TFLite converter cannot take.
"""

import json
import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from kdseg import build
from kdseg.data import tf_setup
from kdseg import inference
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


def check_images(config: ml_collections.ConfigDict, size: Sequence[int],
                 num_images: int) -> np.ndarray:
  """uint8 [N, H, W, 3]: eval-split images resized (bilinear) to `size`."""
  tf = tf_setup.import_tensorflow()
  source = build.split_source(config)
  images = []
  for _, image, _ in predict.split_examples(source, num_images):
    if image.shape[:2] != tuple(size):
      image = tf.image.resize(image, size, method='bilinear').numpy()
      image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    images.append(image)
  return np.stack(images)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Exports and checks the student; returns what export.json holds."""
  spec = config.export
  size = resolution(config)
  directory = os.path.abspath(spec.dir or os.path.join(workdir, 'export'))
  checks = 'cpu' in spec.platforms
  # Steps: restore, convert and save, check.
  bar = progress.bar(total=3 if checks else 2, desc='export',
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
  if checks:
    images = check_images(config, size, spec.num_check_images)
    exported = run_saved_model(directory, images)
    # The reference runs on the CPU too, so that both sides use one backend.
    with jax.default_device(jax.devices('cpu')[0]):
      expected = np.asarray(inference.jit_segment(
          model, jax.device_put(variables, jax.devices('cpu')[0]), images))
    result['agreement'] = float(np.mean(exported == expected))
    result['num_check_images'] = len(images)
    message = (f'SavedModel vs JAX student: {100 * result["agreement"]:.4f}% '
               f'of pixels agree on {len(images)} images.')
    bar.update(1)
  else:
    message = "No check: the SavedModel was not lowered for 'cpu'."
  bar.close()
  progress.write(f'Exported {config.model.name} (step {meta.get("step")}) '
                 f'to {directory}.')
  progress.write(message)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'export.json'), 'w') as f:
      json.dump(result, f, indent=1)
  return result
