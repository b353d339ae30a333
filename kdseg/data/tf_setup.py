"""Imports TensorFlow for input pipelines without letting it claim accelerators.

TensorFlow is only used on the host for tf.data. If it saw the GPUs/TPUs it
would pre-allocate their memory and fight JAX for it, so every kdseg data
module obtains TensorFlow through `import_tensorflow()`, which hides them first.
"""

import functools


@functools.cache
def import_tensorflow():
  """Returns the `tensorflow` module with GPUs and TPUs hidden from it.

  Hiding devices only works before TensorFlow initialises its runtime; if some
  other code already did so, the failure is ignored (nothing better can be done
  at that point and the pipeline itself runs on the CPU either way).
  """
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    # TensorFlow is an extra, so that a runtime that has one (Colab) keeps
    # it: pip cannot say "any TensorFlow distribution will do".
    raise ImportError(
        'kdseg\'s input pipeline needs TensorFlow, and none is importable '
        f'({e}). Install it with kdseg\'s "tf" extra: pip install '
        '"kdseg[tf]" (from a checkout: pip install -e ".[tf]"), or any '
        'tensorflow>=2.20 build.') from e
  for device_type in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], device_type)
    except (RuntimeError, ValueError):
      pass
  return tf
