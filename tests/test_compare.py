"""Tests of mode 'compare' over seeds and of kdseg.stats.

Statistics are checked against values computed by hand (the t quantile from
a table); the runs use the tiny synthetic config of conftest.
"""

import json
import os

import jax
import numpy as np
import pytest

from kdseg import build
from kdseg import compare
from kdseg import stats
from kdseg import train as train_lib
from kdseg import train_state as state_lib

# t_{0.975, 2}: two-sided 95% with 3 seeds (any t table: 4.303).
T_975_2 = 4.302652729749464


def test_describe_mean_and_sample_std_by_hand():
  d = stats.describe([0.30, 0.33, 0.36])
  assert d['n'] == 3
  assert d['mean'] == pytest.approx(0.33)
  # sqrt((0.03^2 + 0 + 0.03^2) / (3 - 1)) = 0.03
  assert d['std'] == pytest.approx(0.03)
  one = stats.describe([0.5])
  assert one == {'mean': 0.5, 'std': None, 'n': 1}
  with pytest.raises(ValueError, match='at least one'):
    stats.describe([])


def test_t_interval_three_seeds_by_hand():
  lo, hi = stats.t_interval([0.30, 0.33, 0.36])
  half = T_975_2 * 0.03 / np.sqrt(3)  # 0.0745241...
  assert half == pytest.approx(0.0745241, abs=1e-7)
  assert (lo, hi) == (pytest.approx(0.33 - half), pytest.approx(0.33 + half))
  # 90%: t_{0.95, 2} = 2.919986.
  lo, hi = stats.t_interval([0.30, 0.33, 0.36], confidence=0.9)
  assert hi - 0.33 == pytest.approx(2.919986 * 0.03 / np.sqrt(3), rel=1e-6)
  assert stats.t_interval([0.3]) is None
  with pytest.raises(ValueError, match='confidence'):
    stats.t_interval([0.1, 0.2], confidence=1.0)


def test_paired_gain_by_hand():
  gain = stats.paired_gain([0.40, 0.42, 0.47], [0.38, 0.41, 0.43])
  # Differences 0.02, 0.01, 0.04: mean 0.07 / 3, sample std
  # sqrt(((0.02 - m)^2 + (0.01 - m)^2 + (0.04 - m)^2) / 2) = 0.0152753.
  assert gain['per_seed'] == pytest.approx([0.02, 0.01, 0.04])
  assert gain['mean'] == pytest.approx(0.0233333, abs=1e-7)
  assert gain['std'] == pytest.approx(0.0152753, abs=1e-7)
  half = T_975_2 * 0.0152753 / np.sqrt(3)
  assert gain['interval'] == pytest.approx(
      [0.0233333 - half, 0.0233333 + half], abs=1e-6)
  # With three seeds this spread leaves zero inside the interval.
  assert gain['interval'][0] < 0 < gain['interval'][1]
  with pytest.raises(ValueError, match='same seeds'):
    stats.paired_gain([0.1, 0.2], [0.1])


def test_summarize_and_table():
  rows = {'teacher': {0: {'miou': 0.6, 'pixel_accuracy': 0.9, 'params': 9}},
          'student': {0: {'miou': 0.38, 'pixel_accuracy': 0.8, 'params': 3},
                      1: {'miou': 0.41, 'pixel_accuracy': 0.82, 'params': 3},
                      2: {'miou': 0.43, 'pixel_accuracy': 0.84, 'params': 3}},
          'kd': {0: {'miou': 0.40, 'pixel_accuracy': 0.81, 'params': 3},
                 1: {'miou': 0.42, 'pixel_accuracy': 0.83, 'params': 3},
                 2: {'miou': 0.47, 'pixel_accuracy': 0.85, 'params': 3}}}
  names = {'teacher': 'big', 'student': 'small', 'kd': 'small'}
  summary = compare.summarize(rows, names)
  assert summary['teacher']['miou_std'] is None
  assert 'gain' not in summary['teacher'] and 'gain' not in summary['student']
  assert summary['student']['miou'] == pytest.approx((0.38 + 0.41 + 0.43) / 3)
  assert summary['kd']['gain']['mean'] == pytest.approx(0.0233333, abs=1e-7)
  table = compare.format_table(summary)
  assert '+2.33 [' in table and '(95%)' in table
  # kd: mean 0.43, std sqrt((0.03^2 + 0.01^2 + 0.04^2) / 2) = 0.0361;
  # student: mean 0.40667, std 0.0252.
  assert '43.00 +- 3.61' in table
  assert '40.67 +- 2.52' in table
  # Without wall times the column is blank (nan), never a made-up zero.
  assert 'wall_s' not in summary['kd'] and table.rstrip().endswith('nan')
  rows['kd'][0]['wall_s'], rows['kd'][1]['wall_s'] = 60.0, 120.0
  rows['kd'][2]['wall_s'] = 90.0
  timed = compare.summarize(rows, names)
  assert timed['kd']['wall_s'] == 270.0  # All of the run's seeds.
  assert compare.format_table(timed).splitlines()[-1].endswith('    4.5')


def test_variant_overrides_and_their_errors(tiny_config):
  config = tiny_config(mode='compare')
  config.compare.variants = {
      'hot': {'loss': {'kd_weight': 0.5,
                       'temperature': {'name': 'constant', 'value': 4.0}}}}
  label, overrides = next(iter(compare.variants(config).items()))
  sub = compare.sub_config(config, label, '/w', seed=3, overrides=overrides)
  assert (sub.mode, sub.seed, sub.loss.kd_weight) == ('distill', 3, 0.5)
  # A schedule spec is replaced whole, not merged with the old one's keys.
  assert sub.loss.temperature.to_dict() == {'name': 'constant', 'value': 4.0}
  assert sub.teacher.checkpoint == os.path.join('/w', 'teacher')
  assert config.loss.kd_weight == 1.0  # The original is untouched.
  config.compare.teacher_steps = 9
  teacher = compare.sub_config(config, 'teacher', '/w')
  assert (teacher.train.steps, teacher.model.name) == (9, 'tiny_deeplabv3')
  assert compare.sub_config(config, 'student', '/w', seed=0).train.steps == 4
  with pytest.raises(ValueError, match=r'variants\.bad\.loss\.kd_wieght: '
                     r'unknown key; valid keys here: \[.*kd_weight'):
    compare.sub_config(config, 'bad', '/w', seed=0,
                       overrides={'loss': {'kd_wieght': 1.0}})
  config.compare.variants = {'student': {}}
  with pytest.raises(ValueError, match="'student' names the student run"):
    compare.variants(config)


def test_only_runs_the_named_variants(tiny_config):
  config = tiny_config(mode='compare')
  config.compare.variants = {'kd': {'loss': {'kd_weight': 0.5}},
                             'mse': {'loss': {'kd_type': 'mse'}},
                             'cwd': {'loss': {'kd_weight': 0.0}}}
  assert sorted(compare.variants(config)) == ['cwd', 'kd', 'mse']
  config.compare.only = ('cwd', 'kd')
  # In the order given, each with its own overrides.
  assert compare.variants(config) == {'cwd': {'loss': {'kd_weight': 0.0}},
                                      'kd': {'loss': {'kd_weight': 0.5}}}
  config.compare.only = ('kd', 'pairwise')
  with pytest.raises(ValueError, match=r"compare\.only: \['pairwise'\] not "
                     r"among the variants; .*\['cwd', 'kd', 'mse'\]"):
    compare.variants(config)


def _initial_params(config, seed):
  config = config.copy_and_resolve_references()
  config.seed = seed
  model = build.create_model(config, 'model', 4)
  tx = __import__('optax').sgd(0.1)
  state = state_lib.create_train_state(model, tx, jax.random.PRNGKey(seed),
                                       build.image_shape(config))
  return jax.tree_util.tree_leaves(state.params)


def _first_batch(config, seed):
  from kdseg import data as data_lib
  source, _ = build.get_sources(config)
  return next(data_lib.build_train_dataset(
      source, batch_size=4, crop_size=(32, 32), seed=seed,
      scale_range=(0.5, 2.0)).as_numpy_iterator())


def test_seeds_change_initialisation_and_data_order(tiny_config):
  config = tiny_config()
  a, b = _initial_params(config, 0), _initial_params(config, 1)
  assert any(not np.array_equal(x, y) for x, y in zip(a, b))
  for x, y in zip(a, _initial_params(config, 0)):
    np.testing.assert_array_equal(x, y)
  batch_0, batch_1 = _first_batch(config, 0), _first_batch(config, 1)
  assert not np.array_equal(batch_0['image'], batch_1['image'])
  np.testing.assert_array_equal(batch_0['image'],
                                _first_batch(config, 0)['image'])


def test_multi_seed_compare_resumes_and_repeats(tiny_config, tmp_path,
                                                monkeypatch, capsys):
  # Two steps, one evaluation a run: every run here is compile-bound.
  config = tiny_config(mode='compare', **{'train.steps': 2})
  config.compare.seeds = 2
  config.compare.variants = {'mse': {'loss': {'kd_type': 'mse'}}}
  workdir = str(tmp_path / 'cmp')
  real_train = train_lib.train
  trained = []

  def interrupted(sub, run_dir):
    if run_dir.endswith(os.path.join('mse', 'seed_1')):
      raise KeyboardInterrupt  # Stopped before the last run.
    trained.append(os.path.relpath(run_dir, workdir))
    return real_train(sub, run_dir)

  monkeypatch.setattr(train_lib, 'train', interrupted)
  with pytest.raises(KeyboardInterrupt):
    compare.run(config, workdir)
  assert trained == ['teacher', 'student/seed_0', 'mse/seed_0',
                     'student/seed_1']
  with open(os.path.join(workdir, 'summary.json')) as f:
    partial = json.load(f)
  assert partial['runs']['mse']['seeds'] == [0]
  capsys.readouterr()

  monkeypatch.setattr(train_lib, 'train', real_train)
  summary = compare.run(config, workdir)
  out = capsys.readouterr().out
  # Finished runs are evaluated, not trained again; the last one trains.
  assert out.count('training already complete') == 4
  assert 'mse/seed_1: training already complete' not in out
  assert set(summary) == {'teacher', 'student', 'mse'}
  for run in ('student', 'mse'):
    assert summary[run]['seeds'] == [0, 1]
    assert summary[run]['miou_std'] is not None
  gain = summary['mse']['gain']
  per_seed = [summary['mse']['per_seed'][str(s)]['miou'] -
              summary['student']['per_seed'][str(s)]['miou'] for s in (0, 1)]
  assert gain['per_seed'] == pytest.approx(per_seed)
  assert gain['interval'] is not None
  # Two seeds train differently (the same seed's inputs repeat exactly:
  # test_seeds_change_initialisation_and_data_order).
  student = summary['student']['per_seed']
  assert student['0']['miou'] != student['1']['miou']
  assert '\nmse ' in out and '(95%)' in out
  # Every run's wall time, and their total, as the terminal line says.
  with open(os.path.join(workdir, 'summary.json')) as f:
    written = json.load(f)
  walls = [written['runs'][r]['wall_s'] for r in ('teacher', 'student', 'mse')]
  assert all(w > 0 for w in walls)
  assert written['wall_s'] == pytest.approx(sum(walls))
  assert f"Wall-clock time of the runs: {sum(walls) / 60:.1f} minutes." in out
