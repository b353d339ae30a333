"""End-to-end runs of the trainer on tiny configs (seconds each)."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kdseg import checkpoint
from kdseg import config as config_lib
from kdseg import modes
from kdseg import train


def _restore_params(workdir):
  directory = checkpoint.checkpoint_dir(workdir)
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={'model': ocp.StandardCheckpointHandler()})
  step = manager.latest_step()
  model = manager.restore(step, args=ocp.args.Composite(
      model=ocp.args.StandardRestore()))['model']
  manager.close()
  return step, model


def _leaves_close(a, b, **kw):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
  from conftest import make_tiny_config
  workdir = str(tmp_path_factory.mktemp('teacher'))
  config = make_tiny_config(**{'model.name': 'tiny_deeplabv3'})
  result = modes.run(config, workdir)
  assert result['step'] == 4
  return workdir


def test_train_writes_checkpoints_and_metrics(teacher_dir):
  step, model = _restore_params(teacher_dir)
  assert step == 4
  assert set(model) == {'params', 'batch_stats'}
  steps = sorted(int(d) for d in os.listdir(
      checkpoint.checkpoint_dir(teacher_dir)) if d.isdigit())
  assert steps == [2, 4]
  assert os.listdir(os.path.join(teacher_dir, 'tensorboard'))


def test_distill_keeps_teacher_out_of_student_checkpoint(tiny_config, tmp_path,
                                                         teacher_dir):
  config = tiny_config(**{'mode': 'distill', 'teacher.checkpoint': teacher_dir,
                          'loss.temperature': {'name': 'linear',
                                               'init_value': 4.0,
                                               'end_value': 1.0}})
  result = modes.run(config, str(tmp_path))
  assert 0.0 <= result['miou'] <= 1.0
  assert result['step'] == 4
  _, student = _restore_params(str(tmp_path))
  _, teacher = _restore_params(teacher_dir)
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  assert count(student['params']) == result['params']
  assert count(student['params']) != count(teacher['params'])


def test_resume_matches_uninterrupted_run(tiny_config, tmp_path):
  straight = tiny_config()
  modes.run(straight, str(tmp_path / 'straight'))
  # Interrupted after 2 steps (the first checkpoint), then resumed to 4.
  first_half = tiny_config(**{'train.steps': 2})
  modes.run(first_half, str(tmp_path / 'resumed'))
  assert _restore_params(str(tmp_path / 'resumed'))[0] == 2
  modes.run(straight, str(tmp_path / 'resumed'))
  step_a, a = _restore_params(str(tmp_path / 'straight'))
  step_b, b = _restore_params(str(tmp_path / 'resumed'))
  assert step_a == step_b == 4
  _leaves_close(a, b, rtol=1e-5, atol=1e-6)


def test_rerunning_a_finished_run_says_so(tiny_config, tmp_path, capsys):
  config = tiny_config(**{'train.steps': 2})
  first = modes.run(config, str(tmp_path))
  capsys.readouterr()
  again = modes.run(config, str(tmp_path))
  out = capsys.readouterr().out
  assert 'training already complete (2/2 steps)' in out
  assert f"step 2: validation mIoU {first['miou']:.4f}" in out
  assert again['miou'] == pytest.approx(first['miou'])


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_config, tmp_path):
  config = tiny_config(**{
      'train.steps': 6,
      'train.learning_rate': {'name': 'piecewise', 'boundaries': [2],
                              'schedules': [0.01, float('nan')]}})
  # The NaN learning rate first spoils the update of step 3 (its loss and
  # gradients are still finite): the guard checks the updated parameters.
  with pytest.raises(train.NonFiniteLossError,
                     match='at step 3.*checkpoint of step 2 is intact'):
    modes.run(config, str(tmp_path))
  step, model = _restore_params(str(tmp_path))
  assert step == 2
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(model))


def test_evaluate_mode_writes_json(tiny_config, teacher_dir):
  config = tiny_config(**{'mode': 'evaluate', 'model.name': 'tiny_deeplabv3'})
  result = modes.run(config, teacher_dir)
  with open(os.path.join(teacher_dir, 'eval.json')) as f:
    written = json.load(f)
  assert written['miou'] == pytest.approx(result['miou'])
  cm = np.array(written['confusion_matrix'])
  assert cm.shape == (4, 4)
  assert cm.sum() == 8 * 32 * 32  # Every val pixel counted once, no padding.


@pytest.mark.parametrize('overrides, match', [
    ({'mode': 'fit'}, "config.mode: unknown mode 'fit'; valid"),
    ({'model.name': 'resnet9000'}, "config.model.name: unknown model"),
    ({'train.batch_size': 3}, 'not divisible by the'),
    ({'mode': 'distill', 'teacher.checkpoint': '/nonexistent/teacher'},
     "config.teacher.checkpoint: '/nonexistent/teacher' does not exist"),
    ({'train.optimizer': 'lamb'}, "valid: \\['sgd', 'adamw'\\]"),
    ({'loss.temperature': {'name': 'constant', 'value': 0.0}}, '> 0'),
])
def test_config_errors(tiny_config, overrides, match):
  with pytest.raises(ValueError, match=match):
    config_lib.validate(tiny_config(**overrides), num_devices=2)


def test_unknown_config_key_is_named(tiny_config):
  config = tiny_config()
  config.train.stepz = 3
  with pytest.raises(ValueError, match=r"config.train.stepz: unknown key. "
                     r"Valid keys here: \[.*'steps'"):
    config_lib.validate(config)


def test_teacher_with_other_class_count_is_rejected(tiny_config, tmp_path,
                                                    teacher_dir):
  config = tiny_config(**{'mode': 'distill', 'teacher.checkpoint': teacher_dir})
  config.data.kwargs.num_classes = 3
  with pytest.raises(ValueError, match='does not fit the configured model'):
    modes.run(config, str(tmp_path))
