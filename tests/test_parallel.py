"""The training step gives the same result on 1 and 8 devices, shard_map and pmap."""

import json
import os
import subprocess
import sys

import numpy as np


def test_step_is_independent_of_device_count_and_mapping():
  script = os.path.join(os.path.dirname(__file__), 'multidevice_check.py')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  out = subprocess.run([sys.executable, script], capture_output=True, text=True,
                       env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  one = report['losses']['one']
  np.testing.assert_allclose(report['losses']['eight'], one, rtol=1e-5)
  np.testing.assert_allclose(report['losses']['pmap'], one, rtol=1e-5)
  # The step really moved the parameters, and identically everywhere.
  assert report['param_change'] > 1e-4
  # The connector adapter of the feature term trained too.
  assert report['connector_change'] > 1e-4 and report['fit'][0] > 0
  for key in ('params_eight', 'params_pmap', 'stats_eight', 'stats_pmap'):
    assert report[key] < 1e-5, (key, report)
