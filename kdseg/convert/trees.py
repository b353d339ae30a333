"""Variable trees as flat {'collection/module/.../leaf': leaf} dicts."""

from typing import Any, Mapping

import jax


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """{'params': {'a': {'kernel': x}}} -> {'params/a/kernel': x}."""
  return {'/'.join(str(k.key) for k in path): leaf for path, leaf in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `flatten`: nested plain dicts."""
  out: dict[str, Any] = {}
  for path, leaf in flat.items():
    *parents, name = path.split('/')
    node = out
    for part in parents:
      node = node.setdefault(part, {})
    node[name] = leaf
  return out
