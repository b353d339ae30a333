"""The torchvision mirrors have torchvision's parameter tensors, one for one.

Compares the multiset of parameter shapes (PyTorch OIHW kernels as HWIO) of
each mirror with torchvision's model built with random weights (no
downloads). Skips where torchvision is not installed.
"""

import collections

import jax
import jax.numpy as jnp
import pytest

from kdseg import models

tvs = pytest.importorskip(
    'torchvision.models.segmentation',
    reason='torchvision not installed (pip install torch==2.14.1 '
    'torchvision==0.29.1)')

MIRRORS = ['fcn_resnet50', 'fcn_resnet101', 'deeplabv3_resnet50',
           'deeplabv3_resnet101', 'deeplabv3_mobilenet_v3_large',
           'lraspp_mobilenet_v3_large']


def _torch_shapes(name):
  kwargs = dict(weights=None, weights_backbone=None, num_classes=21)
  if not name.startswith('lraspp'):
    kwargs['aux_loss'] = True
  model = getattr(tvs, name)(**kwargs)
  shapes = collections.Counter()
  for _, p in model.named_parameters():
    shape = tuple(p.shape)
    if len(shape) == 4:  # OIHW -> HWIO
      shape = (shape[2], shape[3], shape[1], shape[0])
    shapes[shape] += 1
  return shapes


def _kdseg_shapes(name):
  options = {} if name.startswith('lraspp') else {'aux': True}
  model = models.create(name, num_classes=21, **options)
  rng = jax.random.PRNGKey(0)
  variables = jax.eval_shape(lambda: model.init(
      {'params': rng, 'dropout': rng}, jnp.zeros((1, 64, 64, 3)), train=False))
  return collections.Counter(
      tuple(x.shape) for x in jax.tree.leaves(variables['params']))


@pytest.mark.parametrize('name', MIRRORS)
def test_parameter_tensors_match_torchvision(name):
  ours, theirs = _kdseg_shapes(name), _torch_shapes(name)
  assert ours == theirs, (
      f'only in kdseg: {list((ours - theirs).items())[:5]}; '
      f'only in torchvision: {list((theirs - ours).items())[:5]}')
