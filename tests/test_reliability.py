"""Nothing lost, whatever happens to a run: the best checkpoint, a stop on
SIGTERM, a second run in a live workdir, a failed save, damaged checkpoints,
and quiet logs. Tiny models, a few steps each."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kdseg import checkpoint
from kdseg import checkpoint_integrity as integrity
from kdseg import evaluate
from kdseg import models
from kdseg import modes
from kdseg import train
from kdseg import train_state as state_lib
from kdseg import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_state(value: float, step: int):
  """A tiny_fcn train state whose parameters all equal `value`."""
  model = models.create('tiny_fcn', num_classes=4)
  import optax  # pylint: disable=g-import-not-at-top
  state = state_lib.create_train_state(model, optax.sgd(0.1), jax.random.PRNGKey(0),
                                       image_shape=(32, 32, 3))
  params = jax.tree.map(lambda x: np.full(x.shape, value, x.dtype),
                        state.params)
  return model, state.replace(params=params, step=np.int32(step))


def _first_leaf(tree) -> float:
  return float(np.asarray(jax.tree.leaves(tree)[0]).ravel()[0])


def test_best_checkpoint_is_read_and_survives_a_resume(tmp_path):
  """Evaluation and teacher restores read the best step by mIoU, not the
  latest; with keep_checkpoints=1 the best survives later saves, also by a
  new manager (a resumed run)."""
  workdir = str(tmp_path)
  model, state = _tiny_state(1.0, 10)
  saver = checkpoint.Saver(workdir, keep=1, async_save=False)
  saver.save(state, meta={'model': 'tiny_fcn'}, miou=0.60)
  saver.save(_tiny_state(2.0, 20)[1], meta={'model': 'tiny_fcn'}, miou=0.40)
  saver.close()
  # A resumed run: a new Saver, a worse and an unevaluated step.
  saver = checkpoint.Saver(workdir, keep=1, async_save=False)
  saver.save(_tiny_state(3.0, 30)[1], meta={'model': 'tiny_fcn'}, miou=0.50)
  saver.save(_tiny_state(4.0, 40)[1], meta={'model': 'tiny_fcn'})
  saver.close()
  assert 10 in set(map(int, os.listdir(checkpoint.checkpoint_dir(workdir))))
  abstract = state_lib.abstract_variables(model, (32, 32, 3))
  variables, meta = checkpoint.restore_model_variables(workdir, abstract)
  assert meta['step'] == 10 and meta['chosen_as'] == 'best'
  assert _first_leaf(variables['params']) == 1.0
  variables, meta = checkpoint.restore_model_variables(workdir, abstract,
                                                       which='latest')
  assert meta['step'] == 40 and _first_leaf(variables['params']) == 4.0


def test_evaluate_mode_scores_the_best_step(tiny_config, tmp_path, capsys):
  """Mode 'evaluate' reads the step with the best recorded mIoU, and says
  which step it read."""
  workdir = str(tmp_path)
  saver = checkpoint.Saver(workdir, keep=1, async_save=False)
  for value, step, miou in ((1.0, 10, 0.6), (2.0, 20, 0.4)):
    saver.save(_tiny_state(value, step)[1], meta={'model': 'tiny_fcn'},
               miou=miou)
  saver.close()
  config = tiny_config(**{'mode': 'evaluate'})
  result = evaluate.evaluate_workdir(config, workdir)
  assert result['step'] == 10
  assert 'best checkpoint (step 10' in capsys.readouterr().out


def _damage(step_dir: str, how: str) -> None:
  files = sorted((os.path.getsize(os.path.join(r, n)), os.path.join(r, n))
                 for r, _, names in os.walk(step_dir) for n in names
                 if n != integrity.MANIFEST)
  biggest = files[-1][1]
  if how == 'flip':
    with open(biggest, 'r+b') as f:
      f.seek(os.path.getsize(biggest) // 2)
      byte = f.read(1)
      f.seek(-1, os.SEEK_CUR)
      f.write(bytes([byte[0] ^ 0x40]))
  elif how == 'truncate':
    with open(biggest, 'r+b') as f:
      f.truncate(os.path.getsize(biggest) // 2)
  elif how == 'missing_metadata':
    os.remove(os.path.join(step_dir, '_CHECKPOINT_METADATA'))


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  """A finished 4-step run with checkpoints at steps 2 and 4."""
  from conftest import make_tiny_config  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('trained'))
  modes.run(make_tiny_config(**{'train.steps': 4}), workdir)
  return workdir


def _copy_run(trained_run, tmp_path) -> tuple[str, str]:
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained_run, workdir)
  return workdir, checkpoint.checkpoint_dir(workdir)


def _abstract_tiny_fcn():
  model = models.create('tiny_fcn', num_classes=4)
  return state_lib.abstract_variables(model, (32, 32, 3))


@pytest.mark.parametrize('how', ['flip', 'truncate', 'missing_metadata'])
def test_damaged_checkpoint_is_detected_and_skipped(trained_run, tmp_path,
                                                    how, capsys):
  workdir, ckpt = _copy_run(trained_run, tmp_path)
  assert integrity.problem(os.path.join(ckpt, '4')) is None
  _damage(os.path.join(ckpt, '4'), how)
  assert integrity.problem(os.path.join(ckpt, '4')) is not None
  # A read-only restore skips it, says so, and changes nothing.
  _, meta = checkpoint.restore_model_variables(workdir, _abstract_tiny_fcn(),
                                               which='latest')
  assert meta['step'] == 2
  assert 'damaged checkpoint of step 4' in capsys.readouterr().out
  assert os.path.isdir(os.path.join(ckpt, '4'))


def test_resume_falls_back_from_a_damaged_latest_step(tiny_config, trained_run,
                                                      tmp_path, capsys):
  workdir, ckpt = _copy_run(trained_run, tmp_path)
  _damage(os.path.join(ckpt, '4'), 'flip')
  # Resuming moves it aside (never deletes it) and goes on from step 2.
  result = modes.run(tiny_config(**{'train.steps': 6}), workdir)
  out = capsys.readouterr().out
  assert 'checkpoint of step 4 is damaged' in out
  assert 'Resumed from' in out and 'at step 2.' in out
  assert result['step'] == 6
  assert os.path.isdir(os.path.join(workdir, integrity.DAMAGED_DIR, '4'))
  assert 6 in set(map(int, os.listdir(ckpt)))


def test_no_intact_checkpoint_is_a_clear_error(trained_run, tmp_path):
  workdir, ckpt = _copy_run(trained_run, tmp_path)
  for step in ('2', '4'):
    _damage(os.path.join(ckpt, step), 'flip')
  with pytest.raises(checkpoint.DamagedCheckpointError,
                     match='No intact checkpoint.*step 4.*step 2.*Nothing '
                     'was changed'):
    checkpoint.restore_model_variables(workdir)


def test_failed_save_stops_the_run_at_once(tiny_config, tmp_path,
                                           monkeypatch, capsys):
  """A full disk at step 4's save: the run stops before training on to the
  next save, names the step and the cause, leaves no temporary folder and
  keeps step 2's checkpoint, verified."""
  original = ocp.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access

  async def full_disk(self, item, directory):
    if isinstance(item, dict) and item.get('step') == 4:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return await original(self, item, directory)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, '_save_fn', full_disk)
  workdir = str(tmp_path)
  config = tiny_config(**{'train.steps': 6, 'train.eval_every': 2,
                          'train.log_every': 1})
  with pytest.raises(checkpoint.CheckpointSaveError) as error:
    modes.run(config, workdir)
  message = str(error.value)
  assert 'step 4' in message and 'disk is full' in message
  assert 'previous checkpoint (step 2' in message and 'intact' in message
  out = capsys.readouterr().out
  assert 'step 6: validation' not in out
  ckpt = checkpoint.checkpoint_dir(workdir)
  assert sorted(os.listdir(ckpt)) == ['2']
  assert integrity.problem(os.path.join(ckpt, '2')) is None


def test_live_workdir_is_refused_and_stale_lock_taken_over(tiny_config,
                                                          tmp_path):
  workdir = str(tmp_path)
  config = tiny_config(**{'train.steps': 2})
  with workdir_lock.hold(workdir):
    with pytest.raises(workdir_lock.WorkdirBusyError,
                       match=f'in use by process {os.getpid()}'):
      modes.run(config, workdir)
  # The lock file of a dead run (no process holds it) is taken over.
  with open(os.path.join(workdir, workdir_lock.LOCK_FILE), 'w') as f:
    json.dump({'pid': 999999, 'host': 'gone', 'command': 'x', 'since': ''}, f)
  assert modes.run(config, workdir)['step'] == 2


def test_resume_with_another_config_is_refused(tiny_config, tmp_path):
  workdir = str(tmp_path)
  # Also: checkpoint_every saves between evaluations, without an mIoU.
  modes.run(tiny_config(**{
      'train.steps': 2, 'train.checkpoint_every': 1}), workdir)
  manager = checkpoint.create_manager(workdir, async_save=False)
  assert manager.all_steps() == [1, 2]
  assert manager.metrics(1) is None and manager.metrics(2)['miou'] >= 0
  manager.close()
  config = tiny_config(**{'train.steps': 4, 'model.options': {'width': 2.0}})
  with pytest.raises(ValueError, match="model_options: checkpoint {}, config "
                     "{'width': 2.0}.*another --workdir"):
    modes.run(config, workdir)


_TINY_RUN = [
    '--config', os.path.join(ROOT, 'configs', 'default.py'),
    '--config.mode=train', '--config.data.kwargs.height=32',
    '--config.data.kwargs.width=32', '--config.data.kwargs.num_train_examples=32',
    '--config.data.kwargs.num_val_examples=8', '--config.data.crop_size=(32, 32)',
    '--config.train.batch_size=4', '--config.eval.batch_size=4',
    '--config.train.log_every=1', '--config.train.progress_bar=False',
    '--config.train.learning_rate.warmup_steps=0']


def test_sigterm_saves_and_resumes(tmp_path):
  """SIGTERM mid-run: the current step finishes, a checkpoint of it is saved,
  the process exits 143 saying how to resume, the terminal carries no
  library log lines, and the rerun resumes from that step."""
  workdir = str(tmp_path / 'run')
  command = [sys.executable, '-m', 'kdseg.main', '--workdir', workdir,
             *_TINY_RUN]
  env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
  proc = subprocess.Popen(
      command + ['--config.train.steps=100000', '--config.train.eval_every=100000'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=env)
  last = 0
  for line in proc.stdout:
    found = re.match(r'tiny_fcn step (\d+):', line)
    if found:
      last = int(found.group(1))
      if last >= 5:
        proc.send_signal(signal.SIGTERM)
        break
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  stopped = re.search(r'Stopped by SIGTERM after step (\d+)', err)
  assert stopped, err[-2000:]
  saved = int(stopped.group(1))
  assert saved >= last  # Less than one step of work is lost.
  step_dir = os.path.join(checkpoint.checkpoint_dir(workdir), str(saved))
  assert integrity.is_sealed(step_dir)
  assert integrity.problem(step_dir) is None
  # Orbax's INFO lines went to the log file, not the terminal.
  assert 'checkpoint_manager' not in err
  with open(os.path.join(workdir, 'logs', 'kdseg.log')) as f:
    assert 'checkpoint_manager' in f.read()
  resumed = subprocess.run(
      command + [f'--config.train.steps={saved + 2}',
                 '--config.train.eval_every=1000'],
      cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'at step {saved}.' in resumed.stdout
  assert f'tiny_fcn step {saved + 2}: validation mIoU' in resumed.stdout
