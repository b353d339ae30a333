"""`train`: the one training loop, for modes 'train' and 'distill'.

Supervised training (a teacher or a baseline student) and distillation (a
student plus a frozen teacher) are the same loop; the teacher is
configuration. `kdseg.modes.run` calls it for the command line, notebooks
and tests.
"""

import dataclasses
import functools
import itertools
import json
import os
import time
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kdseg import build
from kdseg import checkpoint
from kdseg import compiler
from kdseg import config as config_lib
from kdseg import connectors as connectors_lib
from kdseg import convert
from kdseg import data as data_lib
from kdseg import evaluate as evaluate_lib
from kdseg import forward
from kdseg import inference
from kdseg import models
from kdseg import optim
from kdseg import parallel
from kdseg import precise_bn
from kdseg import preemption
from kdseg import progress
from kdseg import stages as stages_lib
from kdseg import teachers as teachers_lib
from kdseg import terms as terms_lib
from kdseg import train_state as state_lib
from kdseg import train_step as step_lib
from kdseg import visualize
from kdseg import workdir_lock


class NonFiniteLossError(RuntimeError):
  """The loss or a gradient became NaN/Inf; the run stopped."""


def _write_scalars(writer, step: int, scalars: dict[str, float]) -> None:
  if writer is not None:
    for name, value in scalars.items():
      writer.scalar(name, value, step)
    writer.flush()


def _summary_writer(workdir: str):
  if jax.process_index() != 0:
    return None
  from flax.metrics import tensorboard  # Imports TensorFlow lazily.
  return tensorboard.SummaryWriter(os.path.join(workdir, 'tensorboard'))


def _check_finite(step: int, metrics: dict[str, Any],
                  saved: Optional[int] = None) -> None:
  metrics = jax.device_get(metrics)
  if metrics['finite'] > 0:
    return
  bad = [name for name, value in metrics.items()
         if name not in ('finite',) and not np.isfinite(value)]
  kept = ('no checkpoint was saved before it' if saved is None else
          f'the checkpoint of step {saved} is intact and a rerun resumes '
          'from it')
  raise NonFiniteLossError(
      f'Non-finite values at step {step} in '
      f'{bad or ["gradients or updated parameters"]} '
      f'(loss terms: { {k: float(v) for k, v in metrics.items()} }). The run '
      f'stopped; {kept}. Lower the learning rate '
      '(config.train.learning_rate) or enable clipping '
      '(config.train.grad_clip_norm).')


# Checkpoint meta fields that must match for a run to resume: a different
# model, class count, data set or mode is another run.
_RESUME_FIELDS = ('model', 'model_options', 'num_classes', 'dataset', 'mode')


def _run_meta(config, class_names) -> dict[str, Any]:
  # Tools read the classes from here: a trained model exports, benchmarks
  # and segments a folder of images without its data set.
  return {'model': config.model.name,
          'model_options': build.options(config.model.options),
          'num_classes': len(class_names), 'class_names': list(class_names),
          'mode': config.mode, 'dataset': config.data.name}


def _check_resumable(meta: dict[str, Any], stored: dict[str, Any], step: int,
                     directory: str) -> None:
  # Older checkpoints lack some fields: only the stored ones are compared.
  differ = [f'{key}: checkpoint {stored[key]!r}, config {meta[key]!r}'
            for key in _RESUME_FIELDS
            if key in stored and stored[key] != meta[key]]
  if differ:
    raise ValueError(
        f'The checkpoint of step {step} in {directory} was written by a '
        'differently configured run (' + '; '.join(differ) + '). Resuming '
        'would mix the two: give another --workdir, or restore the config.')


@dataclasses.dataclass(frozen=True)
class Trainer:
  """What a run trains with, built once from the config by `_train`.

  Attributes:
    mesh: the device mesh.
    model: the student as trained (synchronised batch norm when configured).
    eval_model: the same module for evaluation.
    tx, lr_fn: the optimizer and its learning-rate schedule.
    stages: the training phases (`kdseg.stages.resolve`).
    stage_terms: each stage's configured distillation terms.
    connectors: their adapters, or None.
    teachers: the teacher set, or None when training without one.
    teacher_variables: the teachers' variables, replicated, or None.
  """
  mesh: Any
  model: nn.Module
  eval_model: nn.Module
  tx: optax.GradientTransformation
  lr_fn: Callable
  stages: tuple
  stage_terms: list
  connectors: Optional[nn.Module] = None
  teachers: Optional[teachers_lib.TeacherSet] = None
  teacher_variables: Any = None


@dataclasses.dataclass(frozen=True)
class Data:
  """The run's sources, and the teacher cache the training batches read
  (lookup, logits size, folder from `build.teacher_cache`) or None."""
  train: Any
  val: Any
  cached: Optional[tuple] = None


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config.model` (with `config.teacher` when mode is 'distill').

  Resumes from the newest intact checkpoint in `workdir`, with the same data
  order; refuses a workdir that another live run holds, or whose
  checkpoints another configuration wrote. Returns the run's result: final
  validation metrics, parameters, speed. Raises `preemption.Preempted`
  after saving when stopped by SIGTERM/SIGINT.
  """
  if jax.process_index() != 0:
    return _train(config, workdir)
  with workdir_lock.hold(workdir):
    return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  distill = config.mode == 'distill'
  mesh = parallel.make_mesh()
  train_source, val_source = build.get_sources(config)
  num_classes = train_source.num_classes
  axis = parallel.AXIS if config.train.sync_batch_stats else None
  model = build.create_model(config, 'model', num_classes, axis_name=axis)
  eval_model = build.create_model(config, 'model', num_classes)
  stages = stages_lib.resolve(config)
  teachers = teacher_variables = None
  stage_terms = [()] * len(stages)
  connectors = None
  if distill:
    teachers, teacher_variables, metas = build.load_teachers(config,
                                                             num_classes)
    for label, spec in teachers_lib.specs(config).items():
      named = '' if label == teachers_lib.PRIMARY else f' ({label!r})'
      progress.write(f'Teacher {spec["name"]}{named} restored from '
                     f"{spec['checkpoint']} (step {metas[label].get('step')}).")
    teacher_variables = parallel.replicate(teacher_variables, mesh)
    stage_terms = [stages_lib.terms(stage, tuple(teachers))
                   for stage in stages]
    connectors = create_connectors(
        [t for ts in stage_terms for t in ts], eval_model, teachers,
        build.image_shape(config), axis_name=axis)

  lr_fn = optim.create_learning_rate_fn(config)
  tx = optim.create_optimizer(config, lr_fn)
  trainer = Trainer(mesh=mesh, model=model, eval_model=eval_model, tx=tx,
                    lr_fn=lr_fn, stages=stages, stage_terms=stage_terms,
                    connectors=connectors, teachers=teachers,
                    teacher_variables=teacher_variables)
  meta = _run_meta(config, val_source.class_names)
  saver = checkpoint.Saver(workdir, keep=config.train.keep_checkpoints)
  abstract = state_lib.abstract_train_state(model, tx, build.image_shape(config),
                                            connectors=connectors)
  state, _ = saver.restore(abstract, check_meta=functools.partial(
      _check_resumable, meta, directory=saver.directory))
  if state is not None:
    progress.write(f'Resumed from {saver.directory} at step '
                   f'{int(state.step)}.')
  else:
    # Initialise by shape: jit writes the state straight into its sharding.
    state = compiler.jit(
        functools.partial(state_lib.create_train_state, model, tx,
                          image_shape=build.image_shape(config),
                          connectors=connectors),
        out_shardings=parallel.replicated(mesh))(
            jax.random.PRNGKey(config.seed))
    # Pretrained weights (a converted torchvision model or backbone): only on
    # a fresh start, never over a resumed state.
    state = convert.init_state_from(state, config.model.init_from)
  state = parallel.replicate(state, mesh)
  start = int(jax.device_get(state.step))
  total = config.train.steps

  if start >= total:
    print(f'{workdir}: training already complete ({start}/{total} steps); '
          'evaluating the final checkpoint.')
    result = evaluate_lib.evaluate(
        eval_model, state.params, state.batch_stats, val_source, mesh=mesh,
        batch_size=config.eval.batch_size, pad_to=config.data.eval_pad_to,
        progress_bar=config.train.progress_bar)
    print(f"{config.model.name} step {start}: validation mIoU "
          f"{result['miou']:.4f}, pixel accuracy "
          f"{result['pixel_accuracy']:.4f}", flush=True)
  else:
    # The loop evaluates (and saves) at the last step: reuse that result.
    train_source = build.decode_once(config, train_source)
    val_source = build.decode_once(config, val_source)
    cached = None
    if distill and config.teacher.cache:
      cached = build.teacher_cache(config, teachers, teacher_variables,
                                   metas, stage_terms, train_source)
    state, result = _run_loop(
        config, workdir, trainer, Data(train_source, val_source, cached),
        state=state, saver=saver, meta=meta)
  saver.close()

  result['params'] = models.count_params(state.params)
  result['step'] = int(jax.device_get(state.step))
  timing_path = os.path.join(workdir, 'train_speed.json')
  if os.path.exists(timing_path):
    with open(timing_path) as f:
      result.update(json.load(f))
  return result


def create_connectors(terms, student, teachers, shape, *, axis_name=None):
  """The adapters that `terms` need (`kdseg.connectors`), or None.

  Args:
    terms: the terms of every stage.
    student: the student module.
    teachers: label -> `kdseg.teachers.Teacher`, the primary first.
    shape: the training image shape (H, W, 3).
    axis_name: the device axis of the adapters' batch norm, or None.
  """
  if not terms:
    return None
  student_shapes = forward.output_shapes(student, shape)
  teacher_shapes = {label: forward.output_shapes(t.module, shape)
                    for label, t in teachers.items()}
  plan = connectors_lib.plan(
      (t, *terms_lib.map_shapes(t, student_shapes, teacher_shapes))
      for t in terms)
  return connectors_lib.create(plan, axis_name=axis_name)


def _stage_step(config, trainer: Trainer, stage, ignore_index: int):
  """The mapped training step of one stage."""
  step_fn = step_lib.make_train_step(
      trainer.model, trainer.tx, lr_fn=trainer.lr_fn,
      temperature_fn=stages_lib.temperature_fn(stage), loss_config=stage.loss,
      teachers=trainer.teachers, terms=trainer.stage_terms[stage.index],
      connectors=trainer.connectors, ignore_index=ignore_index,
      axis_name=parallel.AXIS, quantize=stage.quantize)
  if config.parallel.backend == 'pmap':
    return parallel.pmap_over_devices(step_fn, batch_argnums=(1,),
                                      num_args=3)
  return parallel.map_over_devices(step_fn, trainer.mesh, batch_argnums=(1,),
                                   num_args=3, donate_argnums=(0,))


def _precise_bn_fn(config, eval_model, train_source, per_process):
  """params, batch_stats -> recomputed statistics (`kdseg.precise_bn`), or
  None when config.train.precise_bn_batches is 0.

  The batches are the same at every evaluation: training augmentation, a
  seed of their own, independent of the training order.
  """
  count = int(config.train.precise_bn_batches)
  if not count:
    return None
  dataset = data_lib.build_train_dataset(
      train_source, batch_size=per_process, crop_size=config.data.crop_size,
      seed=config.seed + 1, process_index=jax.process_index(),
      process_count=jax.process_count(), start_step=0,
      scale_range=config.data.scale_range, hflip=config.data.hflip,
      photometric=config.data.photometric)
  recompute = precise_bn.make_recompute(eval_model)
  device = jax.local_devices()[0]

  def local(tree):
    # One replica, on this process's first device: each process averages
    # its own batches (precise_bn averages the processes).
    return jax.device_put(jax.tree.map(
        lambda x: np.asarray(x.addressable_data(0)), tree), device)

  def population_stats(params, batch_stats):
    images = (b['image'] for b in itertools.islice(
        dataset.as_numpy_iterator(), count))
    return recompute(local(params), local(batch_stats), images)

  return population_stats


def _run_loop(config, workdir, trainer: Trainer, data: Data, *, state, saver,
              meta) -> tuple[Any, dict[str, Any]]:
  """Steps from `state.step` to `config.train.steps`, evaluating and saving.

  Each stage's step is compiled when the loop first reaches it (a resumed
  run starts in the stage of its step). Returns the final state and its
  validation result (the loop always evaluates at the last step).
  """
  total = config.train.steps
  start = int(jax.device_get(state.step))
  mesh, eval_model, stages = trainer.mesh, trainer.eval_model, trainer.stages
  train_source, val_source, cached = data.train, data.val, data.cached
  compiled = {}

  def step_for(step: int):
    stage = stages_lib.at(stages, step)
    if stage.index not in compiled:
      if len(stages) > 1:
        progress.write(
            f'Stage {stage.index + 1}/{len(stages)}: steps {stage.start}-'
            f'{stage.end}, terms '
            f'{[t.label for t in trainer.stage_terms[stage.index]]}.')
      compiled[stage.index] = _stage_step(config, trainer, stage,
                                          train_source.ignore_index)
    return compiled[stage.index]

  per_process = config.train.batch_size // jax.process_count()
  dataset = data_lib.build_train_dataset(
      train_source, batch_size=per_process, crop_size=config.data.crop_size,
      seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), start_step=start,
      scale_range=config.data.scale_range, hflip=config.data.hflip,
      photometric=config.data.photometric,
      teacher_logits=cached[0] if cached else None,
      logits_size=cached[1] if cached else None)
  batches = dataset.as_numpy_iterator()
  population_stats = _precise_bn_fn(config, eval_model, train_source,
                                    per_process)
  writer = _summary_writer(workdir)
  if writer is not None:
    # A fixed validation batch, pictured at every evaluation.
    panel_batch = next(data_lib.build_eval_dataset(
        val_source, batch_size=4, pad_to=config.data.eval_pad_to)[0]
                       .as_numpy_iterator())
    colours = visualize.palette(config.data.name, val_source.num_classes)
  bar = progress.bar(total=total, initial=start, desc=config.model.name,
                     enabled=config.train.progress_bar)
  previous = None  # (step, metrics) checked one step late to keep dispatching.
  # Training speed excludes the first step (compilation) and evaluations.
  speed = {'steps': 0, 'seconds': 0.0}
  mark = None  # (time, step) since which training time is counted.
  saved = {'step': start if start else None, 'time': time.monotonic()}
  every = int(config.train.checkpoint_every)
  minutes = float(config.train.checkpoint_minutes)

  def check_finite():
    _check_finite(*previous, saved=saved['step'])

  def save(miou=None, extra_meta=None):
    check_finite()
    saved['step'] = saver.save(state, meta={**meta, **(extra_meta or {})},
                               miou=miou)
    saved['time'] = time.monotonic()

  stop = preemption.StopSignals()
  try:
    stop.__enter__()
    for step in range(start, total):
      batch = parallel.shard_batch(next(batches), mesh)
      state, metrics = step_for(step)(state, batch, trainer.teacher_variables)
      if previous is not None:
        check_finite()
      previous = (step + 1, metrics)
      done = step + 1
      saver.poll()
      if mark is None:
        jax.block_until_ready(metrics)
        mark = (time.perf_counter(), done)
      if done % config.train.log_every == 0 or done == total:
        check_finite()
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()
                   if k != 'finite'}
        _write_scalars(writer, done,
                       {f'train/{k}': v for k, v in scalars.items()})
        bar.set_postfix(loss=f"{scalars['loss']:.4f}",
                        lr=f"{scalars['learning_rate']:.3g}",
                        T=f"{scalars['temperature']:.3g}")
        progress.write(f'{config.model.name} step {done}: ' + ', '.join(
            f'{k} {v:.4g}' for k, v in sorted(scalars.items())))
      bar.update(1)
      if done % config.train.eval_every == 0 or done == total:
        check_finite()
        # A save still running (slow disk, busy machine) must have succeeded
        # before the run spends an evaluation on a state it may not keep.
        saver.finish()
        jax.block_until_ready(state)
        speed['seconds'] += time.perf_counter() - mark[0]
        speed['steps'] += done - mark[1]
        if population_stats is not None:
          state = state.replace(batch_stats=parallel.replicate(
              population_stats(state.params, state.batch_stats), mesh))
        result = evaluate_lib.evaluate(
            eval_model, state.params, state.batch_stats, val_source, mesh=mesh,
            batch_size=config.eval.batch_size, pad_to=config.data.eval_pad_to,
            progress_bar=False)
        _write_scalars(writer, done, {
            'val/miou': result['miou'],
            'val/pixel_accuracy': result['pixel_accuracy']})
        if writer is not None:
          student = inference.predict_classes(
              eval_model, {'params': state.params,
                           'batch_stats': state.batch_stats},
              panel_batch['image'])
          writer.image('val/predictions', visualize.batch_panels(
              panel_batch['image'], panel_batch['label'], student=student,
              colours=colours, class_names=val_source.class_names),
                       done, max_outputs=4)
        progress.write(f'{config.model.name} step {done}: validation mIoU '
                       f"{result['miou']:.4f}, pixel accuracy "
                       f"{result['pixel_accuracy']:.4f}")
        save(result['miou'], {'val': {
            'miou': result['miou'],
            'pixel_accuracy': result['pixel_accuracy']}})
        mark = (time.perf_counter(), done)
      elif ((every and done % every == 0) or
            (minutes and time.monotonic() - saved['time'] >= 60 * minutes)):
        save()
      signum = stop.requested()
      if signum is not None and done < total:
        bar.close()
        save()
        saver.finish()
        raise preemption.Preempted(signum, done, saver.directory)
  except BaseException:
    # Finish saves already started: they hold good states. Their failure
    # must not hide the error that stopped the run.
    try:
      saver.finish()
    except checkpoint.CheckpointSaveError as e:
      progress.write(str(e))
    raise
  else:
    saver.finish()
  finally:
    stop.__exit__()
    bar.close()
    if writer is not None:
      writer.close()
  if jax.process_index() == 0 and speed['steps']:
    with open(os.path.join(workdir, 'train_speed.json'), 'w') as f:
      json.dump({'train_images_per_s': speed['steps'] *
                 config.train.batch_size / speed['seconds']}, f)
  return state, result
