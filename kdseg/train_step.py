"""The per-device training and evaluation steps.

Both are written once for one device's shard of the batch, with named-axis
collectives over `axis_name` ('data'), and mapped over the devices by
`kdseg.parallel` (shard_map, or pmap). Their results do not depend on the
device count: the objective is one tuple of terms (`kdseg.terms`: the
classic cross-entropy, pixel KD and aux of `config.loss`, then the configured
`loss.terms`), each divided by its global count (a psum of the per-device
counts: labelled pixels for the classic terms, devices for the configured
ones), so each device's loss is its share of the global objective and the
psum of the per-device gradients is the global-batch gradient.
"""

from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import optax

from kdseg import connectors as connectors_lib
from kdseg import forward
from kdseg.ops import fake_quant
from kdseg import losses
from kdseg import metrics
from kdseg import teachers as teachers_lib
from kdseg.teachers import TeacherSet
from kdseg import terms as terms_lib
from kdseg.terms import Term
from kdseg.train_state import TrainState
from kdseg.train_state import join_trainable
from kdseg.train_state import split_trainable


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                    lr_fn: Callable, temperature_fn: Callable,
                    loss_config: Any, teachers: Optional[TeacherSet] = None,
                    terms: Sequence[Term] = (),
                    connectors: Optional[nn.Module] = None,
                    ignore_index: int = 255, axis_name: str = 'data',
                    quantize: str = ''
                    ) -> Callable[..., tuple[TrainState, dict]]:
  """The per-device step `step(state, batch, teacher_variables=None)` of one
  training phase, for `kdseg.parallel` to map over the devices.

  Args:
    model: the student (or the supervised model).
    tx: the optimizer.
    lr_fn, temperature_fn: schedules evaluated at `state.step`.
    loss_config: `config.loss` of the phase; its own fields (ce_weight,
      kd_weight, kd_type, kd_pixels, aux_weight, label_smoothing,
      class_weights) make the classic terms (`kdseg.terms.classic`).
    teachers: the frozen teachers (`kdseg.teachers.TeacherSet`), or None for
      supervised training.
    terms: the configured distillation terms (`kdseg.terms.parse`), summed
      after the classic ones; ignored without teachers.
    connectors: their adapters (`kdseg.connectors.create`), or None.
    ignore_index: label value that counts nowhere.
    axis_name: the device axis.
    quantize: '' or 'int8': the student's forward pass fake-quantized
      (`kdseg.ops.fake_quant`); the teachers stay float.

  Returns:
    `step(state, batch, teacher_variables)`: see `train_step`.
  """
  objective = terms_lib.classic(loss_config, temperature=temperature_fn,
                                distilling=teachers is not None)
  if teachers is not None:
    objective += tuple(terms)
  def step(state, batch, teacher_variables=None):
    return train_step(state, batch, teacher_variables, model=model, tx=tx,
                      lr_fn=lr_fn, temperature_fn=temperature_fn,
                      objective=objective, teachers=teachers,
                      connectors=connectors, ignore_index=ignore_index,
                      axis_name=axis_name, quantize=quantize)
  return step


def train_step(state: TrainState, batch: dict[str, jax.Array],
               teacher_variables: Optional[Mapping[str, Any]] = None, *,
               model: nn.Module, tx: optax.GradientTransformation,
               lr_fn: Callable, temperature_fn: Callable,
               objective: Sequence[Term],
               teachers: Optional[TeacherSet] = None,
               connectors: Optional[nn.Module] = None,
               ignore_index: int = 255,
               axis_name: str = 'data',
               quantize: str = '') -> tuple[TrainState, dict]:
  """One optimisation step on this device's shard of the batch.

  Args:
    state: the replicated TrainState.
    batch: {'image': float32 [b, H, W, 3], 'label': int32 [b, H, W]}, this
      device's shard; with 'teacher_logits' (float [b, h, w, C], cached by
      `kdseg.teacher_cache`) the teachers are not run.
    teacher_variables: label -> frozen variables of each teacher
      (replicated), or None.
    objective: the terms, summed in order (see `make_train_step`).
    model, tx, lr_fn, temperature_fn, teachers, connectors, ignore_index,
      axis_name, quantize: see `make_train_step`.

  Returns:
    (new state, metrics); metrics are global (identical on every device):
    'loss', each term's unweighted value under its label ('ce', 'kd', 'aux',
    the configured labels), its weight ('<label>/weight') and temperature
    ('<label>/temperature', when it takes one), 'learning_rate',
    'temperature', 'grad_norm', and 'finite' (0/1). A non-finite step leaves
    the state unchanged apart from the step counter. A term on a student map
    the model lacks (`aux` without an aux head) is left out.
  """
  images, labels = batch['image'], batch['label']
  label_size = labels.shape[1:3]
  temperature = temperature_fn(state.step)
  weights = {t.label: t.weight(state.step) for t in objective}
  temperatures = {t.label: None if t.temperature is None
                  else t.temperature(state.step) for t in objective}
  targets = {}
  if teachers is not None:
    if 'teacher_logits' in batch:
      # Cached and warped by the input pipeline (kdseg.teacher_cache).
      outputs = {teachers_lib.PRIMARY: (
          batch['teacher_logits'].astype(jnp.float32), {})}
    else:
      # Outside the differentiated function: no gradient bookkeeping.
      outputs = teachers.forward(teacher_variables, images)
    targets = {t.label: terms_lib.teacher_map(
        t, outputs, teachers, temperatures[t.label], label_size)
               for t in objective if t.teacher}
  rng = jax.random.fold_in(state.rng, state.step)
  rng = jax.random.fold_in(rng, lax.axis_index(axis_name))

  def loss_fn(trainable):
    params, connector_params = split_trainable(trainable,
                                               state.connector_params)
    with fake_quant.quantizing(quantize):  # Traced here: the student only.
      logits, features, new_stats = forward.student_apply(
          model, params, state.batch_stats, images, train=True,
          dropout_rng=rng)
    active = [t for t in objective
              if t.student == 'logits' or t.student in features]
    maps = {t.label: terms_lib.student_map(t, logits, features)
            for t in active}
    # The classic terms compare at the label resolution: each student map is
    # resized once, whichever terms read it (one resize, one gradient path).
    resized = {}
    for t in active:
      if t.at == terms_lib.AT_LABELS:
        if t.student not in resized:
          resized[t.student] = losses.resize_to(maps[t.label], label_size)
        maps[t.label] = resized[t.student]
    connected = [t.label for t in active if t.at == terms_lib.AT_TEACHER]
    new_connector_stats = state.connector_stats
    if connected:
      adapted, new_connector_stats = connectors_lib.connect(
          connectors, connector_params, state.connector_stats,
          {k: maps[k] for k in connected}, {k: targets[k] for k in connected},
          train=True)
      maps.update(adapted)
    values = {}
    for t in active:
      total, count = terms_lib.loss_sums(
          t, maps[t.label], targets.get(t.label),
          temperature=temperatures[t.label], labels=labels,
          ignore_index=ignore_index)
      count = lax.psum(lax.stop_gradient(count), axis_name)
      values[t.label] = total / jnp.maximum(count, 1e-12)
    loss = sum(weights[k] * v for k, v in values.items())
    return loss, (values, new_stats, new_connector_stats)

  trainable = join_trainable(state.params, state.connector_params)
  (loss, (values, new_stats, new_connector_stats)), grads = (
      jax.value_and_grad(loss_fn, has_aux=True)(trainable))
  grads = lax.psum(grads, axis_name)
  loss = lax.psum(loss, axis_name)
  values = lax.psum(values, axis_name)
  # With synchronised batch norm these are already equal on every device;
  # otherwise averaging keeps the replicas identical.
  new_stats = lax.pmean(new_stats, axis_name)
  new_connector_stats = lax.pmean(new_connector_stats, axis_name)

  updates, new_opt_state = tx.update(grads, state.opt_state, trainable)
  new_params, new_connector_params = split_trainable(
      optax.apply_updates(trainable, updates), state.connector_params)
  # Finite gradients can still overflow the update (a huge learning rate):
  # the new parameters and statistics are checked too.
  finite = (jnp.isfinite(loss) & _all_finite(grads) & _all_finite(new_params)
            & _all_finite(new_stats))
  keep = lambda new, old: jax.tree.map(
      lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1, params=keep(new_params, state.params),
      batch_stats=keep(new_stats, state.batch_stats),
      opt_state=keep(new_opt_state, state.opt_state),
      connector_params=keep(new_connector_params, state.connector_params),
      connector_stats=keep(new_connector_stats, state.connector_stats))
  step_metrics = {'loss': loss, **values,
                  'learning_rate': jnp.asarray(lr_fn(state.step), jnp.float32),
                  'temperature': jnp.asarray(temperature, jnp.float32),
                  'grad_norm': optax.tree.norm(grads),
                  'finite': finite.astype(jnp.float32)}
  for label in values:
    step_metrics[f'{label}/weight'] = jnp.asarray(weights[label], jnp.float32)
    if temperatures[label] is not None:
      step_metrics[f'{label}/temperature'] = jnp.asarray(
          temperatures[label], jnp.float32)
  return new_state, step_metrics


def eval_step(params: Any, batch_stats: Any, batch: dict[str, jax.Array], *,
              model: nn.Module, num_classes: int, ignore_index: int = 255,
              axis_name: str = 'data') -> jax.Array:
  """The confusion matrix of this device's shard, summed over the devices.

  Logits are resized (bilinear) to the label resolution before the argmax.
  Returns int32 [C, C] (rows truth, columns prediction), the same on every
  device.
  """
  logits, _, _ = forward.student_apply(model, params, batch_stats,
                                       batch['image'], train=False)
  logits = losses.resize_to(logits, batch['label'].shape[1:3])
  pred = jnp.argmax(logits, axis=-1)
  cm = metrics.confusion_matrix(pred, batch['label'], num_classes=num_classes,
                                ignore_index=ignore_index)
  return lax.psum(cm, axis_name)
