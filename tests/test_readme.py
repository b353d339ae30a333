"""The README's functional-API examples run as written."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _api_blocks() -> list[str]:
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  section = text.split('## The functional API', 1)[1].split('\n## ', 1)[0]
  return re.findall(r'```python\n(.*?)```', section, flags=re.S)


def test_functional_api_examples_run():
  blocks = _api_blocks()
  assert len(blocks) >= 2
  scope = {}
  exec(compile(blocks[0], 'README block 1', 'exec'), scope)  # pylint: disable=exec-used
  assert float(scope['total']) > 0 and set(scope['terms']) >= {'ce', 'kd'}
  exec(compile(blocks[1], 'README block 2', 'exec'), scope)  # pylint: disable=exec-used
  assert float(scope['metrics']['loss']) > 0
