"""The per-device training and evaluation steps.

Both are written once for one device's shard of the batch, with named-axis
collectives over `axis_name` ('data'), and mapped over the devices by
`kdseg.parallel` (shard_map, or pmap). Their results do not depend on the
device count: each loss term is normalised by its global pixel count (a psum
of the per-device counts), so each device's loss is its share of the global
mean, and the psum of the per-device gradients is the global-batch gradient.
"""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import optax

from kdseg import forward
from kdseg import losses
from kdseg import metrics
from kdseg.train_state import TrainState


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def train_step(state: TrainState, batch: dict[str, jax.Array],
               teacher_variables: Any = None, *, model: nn.Module,
               tx: optax.GradientTransformation, lr_fn: Callable,
               temperature_fn: Callable, loss_config: Any,
               teacher_model: Optional[nn.Module] = None,
               teacher_dtype: Any = jnp.float32, ignore_index: int = 255,
               axis_name: str = 'data') -> tuple[TrainState, dict]:
  """One optimisation step on this device's shard of the batch.

  Args:
    state: the replicated TrainState.
    batch: {'image': float32 [b, H, W, 3], 'label': int32 [b, H, W]}, this
      device's shard.
    teacher_variables: frozen teacher variables (replicated), or None.
    model: the student (or the supervised model).
    tx: the optimizer.
    lr_fn, temperature_fn: schedules evaluated at `state.step`.
    loss_config: `config.loss` (ce_weight, kd_weight, kd_type, aux_weight,
      label_smoothing, class_weights).
    teacher_model: the teacher module, or None for supervised training.
    teacher_dtype: the teacher's computation dtype.
    ignore_index: label value that counts nowhere.
    axis_name: the device axis.

  Returns:
    (new state, metrics); metrics are global (identical on every device):
    'loss', each weighted term's unweighted value ('ce', 'kd', 'aux'),
    'learning_rate', 'temperature', 'grad_norm', and 'finite' (0/1). A
    non-finite step leaves the state unchanged apart from the step counter.
  """
  images, labels = batch['image'], batch['label']
  temperature = temperature_fn(state.step)
  teacher_logits = None
  if teacher_model is not None:
    # Outside the differentiated function: no gradient bookkeeping.
    teacher_logits, _ = forward.teacher_apply(
        teacher_model, teacher_variables, images, dtype=teacher_dtype)
  rng = jax.random.fold_in(state.rng, state.step)
  rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
  class_weights = (None if loss_config.class_weights is None
                   else jnp.asarray(loss_config.class_weights, jnp.float32))

  def loss_fn(params):
    logits, features, new_stats = forward.student_apply(
        model, params, state.batch_stats, images, train=True, dropout_rng=rng)
    sums = losses.distillation_loss_sums(
        logits, labels, teacher_logits, temperature=temperature,
        kd_type=loss_config.kd_type, ignore_index=ignore_index,
        class_weights=class_weights,
        label_smoothing=loss_config.label_smoothing)
    weights = {'ce': loss_config.ce_weight, 'kd': loss_config.kd_weight}
    if 'aux_logits' in features and loss_config.aux_weight:
      aux = losses.resize_to(features['aux_logits'], labels.shape[1:3])
      sums['aux'] = losses.cross_entropy_sums(
          aux, labels, ignore_index=ignore_index, class_weights=class_weights,
          label_smoothing=loss_config.label_smoothing)
      weights['aux'] = loss_config.aux_weight
    terms = {}
    for name, (total, count) in sums.items():
      count = lax.psum(lax.stop_gradient(count), axis_name)
      terms[name] = total / jnp.maximum(count, 1e-12)
    loss = sum(weights[name] * value for name, value in terms.items())
    return loss, (terms, new_stats)

  (loss, (terms, new_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = lax.psum(grads, axis_name)
  loss = lax.psum(loss, axis_name)
  terms = lax.psum(terms, axis_name)
  # With synchronised batch norm these are already equal on every device;
  # otherwise averaging keeps the replicas identical.
  new_stats = lax.pmean(new_stats, axis_name)

  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & _all_finite(grads)
  keep = lambda new, old: jax.tree.map(
      lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1, params=keep(new_params, state.params),
      batch_stats=keep(new_stats, state.batch_stats),
      opt_state=keep(new_opt_state, state.opt_state))
  step_metrics = {'loss': loss, **terms,
                  'learning_rate': jnp.asarray(lr_fn(state.step), jnp.float32),
                  'temperature': jnp.asarray(temperature, jnp.float32),
                  'grad_norm': optax.tree.norm(grads),
                  'finite': finite.astype(jnp.float32)}
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
