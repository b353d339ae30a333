"""Orbax checkpoints of a run: `WORKDIR/checkpoints/<step>/{model,train,meta}`.

- `model`: {'params', 'batch_stats'} of the trained network: what a teacher
  restore or an export reads. The teacher of a distillation run is never in
  here; neither is anything but the student.
- `train`: {'opt_state', 'step', 'rng'}, needed only to resume, plus
  {'connector_params', 'connector_stats'} when distillation terms train
  connector adapters (`kdseg.connectors`).
- `meta`: JSON {'step', 'model', 'model_options', 'num_classes', 'mode',
  'dataset', 'val'}.

Saves are atomic (Orbax writes to a temporary folder and renames it), so
an interrupted or failed run never leaves a half-written checkpoint behind.
The manager keeps the latest `keep` checkpoints plus the best by validation
mIoU (recorded with each evaluated save; saves between evaluations carry no
mIoU and only count as latest). A `Saver` runs a training run's saves: it
seals each finished step with checksums (`kdseg.checkpoint_integrity`),
stops the run as soon as a background save fails, and restores the newest
intact step.
"""

import errno
import glob
import os
import shutil
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from kdseg import checkpoint_integrity as integrity
from kdseg import progress
from kdseg.train_state import TrainState


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written; the run stopped."""


class DamagedCheckpointError(RuntimeError):
  """No intact checkpoint is left to restore."""


def _miou(metrics: dict[str, Any]) -> float:
  return metrics['miou']


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
      checkpoint_managers.BestN(get_metric_fn=_miou, n=1,
                                keep_checkpoints_without_metrics=False),
  ])
  # `best_fn` makes Orbax write each save's metrics and answer best_step();
  # the preservation policy alone does neither.
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, best_fn=_miou, best_mode='max',
      enable_async_checkpointing=async_save, create=True)
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


def step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def _restore_problem(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'[:300]


def restore_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return dict(manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))['meta'])


def restore_latest_intact(
    manager: ocp.CheckpointManager, abstract: TrainState, *,
    check_meta: Optional[Callable[[dict[str, Any], int], None]] = None
) -> tuple[Optional[TrainState], dict[str, Any]]:
  """The newest intact step's state and meta, or (None, {}) when none is
  saved; damaged steps are moved to WORKDIR/damaged_checkpoints.

  A step is damaged when its checksums do not match (see
  `kdseg.checkpoint_integrity`), or, unsealed, when Orbax cannot read it.
  A sealed step whose checksums match is intact: errors restoring it (a
  different model) propagate. `check_meta(meta, step)` may refuse a step
  before its state is read (e.g. a run configured differently).
  """
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    path = step_dir(manager, step)
    problem = integrity.problem(path)
    sealed = integrity.is_sealed(path)
    if problem is None:
      try:
        meta = restore_meta(manager, step)
      except Exception as e:  # pylint: disable=broad-except
        if sealed:
          raise
        problem = _restore_problem(e)
    if problem is None:
      if check_meta is not None:
        check_meta(meta, step)
      try:
        state = restore_state(manager, abstract, step)
      except Exception as e:  # pylint: disable=broad-except
        if sealed:
          raise
        problem = _restore_problem(e)
    if problem is None:
      for bad_step, bad_problem, moved in damaged:
        progress.write(
            f'Warning: the checkpoint of step {bad_step} is damaged '
            f'({bad_problem}); it was moved to {moved} and the run resumes '
            f'from step {step}, the newest intact one.')
      return state, meta
    moved = integrity.quarantine(path, str(manager.directory))
    damaged.append((step, problem, moved))
    manager.reload()
  if damaged:
    listing = '; '.join(f'step {s}: {p} (moved to {m})'
                        for s, p, m in damaged)
    raise DamagedCheckpointError(
        f'No intact checkpoint in {manager.directory}: {listing}. Nothing '
        'was deleted. To start the run over, move the workdir aside or '
        'give another --workdir.')
  return None, {}


def finished_steps_by_preference(manager: ocp.CheckpointManager,
                                 which: str) -> list[int]:
  """Steps to try for a read-only restore: for 'best', by validation mIoU
  (best first), then the unevaluated ones, newest first; for 'latest',
  newest first."""
  steps = sorted(manager.all_steps(), reverse=True)
  if which != 'best':
    return steps
  scored = []
  for step in steps:
    metrics = manager.metrics(step)
    if metrics is not None and 'miou' in metrics:
      scored.append((float(metrics['miou']), step))
  ranked = [step for _, step in sorted(scored, reverse=True)]
  return ranked + [step for step in steps if step not in ranked]


class Saver:
  """A training run's checkpoints: async saves, sealed with checksums once
  complete, failures stopped at once, the newest intact step restored.

  Only the process that writes (process 0) seals; every process saves its
  shards through Orbax.
  """

  def __init__(self, workdir: str, *, keep: int = 2, async_save: bool = True):
    self.manager = create_manager(workdir, keep=keep, async_save=async_save)
    self.directory = str(self.manager.directory)
    self._pending: list[int] = []
    self._remove_temporaries()

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def restore(self, abstract: TrainState, *, check_meta=None
              ) -> tuple[Optional[TrainState], dict[str, Any]]:
    """See `restore_latest_intact`."""
    return restore_latest_intact(self.manager, abstract,
                                 check_meta=check_meta)

  def save(self, state: TrainState, *, meta: dict[str, Any],
           miou: Optional[float] = None) -> int:
    """Starts saving `state`; returns its step. Raises CheckpointSaveError
    if this or the previous save failed."""
    self.finish()
    step = int(jax.device_get(state.step))
    if step in self.manager.all_steps():
      return step  # Saved already (an evaluation at a periodic save's step).
    try:
      save(self.manager, state, meta=meta, miou=miou)
    except Exception as e:  # pylint: disable=broad-except
      self._fail(step, e)
    self._pending.append(step)
    return step

  def poll(self) -> None:
    """Without blocking: raises CheckpointSaveError if a background save
    failed, and seals the saves that finished."""
    if self._pending and not self.manager.is_saving_in_progress():
      self.finish()

  def finish(self) -> None:
    """Waits for the saves in flight; raises CheckpointSaveError if one
    failed; seals the finished steps."""
    if not self._pending:
      return
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      self._fail(self._pending[-1], e)
    if jax.process_index() == 0:
      for step in self._pending:
        if os.path.isdir(step_dir(self.manager, step)):
          integrity.seal(step_dir(self.manager, step))
    self._pending = []

  def close(self) -> None:
    try:
      self.finish()
    finally:
      self.manager.close()

  def _remove_temporaries(self, settle_s: float = 0.0) -> None:
    # Left by a save that failed or was killed; the workdir lock guarantees
    # that no other run is writing them. After a failure, writes of the
    # save's other items may still land for a moment (Orbax stops waiting
    # at the first error): remove until nothing reappears for `settle_s`.
    if jax.process_index() != 0:
      return
    pattern = os.path.join(self.directory, '*.orbax-checkpoint-tmp*')
    deadline = time.monotonic() + 10 * settle_s
    quiet_since = time.monotonic()
    while True:
      leftovers = glob.glob(pattern)
      for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
      if leftovers:
        quiet_since = time.monotonic()
      if (time.monotonic() - quiet_since >= settle_s or
          time.monotonic() > deadline):
        return
      time.sleep(0.05)

  def _fail(self, step: int, error: Exception) -> None:
    self._pending = []
    self._remove_temporaries(settle_s=0.5)
    self.manager.reload()
    previous = [s for s in sorted(self.manager.all_steps(), reverse=True)
                if s != step]
    if previous:
      path = step_dir(self.manager, previous[0])
      problem = integrity.problem(path)
      size = integrity.size_bytes(path) / 2**20
      before = (f'The previous checkpoint (step {previous[0]}, {size:.1f} MiB) '
                + ('is intact (checksums verified).' if problem is None else
                   f'is damaged too: {problem}.'))
    else:
      size = None
      before = 'No earlier checkpoint exists in this workdir.'
    reason = _restore_problem(error)
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      free = shutil.disk_usage(self.directory).free / 2**20
      need = (f' A checkpoint of this run takes about {size:.1f} MiB.'
              if size else '')
      reason = (f'the disk is full ({free:.1f} MiB free at '
                f'{self.directory}).{need}')
    raise CheckpointSaveError(
        f'Saving the checkpoint of step {step} to {self.directory} failed: '
        f'{reason} The run stopped. {before} Free space (or give another '
        '--workdir) and rerun the same command to resume.') from error


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


def read_meta(path: str) -> dict[str, Any]:
  """The meta (model, num_classes, data set, ...) of the newest finished step
  of a run's workdir, without reading any array; {} when there is none."""
  directory = _resolve(path)
  if not os.path.isdir(directory):
    return {}
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers=_handlers())
  try:
    for step in finished_steps_by_preference(manager, 'latest'):
      if integrity.problem(step_dir(manager, step)) is None:
        return restore_meta(manager, step)
    return {}
  finally:
    manager.close()


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
      directory, options=ocp.CheckpointManagerOptions(
          read_only=True, best_fn=_miou, best_mode='max'),
      item_handlers=_handlers())
  candidates = finished_steps_by_preference(manager, which)
  if not candidates:
    raise ValueError(f'No checkpoint in {directory!r}: the run saved none yet.')
  damaged = []
  for step in candidates:
    problem = integrity.problem(step_dir(manager, step))
    if problem is None:
      try:
        meta = restore_meta(manager, step)
        stored = manager.item_metadata(step)['model']
        break
      except Exception as e:  # pylint: disable=broad-except
        problem = _restore_problem(e)
    damaged.append((step, problem))
  else:
    raise DamagedCheckpointError(
        f'No intact checkpoint in {directory!r}: ' + '; '.join(
            f'step {s}: {p}' for s, p in damaged) + '. Nothing was changed.')
  for bad_step, problem in damaged:
    progress.write(f'Warning: skipped the damaged checkpoint of step '
                   f'{bad_step} in {directory} ({problem}); read step {step}.')
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
  metrics = manager.metrics(step)
  manager.close()
  meta = dict(meta)
  meta.setdefault('step', step)
  # Which checkpoint was read, for the caller to say: the best by mIoU, or
  # the latest when no step was evaluated (or 'latest' was asked for).
  meta['chosen_as'] = 'best' if which == 'best' and metrics else 'latest'
  score = (f", validation mIoU {float(metrics['miou']):.4f}"
           if metrics and 'miou' in metrics else '')
  progress.write(f"Read the {meta['chosen_as']} checkpoint (step {step}"
                 f'{score}) of {directory}.')
  return variables, meta


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
