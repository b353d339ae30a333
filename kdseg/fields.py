"""Config fields read one way: as plain dicts, and with errors that name them.

Every validation error of kdseg reads `config.<key>: <problem>`, so that a
user finds the field to change; `fail` writes it. Sub-configs arrive as
ConfigDicts or plain mappings; `plain` makes a ConfigDict a dict.
"""

from typing import Any, NoReturn


def plain(value: Any) -> Any:
  """A ConfigDict as a (nested) dict; anything else unchanged."""
  return value.to_dict() if hasattr(value, 'to_dict') else value


def fail(key: str, problem: str) -> NoReturn:
  """Raises ValueError('config.<key>: <problem>'); `key` may start with
  'config.' already."""
  path = key if key.startswith('config.') else f'config.{key}'
  raise ValueError(f'{path}: {problem}')
