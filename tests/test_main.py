"""The command line runs the default config's compare mode end to end."""

import json
import os
import subprocess
import sys


def test_main_compare_writes_summary(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = str(tmp_path / 'run')
  cmd = [sys.executable, '-m', 'kdseg.main',
         '--config', os.path.join(root, 'configs', 'default.py'),
         '--workdir', workdir,
         '--config.train.steps=2', '--config.train.eval_every=2',
         '--config.train.learning_rate.warmup_steps=0',
         '--config.train.batch_size=4', '--config.eval.batch_size=8',
         '--config.data.kwargs.num_train_examples=16',
         '--config.data.kwargs.num_val_examples=8',
         '--config.data.kwargs.height=32', '--config.data.kwargs.width=32',
         '--config.data.crop_size=(32, 32)',
         '--config.train.progress_bar=False']
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=root,
                       timeout=900, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert out.returncode == 0, out.stderr[-4000:]
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  assert list(summary['runs']) == ['teacher', 'student', 'distill']
  runs = summary['runs']
  assert runs['teacher']['model'] == 'tiny_deeplabv3'
  assert runs['student']['model'] == runs['distill']['model'] == 'tiny_fcn'
  assert runs['student']['params'] == runs['distill']['params']
  assert runs['teacher']['params'] > runs['student']['params']
  for run in runs.values():
    assert 0.0 <= run['miou'] <= 1.0 and run['step'] == 2
  # The printed table names all three runs.
  for name in ('teacher', 'student', 'distill'):
    assert f'\n{name} ' in out.stdout
  # Each run has its own resumable workdir, one a seed for the students.
  for name in ('teacher', 'student/seed_0', 'distill/seed_0'):
    assert os.path.isdir(os.path.join(workdir, name, 'checkpoints'))


def test_main_rejects_unknown_mode(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [sys.executable, '-m', 'kdseg.main', '--config',
       os.path.join(root, 'configs', 'default.py'), '--workdir',
       str(tmp_path), '--config.mode=fit'],
      capture_output=True, text=True, cwd=root, timeout=300)
  assert out.returncode != 0
  assert "config.mode: unknown mode 'fit'" in out.stderr
