"""Distillation terms, connectors, stages and several teachers.

The step-level checks rebuild every term by hand from the registry losses and
NumPy on the same forward outputs; the trainer checks run tiny 32x32 models.
"""

import importlib.util
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kdseg import build
from kdseg import checkpoint
from kdseg import config as config_lib
from kdseg import connectors
from kdseg import forward
from kdseg import losses
from kdseg import models
from kdseg import modes
from kdseg import optim
from kdseg import parallel
from kdseg import stages as stages_lib
from kdseg import teachers as teachers_lib
from kdseg import terms as terms_lib
from kdseg import train
from kdseg import train_state as state_lib
from kdseg import train_step as step_lib

SIZE, CLASSES = 32, 4


def _softmax(x, axis=-1):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _np_kd(student, target_probs, temperature, mask=None):
  """T^2 KL(p || softmax(s/T)), summed over classes, mean over counted."""
  log_q = np.log(_softmax(np.asarray(student) / temperature))
  p = np.asarray(target_probs, np.float64)
  kl = np.sum(p * (np.log(p) - log_q), axis=-1)
  mask = np.ones(kl.shape) if mask is None else mask
  return temperature**2 * np.sum(kl * mask) / np.sum(mask)


def _np_adapter(x, variables):
  """1x1 conv + batch norm in train mode (biased batch variance)."""
  x = np.asarray(x, np.float64)
  kernel = np.asarray(variables['params']['conv']['kernel'])[0, 0]
  y = x @ kernel
  mean = y.mean(axis=(0, 1, 2))
  var = y.var(axis=(0, 1, 2))
  bn = variables['params']['bn']
  return ((y - mean) / np.sqrt(var + 1e-5) * np.asarray(bn['scale'])
          + np.asarray(bn['bias']))


def _random_variables(module, seed, shape=(SIZE, SIZE, 3)):
  """Variables with random values, from shapes alone.

  Compiling a model's random initialiser costs seconds on a CPU; these
  tests need some values, not the initialiser's.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['var']"):
      return np.ones(leaf.shape, np.float32)
    if name.endswith("['mean']"):
      return np.zeros(leaf.shape, np.float32)
    scale = 1.0 / np.sqrt(max(1, np.prod(leaf.shape[:-1])))
    return (rng.normal(size=leaf.shape) * scale
            + name.endswith("['scale']")).astype(np.float32)

  return jax.tree_util.tree_map_with_path(
      fill, state_lib.abstract_variables(module, shape))


# ---------------------------------------------------------------- one step

@pytest.fixture(scope='module')
def one_step():
  """One step of a student with three terms and two teachers, at step 3."""
  from conftest import make_tiny_config
  config = make_tiny_config(**{'mode': 'distill'})
  config.loss.kd_weight = 0.7
  config.loss.temperature = {'name': 'constant', 'value': 2.0}
  config.teacher.weight = 1.0
  config.extra_teachers = {'fcn': {'name': 'tiny_fcn', 'weight': 3.0}}
  config.loss.terms = {
      # Ensemble target (both teachers), scheduled temperature.
      'soft': {'loss': 'pixel_kd', 'weight': 0.5,
               'temperature': {'name': 'linear', 'init_value': 4.0,
                               'end_value': 2.0, 'steps': 10}},
      # Same channels, [4, 4] -> [8, 8]: resized, no adapter; scheduled weight.
      'feat': {'loss': 'logits_mse', 'student': 'layer2', 'teacher': 'layer1',
               'weight': {'name': 'linear', 'init_value': 1.0,
                          'end_value': 0.0, 'steps': 10}},
      # 16 -> 32 channels: an adapter.
      'fit': {'loss': 'logits_mse', 'student': 'layer3', 'teacher': 'layer3',
              'weight': 2.0},
  }
  config_lib.validate(config, check_files=False)
  shape = (SIZE, SIZE, 3)
  student = models.create(config.model.name, num_classes=CLASSES)
  teachers = teachers_lib.TeacherSet.create({
      label: teachers_lib.Teacher(teachers_lib.create_module(spec, CLASSES),
                                  jnp.float32, spec['weight'])
      for label, spec in teachers_lib.specs(config).items()})
  teacher_vars = {label: _random_variables(t.module, i + 1)
                  for i, (label, t) in enumerate(teachers.items())}
  stage, = stages_lib.resolve(config)
  terms = stages_lib.terms(stage, tuple(teachers))
  adapters = train.create_connectors(terms, student, teachers, shape)
  lr_fn = optim.create_learning_rate_fn(config)
  tx = optim.create_optimizer(config, lr_fn)
  variables = _random_variables(student, 0)
  adapter_vars = connectors.init(adapters, jax.random.PRNGKey(0))
  state = state_lib.TrainState(
      step=jnp.asarray(3, jnp.int32), params=variables['params'],
      batch_stats=variables['batch_stats'],
      opt_state=tx.init(state_lib.join_trainable(variables['params'],
                                                 adapter_vars['params'])),
      rng=jax.random.PRNGKey(0), connector_params=adapter_vars['params'],
      connector_stats=adapter_vars['batch_stats'])
  rng = np.random.default_rng(0)
  labels = rng.integers(0, CLASSES, size=(4, SIZE, SIZE)).astype(np.int32)
  labels[0, :7] = 255
  batch = {'image': rng.normal(size=(4, *shape)).astype(np.float32),
           'label': labels}
  step_fn = step_lib.make_train_step(
      student, tx, lr_fn=lr_fn,
      temperature_fn=stages_lib.temperature_fn(stage), loss_config=stage.loss,
      teachers=teachers, terms=terms,
      connectors=adapters)
  mesh = parallel.make_mesh(jax.devices()[:1])
  mapped = parallel.map_over_devices(step_fn, mesh, batch_argnums=(1,),
                                     num_args=3)
  new_state, metrics = mapped(
      parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh),
      parallel.replicate(teacher_vars, mesh))
  # The same forward passes, outside the step.
  @jax.jit
  def forwards(state, teacher_vars, images):
    # The step's dropout key: fold_in(fold_in(rng, step), device index).
    dropout = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 0)
    s_logits, s_feats, _ = forward.student_apply(
        student, state.params, state.batch_stats, images, train=True,
        dropout_rng=dropout)
    return s_logits, s_feats, {
        label: forward.teacher_apply(t.module, teacher_vars[label], images)
        for label, t in teachers.items()}

  s_logits, s_feats, t_out = forwards(state, teacher_vars, batch['image'])
  return dict(config=config, state=state, new_state=new_state,
              metrics=jax.device_get(metrics), batch=batch, adapters=adapters,
              s_logits=s_logits, s_feats=s_feats, t_out=t_out)


def _ensemble_probs(run, temperature, size=None):
  probs = 0.0
  for label, weight in (('teacher', 0.25), ('fcn', 0.75)):
    logits = run['t_out'][label][0]
    if size is not None:
      logits = losses.resize_to(logits, size)
    probs = probs + weight * _softmax(np.asarray(logits) / temperature)
  return probs


def test_loss_is_the_sum_of_registry_losses(one_step):
  run, m = one_step, one_step['metrics']
  labels = run['batch']['label']
  s_logits = losses.resize_to(run['s_logits'], labels.shape[1:3])
  ce = losses.cross_entropy(s_logits, labels)
  mask = (labels != 255).astype(np.float64)
  kd = _np_kd(s_logits, _ensemble_probs(run, 2.0, labels.shape[1:3]), 2.0,
              mask)
  t_soft = 4.0 - 2.0 * 3 / 10  # Linear 4 -> 2 over 10 steps, at step 3.
  # pixel_kd of the registry on a target whose softmax is the ensemble's.
  target = t_soft * np.log(_ensemble_probs(run, t_soft))
  soft = losses.get('pixel_kd')(run['s_logits'], target, temperature=t_soft)
  t_feats = run['t_out']['teacher'][1]
  feat = losses.get('logits_mse')(
      losses.resize_to(run['s_feats']['layer2'], (8, 8)), t_feats['layer1'])
  adapter = {'params': run['state'].connector_params['fit']}
  fit = losses.get('logits_mse')(
      _np_adapter(run['s_feats']['layer3'], adapter), t_feats['layer3'])
  w_feat = 1.0 - 3 / 10
  np.testing.assert_allclose(m['ce'], ce, rtol=1e-5)
  np.testing.assert_allclose(m['kd'], kd, rtol=1e-4)
  np.testing.assert_allclose(m['soft'], soft, rtol=1e-4)
  np.testing.assert_allclose(m['feat'], feat, rtol=1e-5)
  np.testing.assert_allclose(m['fit'], fit, rtol=1e-4)
  np.testing.assert_allclose(
      m['loss'], ce + 0.7 * kd + 0.5 * soft + w_feat * feat + 2.0 * fit,
      rtol=1e-4)
  np.testing.assert_allclose(m['soft/temperature'], t_soft, rtol=1e-6)
  np.testing.assert_allclose(m['feat/weight'], w_feat, rtol=1e-6)
  assert 'feat/temperature' not in m and m['fit/weight'] == 2.0
  # The classic terms report their weight and temperature the same way.
  assert m['ce/weight'] == 1.0 and 'ce/temperature' not in m
  np.testing.assert_allclose(m['kd/weight'], 0.7, rtol=1e-6)
  np.testing.assert_allclose(m['kd/temperature'], 2.0, rtol=1e-6)


def test_classic_terms_follow_the_loss_fields_and_count_labelled_pixels():
  loss = config_lib.defaults().loss
  t_fn = lambda step: 3.0
  labels_of = lambda terms: [t.label for t in terms]
  assert labels_of(terms_lib.classic(loss, temperature=t_fn,
                                     distilling=True)) == ['ce', 'kd', 'aux']
  assert labels_of(terms_lib.classic(loss, temperature=t_fn,
                                     distilling=False)) == ['ce', 'aux']
  loss.aux_weight = 0.0
  loss.kd_type = 'mse'
  ce, kd = terms_lib.classic(loss, temperature=t_fn, distilling=True)
  assert (kd.loss, kd.temperature, kd.at) == ('logits_mse', None,
                                              terms_lib.AT_LABELS)
  loss.kd_type = 'kl'
  ce, kd = terms_lib.classic(loss, temperature=t_fn, distilling=True)
  assert kd.loss == 'pixel_kd' and kd.temperature(0) == 3.0
  # (sum, count) by hand: 5 labelled pixels of 6, at the label resolution.
  rng = np.random.default_rng(3)
  student = rng.normal(size=(1, 2, 3, 4)).astype(np.float32)
  teacher = rng.normal(size=(1, 2, 3, 4)).astype(np.float32)
  labels = np.array([[[0, 1, 2], [3, 255, 1]]], np.int32)
  mask = (labels != 255).astype(np.float64)
  total, count = terms_lib.loss_sums(ce, student, None, temperature=None,
                                     labels=labels, ignore_index=255)
  log_q = np.log(_softmax(student))
  nll = -np.take_along_axis(log_q, np.where(labels == 255, 0, labels)[..., None],
                            axis=-1)[..., 0]
  np.testing.assert_allclose(total, np.sum(nll * mask), rtol=1e-5)
  assert float(count) == 5.0
  total, count = terms_lib.loss_sums(kd, student, teacher, temperature=3.0,
                                     labels=labels, ignore_index=255)
  np.testing.assert_allclose(
      total / count, _np_kd(student, _softmax(teacher / 3.0), 3.0, mask),
      rtol=1e-5)
  assert float(count) == 5.0
  # A configured term counts once per device: the mean over devices.
  term, = terms_lib.parse({'m': {'loss': 'logits_mse'}},
                          default_temperature=1.0, total_steps=10)
  total, count = terms_lib.loss_sums(term, student, teacher, temperature=None,
                                     labels=labels, ignore_index=255)
  np.testing.assert_allclose(total, np.mean((student - teacher)**2),
                             rtol=1e-5)
  assert float(count) == 1.0


def test_combine_logits_is_the_weighted_average_of_softened_predictions():
  rng = np.random.default_rng(1)
  logits = [rng.normal(size=(2, 3, 5, 6)) * 3 for _ in range(3)]
  weights = [0.5, 0.3, 0.2]
  for t in (0.5, 1.0, 4.0):
    combined = teachers_lib.combine_logits(
        [jnp.asarray(x, jnp.float32) for x in logits], weights, temperature=t)
    expected = sum(w * _softmax(x / t) for w, x in zip(weights, logits))
    np.testing.assert_allclose(_softmax(np.asarray(combined) / t), expected,
                               rtol=1e-5, atol=1e-7)
  mean = teachers_lib.combine_logits(
      [jnp.asarray(x, jnp.float32) for x in logits], weights)
  np.testing.assert_allclose(mean, sum(w * x for w, x in zip(weights, logits)),
                             rtol=1e-5, atol=1e-6)
  one = jnp.asarray(logits[0], jnp.float32)
  assert teachers_lib.combine_logits([one], [1.0], temperature=2.0) is one


def test_connectors_adapt_channels_and_size_and_train(one_step):
  adapters = one_step['adapters']
  assert adapters.channels == (('fit', 16, 32),)
  variables = connectors.init(adapters, jax.random.PRNGKey(0))
  students = {'fit': jnp.ones((2, 8, 8, 16)), 'feat': jnp.ones((2, 8, 8, 16))}
  targets = {'fit': jnp.zeros((2, 4, 4, 32)), 'feat': jnp.zeros((2, 4, 4, 16))}
  out, stats = connectors.connect(adapters, variables['params'],
                                  variables['batch_stats'], students, targets)
  assert out['fit'].shape == (2, 4, 4, 32)  # Channels and size.
  assert out['feat'].shape == (2, 4, 4, 16)  # Size only.
  assert jax.tree.structure(stats) == jax.tree.structure(
      variables['batch_stats'])
  assert connectors.needs_adapter('fitnet', 'auto', 16, 16)
  assert not connectors.needs_adapter('logits_mse', 'none', 16, 32)
  # The step moved every adapter parameter: they received gradients.
  before = one_step['state'].connector_params
  after = jax.device_get(one_step['new_state'].connector_params)
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after),
                  strict=True):
    assert np.max(np.abs(np.asarray(x) - y)) > 1e-6
  # The student's own variables hold no adapter.
  assert 'fit' not in one_step['new_state'].params
  assert (jax.tree.structure(one_step['new_state'].params)
          == jax.tree.structure(one_step['state'].params))


# ---------------------------------------------------------------- config

@pytest.mark.parametrize('terms, stages, extra, match', [
    ({'a': {'loss': 'nope'}}, (), {},
     r"config.loss.terms.a.loss: unknown loss 'nope'; valid: \[.*'pixel_kd'"),
    ({'a': {'loss': 'logits_mse', 'student': 'layer9'}}, (), {},
     r"config.loss.terms.a.student: the student has no map 'layer9'; "
     r"valid: \['logits', 'head', 'layer1'"),
    ({'a': {'loss': 'logits_mse', 'student': 'head', 'teacher': 'stage2'}},
     (), {}, r"config.loss.terms.a.teacher: teacher 'teacher' has no map "
     r"'stage2'; valid: \['logits', 'head'"),
    ({'a': {'loss': 'logits_mse', 'temperature': 2.0}}, (), {},
     r'config.loss.terms.a.temperature: .* takes no temperature'),
    ({'a': {'loss': 'pixel_kd', 'weight': {'name': 'linear'}}}, (), {},
     r"config.loss.terms.a.weight: schedule 'linear' needs 'init_value'"),
    ({'a': {'loss': 'pixel_kd', 'colour': 1}}, (), {},
     r"config.loss.terms.a.colour: unknown field; valid: \['loss'"),
    ({'kd': {'loss': 'pixel_kd'}}, (), {}, r'config.loss.terms.kd: the label'),
    ({'a': {'loss': 'pixel_kd', 'source': 'other'}}, (), {},
     r"config.loss.terms.a.source: 'other'; valid: \['ensemble', 'teacher'\]"),
    ({}, ({'steps': 3}, {'steps': 3}), {},
     r'config.stages: stage lengths \[3, 3\] do not add up to train.steps = 4'),
    ({}, ({'loss': {}}, {'loss': {}}), {},
     r'config.stages\[0\].steps: missing'),
    ({}, ({'steps': 2, 'loss': {'kd_wieght': 1}}, {}), {},
     r"config.stages\[0\].loss.kd_wieght: not a field of config.loss; "
     r"valid: \[.*'kd_weight'"),
    ({}, ({'steps': 2, 'loss': {'kd_pixels': 'sure'}}, {}), {},
     r"config.stages\[0\].loss.kd_pixels: 'sure'; valid: \['labelled', "
     r"'teacher_correct'\]"),
    ({}, ({'steps': 2, 'loss': {'terms': {'a': {'loss': 'nope'}}}}, {}), {},
     r"config.stages\[0\].loss.terms.a.loss: unknown loss 'nope'"),
    ({}, (), {'big': {'name': 'resnet9000'}},
     r"config.extra_teachers.big.name: unknown model 'resnet9000'"),
    ({}, (), {'big': {'name': 'tiny_fcn'}},
     r"config.extra_teachers.big.checkpoint: mode 'distill' needs"),
])
def test_config_errors_name_the_key_and_the_choices(tiny_config, terms, stages,
                                                    extra, match):
  config = tiny_config(**{'mode': 'distill', 'teacher.checkpoint': '/'})
  config.loss.terms = terms
  config.stages = stages
  config.extra_teachers = extra
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config)


def test_zoo_example_config_is_valid(tmp_path):
  from kdseg import compare
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs',
                      'zoo_example.py')
  spec = importlib.util.spec_from_file_location('zoo_example', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config_lib.validate(config)
  distill = compare.sub_config(config, 'distill', str(tmp_path))
  config_lib.validate(distill, check_files=False)
  stages = stages_lib.resolve(distill)
  assert [(s.start, s.end) for s in stages] == [(0, 100), (100, 400)]
  assert [[t.label for t in stages_lib.terms(s, ('teacher',))]
          for s in stages] == [['hint'], ['attention', 'soft']]
  # The supervised runs of the comparison train without any of it.
  baseline = compare.sub_config(config, 'student', str(tmp_path))
  assert not baseline.stages and not baseline.loss.terms


# ---------------------------------------------------------------- trainer

def _save_random_teacher(workdir, name, seed):
  """A checkpoint of `name` with random variables (no training)."""
  module = models.create(name, num_classes=CLASSES)
  variables = _random_variables(module, seed)
  state = state_lib.TrainState(
      step=np.int32(0), params=variables['params'],
      batch_stats=variables['batch_stats'], opt_state={'unused': np.zeros(1)},
      rng=np.zeros(2, np.uint32))
  manager = checkpoint.create_manager(workdir, async_save=False)
  checkpoint.save(manager, state, meta={'model': name}, miou=0.5)
  manager.close()
  return variables


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('teacher'))
  _save_random_teacher(workdir, 'tiny_deeplabv3', 7)
  return workdir


def test_each_teacher_is_restored_from_its_own_checkpoint(tmp_path,
                                                          tiny_config):
  saved = {'teacher': _save_random_teacher(str(tmp_path / 'a'),
                                           'tiny_deeplabv3', 1),
           'second': _save_random_teacher(str(tmp_path / 'b'), 'tiny_fcn', 2)}
  config = tiny_config(**{'mode': 'distill',
                          'teacher.checkpoint': str(tmp_path / 'a'),
                          'teacher.weight': 3.0})
  config.extra_teachers = {'second': {'name': 'tiny_fcn', 'weight': 1.0,
                                      'checkpoint': str(tmp_path / 'b')}}
  config_lib.validate(config)
  teachers, variables, _ = build.load_teachers(config, CLASSES)
  assert list(teachers) == ['teacher', 'second']
  assert [t.weight for t in teachers.values()] == [0.75, 0.25]
  for label in saved:
    for x, y in zip(jax.tree.leaves(saved[label]),
                    jax.tree.leaves(variables[label]), strict=True):
      np.testing.assert_array_equal(x, np.asarray(y))


def _logged(text):
  """step -> set of metric names from the trainer's log lines."""
  out = {}
  for step, rest in re.findall(r'tiny_fcn step (\d+): (ce .*)', text):
    out[int(step)] = {item.split(' ')[0] for item in rest.split(', ')}
  return out


def _model_item(workdir, step):
  manager = ocp.CheckpointManager(
      checkpoint.checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={'model': ocp.StandardCheckpointHandler(),
                     'train': ocp.StandardCheckpointHandler()})
  restored = manager.restore(step, args=ocp.args.Composite(
      model=ocp.args.StandardRestore(), train=ocp.args.StandardRestore()))
  manager.close()
  return restored['model'], restored['train']


def test_stages_switch_terms_resume_and_keep_connectors_out(
    tiny_config, teacher_dir, tmp_path, capsys):
  config = tiny_config(**{'mode': 'distill', 'teacher.checkpoint': teacher_dir,
                          'train.log_every': 1, 'train.eval_every': 3,
                          'loss.kd_weight': 0.0})
  # Stage 1: features through an adapter (16 -> 32 channels); stage 2: logits.
  config.stages = (
      {'steps': 2, 'loss': {'terms': {'early': {
          'loss': 'logits_mse', 'student': 'layer3', 'teacher': 'layer3'}}}},
      {'loss': {'terms': {'late': {'loss': 'pixel_kd', 'temperature': 2.0}}}},
  )
  straight = str(tmp_path / 'straight')
  modes.run(config, straight)
  logged = _logged(capsys.readouterr().out)
  assert sorted(logged) == [1, 2, 3, 4]
  for step in (1, 2):
    assert 'early' in logged[step] and 'late' not in logged[step]
  for step in (3, 4):
    assert 'late' in logged[step] and 'early' not in logged[step]

  # Resumed in the middle of stage 2 (from the step-3 checkpoint).
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(resumed), '4'))
  modes.run(config, resumed)
  logged = _logged(capsys.readouterr().out)
  assert sorted(logged) == [4]
  assert 'late' in logged[4] and 'early' not in logged[4]
  (a, a_train), (b, b_train) = (_model_item(straight, 4),
                                _model_item(resumed, 4))
  for x, y in zip(jax.tree.leaves((a, a_train['connector_params'])),
                  jax.tree.leaves((b, b_train['connector_params'])),
                  strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                               atol=1e-6)

  # The adapter trains (resumes) with the run but is not in the model item:
  # the plain student restores and evaluates without it.
  assert set(a) == {'params', 'batch_stats'}
  assert set(a_train['connector_params']) == {'early'}
  student = models.create('tiny_fcn', num_classes=CLASSES)
  abstract = state_lib.abstract_variables(student, (SIZE, SIZE, 3))
  variables, _ = checkpoint.restore_model_variables(straight, abstract)
  assert models.count_params(variables) == models.count_params(abstract)
