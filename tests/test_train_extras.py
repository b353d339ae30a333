"""The trainer's pretrained initialisation and TensorBoard prediction panels."""

import glob
import os

import jax
import numpy as np

from conftest import make_tiny_config
from kdseg import build
from kdseg import checkpoint
from kdseg import modes
from kdseg import train
from kdseg import train_state as state_lib


def _params(workdir, config):
  model = build.create_model(config, 'model', 4)
  abstract = state_lib.abstract_variables(model, build.image_shape(config))
  variables, _ = checkpoint.restore_model_variables(workdir, abstract)
  return variables['params']


def test_init_from_starts_from_the_given_weights(tmp_path):
  source = str(tmp_path / 'source')
  config = make_tiny_config(**{'train.steps': 2})
  modes.run(config, source)
  # With a zero learning rate the run keeps whatever it started from.
  target = str(tmp_path / 'target')
  config = make_tiny_config(**{
      'train.steps': 2, 'model.init_from': source, 'seed': 7,
      'train.learning_rate': {'name': 'constant', 'value': 0.0}})
  modes.run(config, target)
  want = jax.tree.leaves(_params(source, config))
  got = jax.tree.leaves(_params(target, config))
  assert len(want) == len(got)
  for a, b in zip(want, got):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_evaluations_write_prediction_panels(tmp_path):
  tf = __import__('tensorflow')
  workdir = str(tmp_path / 'run')
  modes.run(make_tiny_config(**{'train.steps': 2}), workdir)
  images = []
  for path in glob.glob(os.path.join(workdir, 'tensorboard', '*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == 'val/predictions':
          images.append(tf.make_ndarray(value.tensor))
  assert images, 'no val/predictions image in the TensorBoard events'
  # Flax writes [width, height, *encoded PNGs]; decode the first panel.
  panel = tf.io.decode_png(images[0][2]).numpy()
  assert panel.ndim == 3 and panel.shape[-1] == 3
  assert panel.shape[0] >= 32 and panel.shape[1] >= 3 * 32
