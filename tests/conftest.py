"""Shared fixtures: a cut-down config that trains in seconds on a CPU."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=g-import-not-at-top

from kdseg import config as config_lib


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
