"""Orbax checkpoints of a run: `WORKDIR/checkpoints/<step>/{model,train,meta}`.

- `model`: {'params', 'batch_stats'} of the trained network: what a teacher
  restore or an export reads. The teacher of a distillation run is never in
  here; neither is anything but the student.
- `train`: {'opt_state', 'step', 'rng'}, needed only to resume, plus
  {'connector_params', 'connector_stats'} when distillation terms train
  connector adapters (`kdseg.connectors`).
- `meta`: JSON {'step', 'model', 'num_classes', 'metrics'}.

Saves are atomic (Orbax writes to a temporary folder and renames it), so an
interrupted or failed run never leaves a half-written checkpoint behind. The
manager keeps the latest `keep` checkpoints plus the best by validation mIoU.
"""

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from kdseg.train_state import TrainState



def _handlers() -> dict[str, ocp.CheckpointHandler]:
  return {'model': ocp.StandardCheckpointHandler(),
          'train': ocp.StandardCheckpointHandler(),
          'meta': ocp.JsonCheckpointHandler()}


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def create_manager(workdir: str, *, keep: int = 2,
                   async_save: bool = True) -> ocp.CheckpointManager:
  """A manager keeping the latest `keep` checkpoints and the best by mIoU."""
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=keep),
      checkpoint_managers.BestN(get_metric_fn=lambda m: m['miou'], n=1,
                                keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, enable_async_checkpointing=async_save,
      create=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_handlers=_handlers())


def save(manager: ocp.CheckpointManager, state: TrainState, *,
         meta: dict[str, Any], miou: Optional[float]) -> None:
  """Saves `state` at its step (asynchronously when the manager is async)."""
  step = int(jax.device_get(state.step))
  metrics = None if miou is None else {'miou': float(miou)}
  manager.save(step, args=ocp.args.Composite(
      model=ocp.args.StandardSave({'params': state.params,
                                   'batch_stats': state.batch_stats}),
      train=ocp.args.StandardSave(_train_item(state)),
      meta=ocp.args.JsonSave({**meta, 'step': step})), metrics=metrics)


def _train_item(state: TrainState) -> dict[str, Any]:
  # Connector adapters only serve training: they resume with it, and never
  # enter the 'model' item that evaluation and teacher restores read.
  item = {'opt_state': state.opt_state, 'step': state.step, 'rng': state.rng}
  if state.connector_params:
    item.update(connector_params=state.connector_params,
                connector_stats=state.connector_stats)
  return item


def restore_state(manager: ocp.CheckpointManager, abstract: TrainState,
                  step: Optional[int] = None) -> TrainState:
  """Restores the full state at `step` (default: the latest)."""
  step = manager.latest_step() if step is None else step
  restored = manager.restore(step, args=ocp.args.Composite(
      model=ocp.args.StandardRestore({'params': abstract.params,
                                      'batch_stats': abstract.batch_stats}),
      train=ocp.args.StandardRestore(_train_item(abstract))))
  model, train = restored['model'], restored['train']
  return TrainState(step=train['step'], params=model['params'],
                    batch_stats=model['batch_stats'],
                    opt_state=train['opt_state'], rng=train['rng'],
                    connector_params=train.get('connector_params', {}),
                    connector_stats=train.get('connector_stats', {}))


def save_variables(directory: str, variables: Any, meta: dict[str, Any], *,
                   step: int = 0) -> str:
  """Writes model variables alone as a workdir checkpoint; returns its path.

  `DIRECTORY/checkpoints/<step>/{model,meta}`: what `restore_model_variables`
  (a teacher restore, mode 'evaluate') reads from a training run, without
  the 'train' item, so the directory cannot be resumed as a run.

  Args:
    directory: the workdir-like folder; created if needed.
    variables: {'params', 'batch_stats'} (NumPy or JAX arrays).
    meta: JSON-serialisable facts (model, num_classes, source...); 'step' is
      added.
    step: the step number the checkpoint is filed under.
  """
  manager = ocp.CheckpointManager(
      checkpoint_dir(directory),
      options=ocp.CheckpointManagerOptions(
          create=True, enable_async_checkpointing=False),
      item_handlers=_handlers())
  manager.save(step, args=ocp.args.Composite(
      model=ocp.args.StandardSave(variables),
      meta=ocp.args.JsonSave({**meta, 'step': step})))
  manager.wait_until_finished()
  manager.close()
  return os.path.join(checkpoint_dir(directory), str(step))


def _resolve(path: str) -> str:
  path = os.path.abspath(path)
  nested = os.path.join(path, 'checkpoints')
  return nested if os.path.isdir(nested) else path


def restore_model_variables(path: str, abstract_variables: Any = None, *,
                            which: str = 'best') -> tuple[Any, dict]:
  """Restores {'params', 'batch_stats'} from a run's workdir (read-only).

  Args:
    path: a training run's workdir (or a `save_variables` directory), or its
      `checkpoints/` folder.
    abstract_variables: the expected {'params', 'batch_stats'} shapes, e.g.
      from `jax.eval_shape` of the model's init; None restores what is
      stored, as NumPy arrays, unchecked.
    which: 'best' (by validation mIoU; the latest when none was evaluated) or
      'latest'.

  Returns:
    (variables, meta).

  Raises:
    ValueError: no checkpoint there, or its shapes differ from the model's
      (naming the first mismatching parameters, e.g. a class-count change).
  """
  directory = _resolve(path)
  if not os.path.isdir(directory):
    raise ValueError(f'No checkpoint folder at {directory!r}: give the '
                     'workdir of a finished training run.')
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers=_handlers())
  step = manager.best_step() if which == 'best' else None
  step = manager.latest_step() if step is None else step
  if step is None:
    raise ValueError(f'No checkpoint in {directory!r}: the run saved none yet.')
  meta = manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))['meta']
  stored = manager.item_metadata(step)['model']
  if stored is None:
    raise ValueError(f'The checkpoint at step {step} in {directory!r} has no '
                     'model item: is it a kdseg workdir?')
  if abstract_variables is None:
    abstract_variables = jax.tree.map(
        lambda m: np.zeros(m.shape, m.dtype), dict(stored.tree))
  else:
    _check_shapes(stored, abstract_variables, directory)
  variables = manager.restore(step, args=ocp.args.Composite(
      model=ocp.args.StandardRestore(abstract_variables)))['model']
  manager.close()
  return variables, dict(meta)


def _check_shapes(stored: Any, expected: Any, directory: str) -> None:
  stored_flat = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
                 jax.tree_util.tree_flatten_with_path(stored)[0]}
  expected_flat = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
                   jax.tree_util.tree_flatten_with_path(expected)[0]}
  problems = []
  for key in sorted(set(stored_flat) | set(expected_flat)):
    got, want = stored_flat.get(key), expected_flat.get(key)
    if got != want:
      problems.append(f'{key}: checkpoint {got}, model {want}')
  if problems:
    raise ValueError(
        f'The checkpoint in {directory!r} does not fit the configured model '
        f'({len(problems)} mismatches; a different architecture or class '
        'count?). First: ' + '; '.join(problems[:5]))
