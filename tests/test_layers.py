"""kdseg's imports run one way: each module imports from its own layer or the
layers below, there are no import cycles, and imports inside functions are
only the deliberately lazy ones listed here.

ARCHITECTURE.md draws the layers. A new module gets a layer in `LAYERS`.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Bottom first. A module is named by its first component under kdseg
# (`kdseg.data.camvid` belongs to `data`).
LAYERS = (
    ('base', {'compiler', 'ops', 'progress', 'logs', 'stats', 'preemption',
              'workdir_lock', 'checkpoint_integrity', 'parallel',
              'precise_bn', 'fields', 'files', 'configs', '_bundle'}),
    ('models and losses', {'models', 'losses', 'metrics', 'schedules', 'optim',
                           'forward'}),
    ('data', {'data', 'visualize'}),
    ('distillation', {'teachers', 'terms', 'connectors', 'stages',
                      'teacher_cache', 'inference'}),
    ('config', {'config'}),
    ('training', {'train_state', 'train_step', 'checkpoint', 'convert', 'build',
                  'evaluate', 'train'}),
    ('tools', {'predict', 'benchmark', 'export', 'litert', 'compare',
               'cache_teacher', 'modes'}),
    ('command line', {'main'}),
)

# Imports inside functions, each for a reason: (importing module, imported).
LAZY = {
    # Config files import kdseg.config; they must load without JAX or
    # TensorFlow, which validation's registries bring.
    ('config', 'data'), ('config', 'models'), ('config', 'schedules'),
    ('config', 'stages'),
    # TensorFlow Datasets builders, loaded when their data set is asked for.
    ('data', 'data'), ('teacher_cache', 'data'),
}


def _unit(module: str, package: str) -> str:
  parts = module.split('.')
  return parts[1] if len(parts) > 1 and parts[0] == package else ''


def import_edges(root: str, package: str):
  """(importer, imported, lazy, file:line) for every import of `package`'s
  modules by `package`'s modules, by unit (first component)."""
  edges = []
  base = os.path.join(root, package)
  for folder, _, files in os.walk(base):
    for name in sorted(files):
      if not name.endswith('.py'):
        continue
      path = os.path.join(folder, name)
      relative = os.path.relpath(path, root)[:-3].replace(os.sep, '.')
      importer = _unit(relative, package) or '__init__'
      with open(path) as f:
        tree = ast.parse(f.read())
      functions = [n for n in ast.walk(tree) if isinstance(
          n, (ast.FunctionDef, ast.AsyncFunctionDef))]
      inside = {id(n) for fn in functions for n in ast.walk(fn)}
      for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
          targets = [node.module] + [f'{node.module}.{a.name}'
                                     for a in node.names]
          target = targets[1] if node.module == package else targets[0]
        elif isinstance(node, ast.Import):
          target = node.names[0].name
        else:
          continue
        imported = _unit(target, package)
        if imported and imported != '__init__':
          edges.append((importer, imported, id(node) in inside,
                        f'{os.path.relpath(path, root)}:{node.lineno}'))
  return edges


def find_cycle(edges) -> list[str]:
  """One import cycle among units (['a', 'b', 'a']), or [] when none."""
  graph = {}
  for importer, imported, _, _ in edges:
    if importer != imported:
      graph.setdefault(importer, set()).add(imported)
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 'open':
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = 'done'
    return []

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return []


def _layer_of():
  return {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}


def test_every_module_has_a_layer():
  units = {importer for importer, _, _, _ in import_edges(ROOT, 'kdseg')}
  units |= {imported for _, imported, _, _ in import_edges(ROOT, 'kdseg')}
  units |= {name[:-3] if name.endswith('.py') else name
            for name in os.listdir(os.path.join(ROOT, 'kdseg'))
            if not name.startswith(('_', '.'))}
  units.discard('__init__')
  missing = sorted(units - set(_layer_of()))
  assert not missing, f'give these modules a layer in LAYERS: {missing}'


def test_imports_run_one_way():
  layer = _layer_of()
  upward = [f'{where}: {a} ({LAYERS[layer[a]][0]}) imports {b} '
            f'({LAYERS[layer[b]][0]})'
            for a, b, _, where in import_edges(ROOT, 'kdseg')
            if a in layer and b in layer and layer[b] > layer[a]]
  assert not upward, '\n'.join(upward)


def test_no_import_cycles():
  cycle = find_cycle(import_edges(ROOT, 'kdseg'))
  assert not cycle, ' -> '.join(cycle)


def test_imports_inside_functions_are_the_listed_lazy_ones():
  unlisted = [f'{where}: {a} imports {b} inside a function'
              for a, b, lazy, where in import_edges(ROOT, 'kdseg')
              if lazy and (a, b) not in LAZY]
  assert not unlisted, '\n'.join(unlisted)


def _package(tmp_path, files: dict[str, str]) -> str:
  for name, text in files.items():
    path = tmp_path / 'pkg' / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return str(tmp_path)


@pytest.mark.parametrize('files, cycle', [
    # Planted: a function-level import closes the loop.
    ({'__init__.py': '', 'a.py': 'from pkg import b\n',
      'b.py': 'def f():\n  from pkg import a\n'}, ['a', 'b', 'a']),
    # Through a sub-package's module, three long.
    ({'__init__.py': '', 'a.py': 'import pkg.b.inner\n',
      'b/__init__.py': '', 'b/inner.py': 'from pkg.c import x\n',
      'c.py': 'from pkg import a\nx = 1\n'}, ['a', 'b', 'c', 'a']),
    ({'__init__.py': '', 'a.py': 'from pkg import b\n', 'b.py': ''}, []),
])
def test_the_cycle_check_finds_a_planted_cycle(tmp_path, files, cycle):
  root = _package(tmp_path, files)
  assert find_cycle(import_edges(root, 'pkg')) == cycle
