"""Runs the training step on 1 and on 8 simulated CPU devices (a subprocess).

Used by tests/test_parallel.py: XLA_FLAGS must be set before JAX starts, so
this runs in its own process and prints a JSON report of the differences.
"""

import json
import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from kdseg import connectors
from kdseg import forward
from kdseg import models
from kdseg import optim
from kdseg import parallel
from kdseg import stages as stages_lib
from kdseg import teachers as teachers_lib
from kdseg import terms as terms_lib
from kdseg import train_state as state_lib
from kdseg import train_step as step_lib

sys.path.insert(0, os.path.dirname(__file__))
from conftest import make_tiny_config  # pylint: disable=g-import-not-at-top


def main():
  assert jax.device_count() == 8, jax.devices()
  config = make_tiny_config(**{'train.batch_size': 8})
  num_classes, size = 4, 32
  # LR-ASPP has no dropout, whose masks depend on the device layout.
  student = models.create('tiny_lraspp', num_classes=num_classes,
                          axis_name=parallel.AXIS)
  teacher = models.create('tiny_deeplabv3', num_classes=num_classes)
  teacher_vars = state_lib.init_variables(teacher, jax.random.PRNGKey(1),
                                          (size, size, 3))
  lr_fn = optim.create_learning_rate_fn(config)
  temp_fn = stages_lib.temperature_fn(stages_lib.resolve(config)[0])
  tx = optim.create_optimizer(config, lr_fn)
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(2):
    labels = rng.integers(0, num_classes, size=(8, size, size)).astype(np.int32)
    labels[:3, :5] = 255  # Uneven counted pixels across devices.
    batches.append({'image': rng.normal(size=(8, size, size, 3)).astype(
        np.float32), 'label': labels})
  # A feature term through an adapter (16 -> 32 channels, batch norm over
  # the global batch): its per-device values are averaged over devices.
  config.loss.terms = {'fit': {'loss': 'logits_mse', 'student': 'stage3',
                               'teacher': 'layer3'}}
  terms = stages_lib.terms(stages_lib.resolve(config)[0], ('teacher',))
  adapters = connectors.create(connectors.plan(
      (t, *terms_lib.map_shapes(
          t, forward.output_shapes(student, (size, size, 3)),
          {'teacher': forward.output_shapes(teacher, (size, size, 3))}))
      for t in terms), axis_name=parallel.AXIS)
  step_fn = step_lib.make_train_step(
      student, tx, lr_fn=lr_fn, temperature_fn=temp_fn,
      loss_config=config.loss, teachers=teachers_lib.TeacherSet.single(teacher),
      terms=terms, connectors=adapters)
  init = lambda: state_lib.create_train_state(student, tx,
                                              jax.random.PRNGKey(0),
                                              (size, size, 3),
                                              connectors=adapters)
  results = {}
  for name, devices in (('one', jax.devices()[:1]), ('eight', jax.devices())):
    mesh = parallel.make_mesh(devices)
    fn = parallel.map_over_devices(step_fn, mesh, batch_argnums=(1,),
                                   num_args=3)
    state = parallel.replicate(init(), mesh)
    tv = parallel.replicate({'teacher': teacher_vars}, mesh)
    losses = []
    for batch in batches:
      state, metrics = fn(state, parallel.shard_batch(batch, mesh), tv)
      losses.append(float(metrics['loss']))
    results[name] = (losses, jax.device_get(
        (state.params, state.connector_params)), jax.device_get(
            (state.batch_stats, state.connector_stats)))
  fn = parallel.pmap_over_devices(step_fn, batch_argnums=(1,), num_args=3)
  state, losses = init(), []
  for batch in batches:
    state, metrics = fn(state, batch, {'teacher': teacher_vars})
    losses.append(float(metrics['loss']))
  results['pmap'] = (losses, jax.device_get(
      (state.params, state.connector_params)), jax.device_get(
          (state.batch_stats, state.connector_stats)))

  def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                               strict=True))

  one = results['one']
  report = {'losses': {k: v[0] for k, v in results.items()}}
  for other in ('eight', 'pmap'):
    report[f'params_{other}'] = max_diff(one[1], results[other][1])
    report[f'stats_{other}'] = max_diff(one[2], results[other][2])
  fresh = init()
  report['param_change'] = max_diff(one[1][0], jax.device_get(fresh.params))
  report['connector_change'] = max_diff(
      one[1][1], jax.device_get(fresh.connector_params))
  report['fit'] = [float(metrics['fit'])]
  print(json.dumps(report))


if __name__ == '__main__':
  main()
