"""kdseg without a checkout: the bundled recipe configs, the TensorFlow extra.

The wheel itself is built and installed by `.ci/colab_stack`, which runs the
notebooks from it.
"""

import filecmp
import os
import subprocess
import sys

import pytest

from kdseg import configs
from kdseg.data import tf_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bundle_holds_the_checkout_configs():
  checkout = os.path.join(ROOT, 'configs')
  bundled = os.path.join(configs.BUNDLE, 'configs')
  names = sorted(n for n in os.listdir(checkout) if n.endswith('.py'))
  assert 'recipes.py' in names and 'default.py' in names
  match, mismatch, errors = filecmp.cmpfiles(checkout, bundled, names,
                                             shallow=False)
  assert match == names and not mismatch and not errors


def test_resolve_maps_missing_configs_paths_to_the_bundle(tmp_path,
                                                          monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, 'path', list(sys.path))  # put_on_path edits it.
  bundled = os.path.join(configs.BUNDLE, 'configs', 'camvid_distill.py')
  assert configs.resolve('configs/camvid_distill.py:cpu') == bundled + ':cpu'
  assert configs.resolve('configs/default.py') == os.path.join(
      configs.BUNDLE, 'configs', 'default.py')
  # Not a recipe, or not a bundled file: unchanged, for the loader to name.
  assert configs.resolve('my/exp.py') == 'my/exp.py'
  assert configs.resolve('configs/nope.py') == 'configs/nope.py'
  # A file of that name here wins.
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'default.py').write_text('')
  assert configs.resolve('configs/default.py') == 'configs/default.py'
  argv = configs.resolve_argv(['m', '--config', 'configs/pet_distill.py:cpu',
                               '--config=configs/pet_teacher.py',
                               '--workdir', 'configs/pet_student.py'])
  assert argv[2] == os.path.join(configs.BUNDLE, 'configs',
                                 'pet_distill.py') + ':cpu'
  assert argv[3] == '--config=' + os.path.join(configs.BUNDLE, 'configs',
                                               'pet_teacher.py')
  assert argv[5] == 'configs/pet_student.py'  # Only --config is resolved.


def test_bundled_recipe_loads_without_a_checkout(tmp_path):
  # A child whose working folder has no configs/ and whose path has no
  # checkout root: only the kdseg package is importable, through a link to it
  # from a folder of its own (as in site-packages).
  script = (
      'import importlib.util, sys\n'
      'from kdseg import configs\n'
      'path = configs.resolve("configs/camvid_distill.py:cpu")\n'
      'file, _, variant = path.partition(":")\n'
      'spec = importlib.util.spec_from_file_location("recipe", file)\n'
      'module = importlib.util.module_from_spec(spec)\n'
      'spec.loader.exec_module(module)\n'
      'config = module.get_config(variant)\n'
      'import configs as c\n'
      'print(config.mode, config.teacher.name, c.__path__[0])\n')
  site = tmp_path / 'site'
  site.mkdir()
  (site / 'kdseg').symlink_to(os.path.join(ROOT, 'kdseg'))
  work = tmp_path / 'work'
  work.mkdir()
  env = dict(os.environ, PYTHONPATH=str(site))
  out = subprocess.run([sys.executable, '-c', script], cwd=work, env=env,
                       capture_output=True, text=True, check=True).stdout
  mode, teacher, found = out.split()
  assert (mode, teacher) == ('distill', 'tiny_deeplabv3')
  assert found == str(site / 'kdseg' / '_bundle' / 'configs')


def test_missing_tensorflow_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow', None)  # Import fails.
  tf_setup.import_tensorflow.cache_clear()
  try:
    with pytest.raises(ImportError, match=r'kdseg\[tf\]'):
      tf_setup.import_tensorflow()
  finally:
    tf_setup.import_tensorflow.cache_clear()
