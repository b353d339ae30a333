"""torchvision weights -> kdseg: same outputs, errors that name the mismatch.

One child process builds the twelve torchvision models with random weights
(no downloads) and random batch-norm statistics, and writes their state
dicts and reference outputs (eval mode, at the output stride) to a
temporary folder; kdseg converts them here and must reproduce the outputs.
torch never runs in this process: importing it next to XLA/TensorFlow is
not safe with every build. The tests that need no torchvision build their
state dicts from the name table and run without it.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdseg import checkpoint
from kdseg import config as config_lib
from kdseg import convert
from kdseg.convert.__main__ import main as convert_main
from kdseg.convert import names
from kdseg.convert import sources
from kdseg.convert import state_dict as state_dict_lib
from kdseg.convert import torch_io
from kdseg.convert import trees
from kdseg import models

needs_torchvision = pytest.mark.skipif(
    importlib.util.find_spec('torchvision') is None,
    reason='torchvision not installed (pip install torch==2.14.1 '
    'torchvision==0.29.1)')

SEGMENTATION = ['fcn_resnet50', 'fcn_resnet101', 'deeplabv3_resnet50',
                'deeplabv3_resnet101', 'deeplabv3_mobilenet_v3_large',
                'lraspp_mobilenet_v3_large']
BACKBONES = ['resnet18', 'resnet34', 'resnet50', 'resnet101', 'mobilenet_v2',
             'mobilenet_v3_large']
NUM_CLASSES = 7
SIZE = 64  # Input height and width.
TOLERANCE = 1e-4  # max |kdseg - torchvision| / max |torchvision|, float32.

_TORCH_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import numpy as np
    import torch
    import torchvision.models as tvm
    import torchvision.models.segmentation as tvs

    out_dir, size, num_classes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    dropped = json.loads(sys.argv[4])
    torch.manual_seed(0)
    images = torch.randn(2, 3, size, size)
    facts = {}

    def randomise(model):
      # Random batch-norm statistics and affine terms, so that a swapped or
      # missed tensor changes the outputs.
      for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
          with torch.no_grad():
            m.running_mean.normal_(0.0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.2)
            m.num_batches_tracked.fill_(7)
      return model.eval()

    for name, prefixes in dropped.items():
      if hasattr(tvs, name):
        kwargs = dict(weights=None, weights_backbone=None,
                      num_classes=num_classes)
        if not name.startswith('lraspp'):
          kwargs['aux_loss'] = True
        model = randomise(getattr(tvs, name)(**kwargs))
        with torch.no_grad():
          feats = model.backbone(images)
          if name.startswith('lraspp'):
            refs = {'logits': model.classifier(feats)}
          else:
            refs = {'logits': model.classifier(feats['out']),
                    'aux_logits': model.aux_classifier(feats['aux'])}
      else:
        model = randomise(getattr(tvm, name)(weights=None))
        with torch.no_grad():
          if name.startswith('resnet'):
            x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
            for stage in (model.layer1, model.layer2, model.layer3,
                          model.layer4):
              x = stage(x)
          elif name == 'mobilenet_v2':
            x = model.features[:18](images)  # kdseg stops at features.17.
          else:
            x = model.features(images)
          refs = {'features': x}
      state = {k: v.numpy() for k, v in model.state_dict().items()}
      np.savez(os.path.join(out_dir, name + '.npz'), **state)
      np.savez(os.path.join(out_dir, name + '_ref.npz'),
               images=images.permute(0, 2, 3, 1).numpy(),
               **{k: v.permute(0, 2, 3, 1).numpy() for k, v in refs.items()})
      params = dict(model.named_parameters())
      facts[name] = {
          'params': sum(p.numel() for p in params.values()),
          'dropped': sum(p.numel() for n, p in params.items()
                         if n.startswith(tuple(prefixes))),
      }
      if name == 'lraspp_mobilenet_v3_large':
        torch.save(model.state_dict(), os.path.join(out_dir, name + '.pth'))
    with open(os.path.join(out_dir, 'facts.json'), 'w') as f:
      json.dump(facts, f)
''')


@pytest.fixture(scope='module')
def torchvision_dir(tmp_path_factory):
  """Folder with <name>.npz, <name>_ref.npz, facts.json (one child process)."""
  if importlib.util.find_spec('torchvision') is None:
    pytest.skip('torchvision not installed (pip install torch==2.14.1 '
                'torchvision==0.29.1)')
  out = tmp_path_factory.mktemp('torchvision')
  dropped = {name: list(sources.get(name).dropped)
             for name in SEGMENTATION + BACKBONES}
  result = subprocess.run(
      [sys.executable, '-c', _TORCH_SCRIPT, str(out), str(SIZE),
       str(NUM_CLASSES), json.dumps(dropped)],
      capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return out


def _load(directory, name):
  with np.load(os.path.join(directory, f'{name}.npz')) as data:
    return {k: data[k] for k in data.files}


def _rel_error(got, want):
  return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


def _zeros(model, size=SIZE):
  """Stand-in variables of `model` (zeros), from traced shapes."""
  rng = jax.random.PRNGKey(0)
  shapes = jax.eval_shape(lambda: model.init(
      {'params': rng, 'dropout': rng}, jnp.zeros((1, size, size, 3)),
      train=False))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), dict(shapes))


def _kdseg_outputs(name, variables, images):
  """The outputs torchvision's reference holds, computed by kdseg."""
  source = sources.get(name)
  if source.is_backbone:
    # Through the segmentation model it initialises, undilated (stride 32)
    # as torchvision's classifier backbone.
    model = models.create(source.model, num_classes=NUM_CLASSES,
                          output_stride=32)
    variables = convert.overlay(_zeros(model), variables)[0]
  else:
    aux = 'aux_classifier' in variables['params']
    model = models.create(name, num_classes=NUM_CLASSES,
                          **({'aux': True} if aux else {}))
  logits, features = jax.jit(
      lambda v, x: model.apply(v, x, train=False))(variables, images)
  if source.is_backbone:
    key = 'layer4' if name.startswith('resnet') else 'stage5'
    return {'features': features[key]}
  out = {'logits': logits}
  if 'aux_logits' in features:
    out['aux_logits'] = features['aux_logits']
  return out


def _check_outputs(name, variables, refs):
  got = _kdseg_outputs(name, variables, refs['images'])
  assert set(got) == set(refs) - {'images'}
  errors = {}
  for key, value in got.items():
    assert value.shape == refs[key].shape, key
    errors[key] = _rel_error(value, refs[key])
  print(f'{name}: max relative error {errors}')
  assert max(errors.values()) <= TOLERANCE, errors
  return errors


# Conversion of every model, checked against torchvision's outputs ---------


@needs_torchvision
@pytest.mark.parametrize('name', SEGMENTATION + BACKBONES)
def test_outputs_and_parameter_counts_match_torchvision(name, torchvision_dir):
  state = _load(torchvision_dir, name)
  variables = convert.from_torchvision(name, state)
  facts = json.loads((torchvision_dir / 'facts.json').read_text())[name]
  assert models.count_params(variables) == facts['params'] - facts['dropped']
  assert (facts['dropped'] > 0) == sources.get(name).is_backbone
  refs = _load(torchvision_dir, f'{name}_ref')
  _check_outputs(name, variables, refs)


@needs_torchvision
def test_cli_end_to_end_then_restore_as_a_teacher(torchvision_dir, tmp_path,
                                                  capsys):
  name = 'lraspp_mobilenet_v3_large'
  out = tmp_path / 'teacher'
  assert convert_main(['--model', name, '--weights',
                       str(torchvision_dir / f'{name}.pth'),
                       '--out', str(out)]) == 0
  printed = capsys.readouterr().out
  assert f"config.teacher.checkpoint = '{out}'" in printed
  model = models.create(name, num_classes=NUM_CLASSES)
  abstract = jax.tree.map(lambda z: jax.ShapeDtypeStruct(z.shape, z.dtype),
                          _zeros(model))
  variables, meta = checkpoint.restore_model_variables(str(out), abstract)
  assert meta['model'] == name and meta['num_classes'] == NUM_CLASSES
  assert meta['source']['library'] == 'torchvision'
  assert meta['source']['model'] == name
  _check_outputs(name, variables, _load(torchvision_dir, f'{name}_ref'))
  # A second conversion into the same folder is refused.
  with pytest.raises(SystemExit):
    convert_main(['--model', name, '--weights',
                  str(torchvision_dir / f'{name}.pth'), '--out', str(out)])


# Without torchvision: state dicts made from the name table ----------------


def _synthetic_state_dict(name, *, num_classes=NUM_CLASSES, aux=True, seed=0):
  """A state dict in torchvision's layout with random values."""
  source = sources.get(name)
  aux = aux and not source.is_backbone and not name.startswith('lraspp')
  shapes = convert.expected_shapes(name, num_classes=num_classes, aux=aux)
  rng = np.random.default_rng(seed)
  state = {}
  for key, path in names.table(source.layers(aux)).items():
    shape = shapes[path]
    if len(shape) == 4:
      shape = (shape[3], shape[2], shape[0], shape[1])
    state[key] = rng.normal(size=shape).astype(np.float32)
    if key.endswith('running_var'):
      state[key] = np.abs(state[key]) + 0.5
      state[key.replace('running_var', 'num_batches_tracked')] = np.int64(3)
  return state


def test_conversion_transposes_kernels_and_splits_batch_stats():
  state = _synthetic_state_dict('resnet18')
  state['fc.weight'] = np.zeros((1000, 512), np.float32)
  state['fc.bias'] = np.zeros((1000,), np.float32)
  variables = convert.from_torchvision('resnet18', state)
  params, stats = variables['params'], variables['batch_stats']
  assert set(params) == set(stats) == {'backbone'}
  np.testing.assert_array_equal(
      params['backbone']['layer2_0']['downsample_conv']['kernel'],
      state['layer2.0.downsample.0.weight'].transpose(2, 3, 1, 0))
  assert params['backbone']['conv1']['kernel'].shape == (7, 7, 3, 64)
  np.testing.assert_array_equal(params['backbone']['bn1']['scale'],
                                state['bn1.weight'])
  np.testing.assert_array_equal(stats['backbone']['layer4_1']['bn2']['var'],
                                state['layer4.1.bn2.running_var'])
  assert 'num_batches_tracked' not in str(trees.flatten(variables))


def test_depthwise_and_squeeze_excitation_tensors():
  state = _synthetic_state_dict('mobilenet_v3_large')
  variables = convert.from_torchvision('mobilenet_v3_large', state)
  block = variables['params']['backbone']['features_4']
  # features.4: expand (block.0), depthwise 5x5 (block.1), SE (block.2).
  assert block['depthwise']['conv']['kernel'].shape == (5, 5, 1, 72)
  np.testing.assert_array_equal(
      block['depthwise']['conv']['kernel'],
      state['features.4.block.1.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(block['se']['fc2']['bias'],
                                state['features.4.block.2.fc2.bias'])


def test_every_backbone_fits_the_models_it_initialises():
  for name in BACKBONES:
    want = convert.expected_shapes(name)
    for target in sources.get(name).initialises:
      got = {p: s for p, s in state_dict_lib.model_shapes(target).items()
             if p.split('/')[1] == 'backbone'}
      assert got == want, (name, target)


def test_mismatches_are_listed():
  state = _synthetic_state_dict('resnet18')
  del state['layer1.0.conv1.weight']
  state['extra.weight'] = np.zeros(3, np.float32)
  state['bn1.weight'] = np.zeros(32, np.float32)
  with pytest.raises(ValueError) as error:
    convert.from_torchvision('resnet18', state)
  message = str(error.value)
  assert '1 missing: layer1.0.conv1.weight' in message
  assert '1 unexpected: extra.weight' in message
  assert '1 wrong shape: bn1.weight (32,), expected (64,)' in message


def test_another_models_state_dict_is_refused_with_the_first_keys():
  with pytest.raises(ValueError, match=r'missing: layer1\.2\.conv1\.weight, '
                     r'layer1\.2\.bn1\.weight.*\(\+\d+ more\)'):
    convert.from_torchvision('resnet34', _synthetic_state_dict('resnet18'))
  with pytest.raises(ValueError, match=r'wrong shape: backbone\.conv1\.weight '
                     r'\(64, 3, 5, 5\), expected \(64, 3, 7, 7\)'):
    state = _synthetic_state_dict('fcn_resnet50')
    state['backbone.conv1.weight'] = np.zeros((64, 3, 5, 5), np.float32)
    convert.from_torchvision('fcn_resnet50', state)


def test_unknown_name_lists_the_convertible_models():
  with pytest.raises(ValueError, match='resnet18.*resnet34'):
    convert.from_torchvision('vgg16', {})
  assert convert.available() == sorted(SEGMENTATION + BACKBONES)


@pytest.mark.parametrize('name, layers', [
    ('deeplabv3_mobilenet_v3_large',
     ['classifier/classifier', 'aux_classifier/classifier', 'classifier.4',
      'aux_classifier.4']),
    ('lraspp_mobilenet_v3_large',
     ['classifier/low_classifier', 'classifier/high_classifier',
      'classifier.low_classifier', 'classifier.high_classifier']),
])
def test_new_class_count_reinitialises_only_the_classifiers(name, layers):
  state = _synthetic_state_dict(name)
  original = trees.flatten(convert.from_torchvision(name, state))
  with pytest.warns(UserWarning, match='re-initialised') as caught:
    converted = trees.flatten(
        convert.from_torchvision(name, state, num_classes=3))
  message = str(caught[0].message)
  for layer in layers:
    assert layer in message
  changed = sorted(p for p in original
                   if original[p].shape != converted[p].shape)
  heads = [layer for layer in layers if '/' in layer]
  assert changed == sorted(f'params/{h}/{leaf}' for h in heads
                           for leaf in ('bias', 'kernel'))
  for path in changed:
    assert converted[path].shape[-1] == 3
  for path in set(original) - set(changed):
    np.testing.assert_array_equal(converted[path], original[path])


def test_backbones_have_no_classes_to_set():
  with pytest.raises(ValueError, match='backbone'):
    convert.from_torchvision('resnet18', _synthetic_state_dict('resnet18'),
                             num_classes=3)


def test_cli_with_npz_new_class_count_and_no_aux(tmp_path, capsys):
  name = 'deeplabv3_mobilenet_v3_large'
  weights = tmp_path / 'w.npz'
  np.savez(weights, **_synthetic_state_dict(name))
  out = tmp_path / 'out'
  assert convert_main(['--model', name, '--weights', str(weights), '--out',
                       str(out), '--num-classes', '3', '--no-aux']) == 0
  captured = capsys.readouterr()
  assert 'WARNING' in captured.err and 'classifier/classifier' in captured.err
  assert 'aux_classifier' not in captured.err
  stored, meta = checkpoint.restore_model_variables(str(out))
  assert meta['num_classes'] == 3 and meta['options'] == {'aux': False}
  assert 'aux_classifier' not in stored['params']
  assert stored['params']['classifier']['classifier']['kernel'].shape == (
      1, 1, 256, 3)


def test_cli_errors(tmp_path, capsys):
  assert convert_main(['--model', 'resnet18', '--weights',
                       str(tmp_path / 'nothing.pth'), '--out',
                       str(tmp_path / 'o')]) == 1
  assert 'No weights file' in capsys.readouterr().err
  weights = tmp_path / 'w.npz'
  np.savez(weights, **_synthetic_state_dict('resnet18'))
  assert convert_main(['--model', 'resnet50', '--weights', str(weights),
                       '--out', str(tmp_path / 'o')]) == 1
  assert 'missing' in capsys.readouterr().err
  assert convert_main(['--list']) == 0
  assert 'resnet34' in capsys.readouterr().out


def test_pth_without_torch_says_how_to_install(tmp_path, monkeypatch):
  weights = tmp_path / 'w.pth'
  weights.write_bytes(b'')
  monkeypatch.setattr(torch_io.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(ImportError, match=r'pip install kdseg\[convert\]'):
    torch_io.load_state_dict(str(weights))


# Initialising a model from a converted backbone ----------------------------


@pytest.fixture(scope='module')
def resnet18_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp('resnet18')
  state = _synthetic_state_dict('resnet18')
  checkpoint.save_variables(str(out), convert.from_torchvision('resnet18',
                                                               state),
                            {'model': 'resnet18'})
  return out, state


def test_init_from_overlays_the_backbone_and_reports_the_rest(resnet18_dir):
  out, state = resnet18_dir
  model = models.create('deeplabv3_resnet18', num_classes=5, aux=True)
  fresh = jax.tree.map(lambda z: z + 1.0, _zeros(model))
  lines = []
  variables = convert.init_from(fresh, str(out), log=lines.append)
  flat, before = trees.flatten(variables), trees.flatten(fresh)
  backbone = [p for p in flat if p.split('/')[1] == 'backbone']
  assert len(backbone) == len(names.table(sources.get('resnet18').layers(False)))
  np.testing.assert_array_equal(
      flat['params/backbone/layer3_1/conv2/kernel'],
      state['layer3.1.conv2.weight'].transpose(2, 3, 1, 0))
  for path in set(flat) - set(backbone):
    np.testing.assert_array_equal(flat[path], before[path])
  report = lines[0]
  assert f'loaded {len(backbone)} tensors' in report
  assert 'not in the source: aux_classifier (7), classifier (37)' in report


def test_init_from_skips_wrong_shapes_and_refuses_other_models(resnet18_dir,
                                                               tmp_path):
  out, _ = resnet18_dir
  stored, _ = checkpoint.restore_model_variables(str(out))
  target = {'params': {'backbone': {'conv1': {
      'kernel': np.zeros((7, 7, 3, 32), np.float32)},
      'bn1': {'scale': np.zeros(64, np.float32)}}}}
  new, report = convert.overlay(target, stored)
  assert report.loaded == ('params/backbone/bn1/scale',)
  assert report.wrong_shape == (
      'params/backbone/conv1/kernel: source (7, 7, 3, 64), model '
      '(7, 7, 3, 32)',)
  assert not new['params']['backbone']['conv1']['kernel'].any()
  model = models.create('deeplabv3_mobilenet_v2', num_classes=5)
  with pytest.raises(ValueError, match='Nothing in'):
    convert.init_from(_zeros(model), str(out), log=lambda _: None)


def test_init_state_from_replaces_params_and_stats_only(resnet18_dir):
  from kdseg import train_state as state_lib  # pylint: disable=g-import-not-at-top
  out, state = resnet18_dir
  model = models.create('deeplabv3_resnet18', num_classes=5)
  variables = _zeros(model)
  fresh = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=variables['params'],
      batch_stats=variables['batch_stats'], opt_state=(), rng=jnp.zeros(2))
  assert convert.init_state_from(fresh, '') is fresh
  new = convert.init_state_from(fresh, str(out), log=lambda _: None)
  np.testing.assert_array_equal(
      new.batch_stats['backbone']['bn1']['mean'], state['bn1.running_mean'])
  assert not new.params['classifier']['classifier']['kernel'].any()


def test_config_checks_init_from(tmp_path):
  config = config_lib.defaults()
  assert config.model.init_from == ''
  config.model.init_from = str(tmp_path / 'missing')
  with pytest.raises(ValueError, match='model.init_from'):
    config_lib.validate(config)


def test_kdseg_never_imports_torch():
  code = ('import sys, kdseg, kdseg.train, kdseg.convert, '
          'kdseg.convert.__main__; assert "torch" not in sys.modules, '
          '[m for m in sys.modules if m.startswith("torch")]')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
