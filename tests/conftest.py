"""Shared fixtures: a cut-down config that trains in seconds on a CPU."""

import os
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One JAX compilation cache for the whole run, both xdist workers and the
# processes that tests start (they inherit the variable): most tests compile
# the same tiny programs again (a train step, an evaluation), and compiling
# is most of their time. Measured: the multi-seed compare test took 255 s
# without it and 168 s with an empty cache. Results do not change: an entry
# is found only for the same program, compile options and jax version.
os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR',
    os.path.join(tempfile.gettempdir(), f'kdseg-tests-jax-cache-{os.getuid()}'))

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from kdseg import config as config_lib

# In case a plugin imported jax before this file set the variable.
jax.config.update('jax_compilation_cache_dir',
                  os.environ['JAX_COMPILATION_CACHE_DIR'])


def make_tiny_config(**overrides):
  config = config_lib.defaults()
  config.mode = 'train'
  config.data.kwargs = {'height': 32, 'width': 32, 'num_classes': 4,
                        'num_train_examples': 32, 'num_val_examples': 8}
  config.data.crop_size = (32, 32)
  config.data.scale_range = (1.0, 1.0)
  config.model.name = 'tiny_fcn'
  config.teacher.name = 'tiny_deeplabv3'
  config.train.steps = 4
  config.train.batch_size = 4
  config.train.learning_rate = {'name': 'constant', 'value': 0.01}
  config.train.log_every = 2
  config.train.eval_every = 2
  config.train.progress_bar = False
  config.eval.batch_size = 4
  for key, value in overrides.items():
    section, _, field = key.rpartition('.')
    target = config
    for part in filter(None, section.split('.')):
      target = target[part]
    target[field] = value
  return config


@pytest.fixture
def tiny_config():
  return make_tiny_config
