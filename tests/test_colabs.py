"""The notebooks in colabs/: saved without outputs, and each runs end to end.

A notebook's first code cell reads `KDSEG_SMOKE=1`, which swaps in synthetic
data or a tiny generated folder, tiny models and two training steps, and skips
downloads, pip and PyTorch. Jupyter is not needed: the code cells, less their
shell (`!`) and magic (`%`) lines, run as one script in a child process whose
working folder is a temporary one. The three children start together and run
side by side; XLA compiles without optimisation there (compilation dominates
a two-step run).

With `KDSEG_SOURCE` set (a wheel), the children do not see this checkout: the
first notebook's install cell installs kdseg from the wheel, as in a Colab
runtime, and the notebooks run one after the other (`.ci/colab_stack` does
this in an environment with Colab's package versions).
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(ROOT, 'colabs')
TIMEOUT_S = 900
SMOKE_LINE = "SMOKE = os.environ.get('KDSEG_SMOKE') == '1'"

_PREDICTIONS = 'student/predictions/predictions.json'
# Notebook -> (its folder under kdseg_runs/, files a smoke run leaves there).
NOTEBOOKS = {
    'quickstart.ipynb': ('quickstart', (
        _PREDICTIONS, 'student/benchmark.json', 'student/export.json',
        'student/export/saved_model.pb', 'my_images/picture.png')),
    'torchvision_teacher.ipynb': ('torchvision', (
        'converted/lraspp_mobilenet_v3_large/checkpoints/0',
        'converted/mobilenet_v3_large/checkpoints/0', _PREDICTIONS,
        'student/benchmark.json')),
    'custom_data.ipynb': ('custom', (
        'demo_data/images/0000.png', 'demo_data/masks/0000.png',
        'student/eval.json', 'student/confusion_matrix.png', _PREDICTIONS)),
}

# The columns of each notebook's last predict run: a split's images have
# ground truth, a folder of the user's images has none.
LAST_PANEL_COLUMNS = {
    'quickstart.ipynb': ['image', 'teacher', 'student'],
    'torchvision_teacher.ipynb': ['image', 'ground truth', 'teacher',
                                  'student'],
    'custom_data.ipynb': ['image', 'teacher', 'student'],
}


def load(name):
  with open(os.path.join(COLABS, name), encoding='utf-8') as f:
    return json.load(f)


def source(cell):
  text = cell['source']
  return text if isinstance(text, str) else ''.join(text)


def notebook_script(notebook) -> str:
  """The code cells as one script, without shell and magic lines."""
  parts = []
  for cell in notebook['cells']:
    text = source(cell)
    if cell['cell_type'] != 'code' or text.lstrip().startswith('%%'):
      continue
    parts.append('\n'.join(
        line for line in text.split('\n')
        if not line.lstrip().startswith(('!', '%'))))
  return '\n\n'.join(parts) + '\n'


def test_the_notebooks_are_all_tested():
  found = sorted(n for n in os.listdir(COLABS) if n.endswith('.ipynb'))
  assert found == sorted(NOTEBOOKS)


@pytest.mark.parametrize('name', sorted(NOTEBOOKS))
def test_notebook_is_nbformat_4_without_outputs(name):
  notebook = load(name)
  assert notebook['nbformat'] == 4 and notebook['nbformat_minor'] >= 4
  assert notebook['metadata']['kernelspec']['language'] == 'python'
  ids = [cell.get('id') for cell in notebook['cells']]
  if notebook['nbformat_minor'] >= 5:
    assert all(ids) and len(set(ids)) == len(ids), ids
  code_cells = []
  for cell in notebook['cells']:
    assert cell['cell_type'] in ('markdown', 'code', 'raw'), cell
    assert isinstance(cell['metadata'], dict)
    assert isinstance(cell['source'], (str, list))
    if cell['cell_type'] == 'code':
      assert cell['execution_count'] is None, source(cell)[:80]
      assert cell['outputs'] == [], source(cell)[:80]
      code_cells.append(source(cell))
    else:
      assert 'outputs' not in cell and 'execution_count' not in cell
  assert code_cells and SMOKE_LINE in code_cells[0]
  # The script the smoke run executes at least compiles.
  compile(notebook_script(notebook), name, 'exec')


def test_notebook_script_drops_shell_and_magic_lines():
  notebook = {'cells': [
      {'cell_type': 'markdown', 'source': ['x = 1']},
      {'cell_type': 'code', 'source': ['!pip install kdseg\n', 'a = 1\n',
                                       '%matplotlib inline\n', 'b = 2']},
      {'cell_type': 'code', 'source': '%%bash\necho hi'},
  ]}
  assert notebook_script(notebook) == 'a = 1\nb = 2\n'


@pytest.fixture(scope='module')
def smoke_runs(tmp_path_factory):
  """Starts every notebook's smoke run; name -> (process, folder, log path)."""
  env = dict(os.environ)
  env.update({
      'KDSEG_SMOKE': '1',
      'JAX_PLATFORMS': 'cpu',
      'TF_CPP_MIN_LOG_LEVEL': '2',
      'XLA_FLAGS': (env.get('XLA_FLAGS', '') +
                    ' --xla_backend_optimization_level=0').strip(),
  })
  from_source = bool(env.get('KDSEG_SOURCE'))
  if not from_source:
    # This checkout's kdseg, whatever else is installed.
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (ROOT, env.get('PYTHONPATH')) if p)
  # No network: a download attempt fails at once instead of hanging.
  for key in ('HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'):
    env[key] = 'http://127.0.0.1:9'
  runs = {}
  for name in sorted(NOTEBOOKS):
    folder = tmp_path_factory.mktemp(name.split('.')[0])
    env['KDSEG_DATA_DIR'] = str(folder / 'tensorflow_datasets')
    script = folder / 'notebook.py'
    script.write_text(notebook_script(load(name)))
    log = folder / 'log.txt'
    with open(log, 'w') as out:
      process = subprocess.Popen([sys.executable, str(script)], cwd=folder,
                                 env=dict(env), stdout=out,
                                 stderr=subprocess.STDOUT)
    if from_source:  # One pip at a time into the environment.
      try:
        process.wait(timeout=TIMEOUT_S)
      except subprocess.TimeoutExpired:
        process.kill()
    runs[name] = (process, folder, log)
  yield runs
  for process, _, _ in runs.values():
    if process.poll() is None:
      process.kill()
      process.wait()


def _panels_exist(predictions_json):
  with open(predictions_json) as f:
    panels = json.load(f)
  assert panels['files']
  for name in panels['files']:
    with open(os.path.join(panels['directory'], name), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n', name
  return panels


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(NOTEBOOKS))
def test_notebook_runs_in_smoke_mode(name, smoke_runs):
  process, folder, log = smoke_runs[name]
  try:
    returncode = process.wait(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    process.kill()
    returncode = 'timeout'
  output = log.read_text(errors='replace')
  assert returncode == 0, f'{name} exited {returncode}:\n{output[-5000:]}'
  run_dir, artefacts = NOTEBOOKS[name]
  base = folder / 'kdseg_runs' / run_dir
  missing = [a for a in artefacts if not (base / a).exists()]
  assert not missing, f'{name} left no {missing}:\n{output[-3000:]}'

  panels = _panels_exist(base / _PREDICTIONS)
  assert panels['columns'] == LAST_PANEL_COLUMNS[name]
  if name == 'custom_data.ipynb':
    with open(base / 'student' / 'eval.json') as f:
      assert 0 <= json.load(f)['miou'] <= 1
  else:
    with open(base / 'student' / 'benchmark.json') as f:
      rows = json.load(f)['models']
    assert set(rows) == {'teacher', 'student'}
    assert all(r['images_per_s'] > 0 for r in rows.values())
  if name == 'quickstart.ipynb':
    with open(base / 'student' / 'export.json') as f:
      exported = json.load(f)
    assert exported['agreement'] > 0.999  # SavedModel vs JAX student.
