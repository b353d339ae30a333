"""Finds the recipe configs (`configs/*.py`) with or without a checkout.

In a checkout they are `./configs`. An installed kdseg (a wheel in Colab, say)
carries a copy in `kdseg/_bundle/configs`: `put_on_path()` makes `import
configs` find it, and `resolve()` maps `configs/<name>.py` on the command line
to it when the working directory has no such file.
"""

import importlib.util
import os
import sys

BUNDLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), '_bundle')
_FLAG = '--config'


def has_recipes(folder: str) -> bool:
  return os.path.isfile(os.path.join(folder, 'configs', 'recipes.py'))


def put_on_path() -> str:
  """Makes `import configs` give kdseg's recipes; returns their parent folder.

  A `configs` package with kdseg's `recipes.py` that is importable already
  (the working directory is a checkout) is kept.
  """
  spec = importlib.util.find_spec('configs')
  for folder in (spec.submodule_search_locations or []) if spec else []:
    if os.path.isfile(os.path.join(folder, 'recipes.py')):
      return os.path.dirname(os.path.abspath(folder))
  if not has_recipes(BUNDLE):
    raise FileNotFoundError(
        f'kdseg\'s recipe configs are missing from {BUNDLE}: reinstall kdseg '
        '(pip install --force-reinstall kdseg-*.whl) or run from a checkout.')
  sys.path.insert(0, BUNDLE)
  return BUNDLE


def resolve(path: str) -> str:
  """`configs/<name>.py[:variant]` -> the bundled file where `path` is absent.

  Any other path, and one that exists, is returned unchanged (a missing one
  then fails in the config loader, naming it).
  """
  file, sep, variant = path.partition(':')
  if os.path.exists(file) or not os.path.normpath(file).startswith(
      'configs' + os.sep):
    return path
  bundled = os.path.join(BUNDLE, os.path.normpath(file))
  if not os.path.isfile(bundled):
    return path
  put_on_path()
  return bundled + sep + variant


def resolve_argv(argv: list[str]) -> list[str]:
  """`argv` with its `--config` value passed through `resolve`."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith(_FLAG + '='):
      out[i] = _FLAG + '=' + resolve(arg[len(_FLAG) + 1:])
    elif arg == _FLAG and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
  return out
