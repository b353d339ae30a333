"""The torchvision mirrors have torchvision's parameter tensors, one for one.

Compares the multiset of parameter shapes (PyTorch OIHW kernels as HWIO) of
each mirror with torchvision's model built with random weights (no
downloads). torchvision runs in a subprocess: importing torch into a process
that already holds TensorFlow and XLA is not safe with every torch build.
Skips where torchvision is not installed.
"""

import collections
import importlib.util
import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from kdseg import models

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec('torchvision') is None,
    reason='torchvision not installed (pip install torch==2.14.1 '
    'torchvision==0.29.1)')

MIRRORS = ['fcn_resnet50', 'fcn_resnet101', 'deeplabv3_resnet50',
           'deeplabv3_resnet101', 'deeplabv3_mobilenet_v3_large',
           'lraspp_mobilenet_v3_large']

_TORCH_SCRIPT = textwrap.dedent('''
    import json
    import torchvision.models.segmentation as tvs
    out = {}
    for name in %r:
      kwargs = dict(weights=None, weights_backbone=None, num_classes=21)
      if not name.startswith('lraspp'):
        kwargs['aux_loss'] = True
      model = getattr(tvs, name)(**kwargs)
      shapes = []
      for _, p in model.named_parameters():
        shape = list(p.shape)
        if len(shape) == 4:  # OIHW -> HWIO
          shape = [shape[2], shape[3], shape[1], shape[0]]
        shapes.append(shape)
      out[name] = shapes
    print(json.dumps(out))
''')


@pytest.fixture(scope='module')
def torch_shapes():
  result = subprocess.run([sys.executable, '-c', _TORCH_SCRIPT % (MIRRORS,)],
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  shapes = json.loads(result.stdout.strip().splitlines()[-1])
  return {name: collections.Counter(tuple(s) for s in value)
          for name, value in shapes.items()}


def _kdseg_shapes(name):
  options = {} if name.startswith('lraspp') else {'aux': True}
  model = models.create(name, num_classes=21, **options)
  rng = jax.random.PRNGKey(0)
  variables = jax.eval_shape(lambda: model.init(
      {'params': rng, 'dropout': rng}, jnp.zeros((1, 64, 64, 3)), train=False))
  return collections.Counter(
      tuple(x.shape) for x in jax.tree.leaves(variables['params']))


@pytest.mark.parametrize('name', MIRRORS)
def test_parameter_tensors_match_torchvision(name, torch_shapes):
  ours, theirs = _kdseg_shapes(name), torch_shapes[name]
  assert ours == theirs, (
      f'only in kdseg: {list((ours - theirs).items())[:5]}; '
      f'only in torchvision: {list((theirs - ours).items())[:5]}')
