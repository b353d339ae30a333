"""Segmentation metrics from confusion matrices.

Metrics come from one confusion matrix summed over the whole evaluation set
(and across devices), never from an average of per-batch scores.
"""

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(pred: jax.Array, labels: jax.Array, *, num_classes: int,
                     ignore_index: int = 255) -> jax.Array:
  """Counts (truth, prediction) pairs.

  Args:
    pred: int [B, H, W] predicted classes.
    labels: int [B, H, W] true classes; `ignore_index` and any value outside
      [0, num_classes) count nowhere.
    num_classes: C.
    ignore_index: label value to skip.

  Returns:
    int32 [C, C]; rows are the truth, columns the prediction. Sums of these
    matrices over batches and devices are again confusion matrices.
  """
  if pred.shape != labels.shape:
    raise ValueError(f'pred {tuple(pred.shape)} and labels '
                     f'{tuple(labels.shape)} must have the same shape.')
  labels = labels.astype(jnp.int32)
  pred = pred.astype(jnp.int32)
  valid = ((labels != ignore_index) & (labels >= 0) & (labels < num_classes)
           & (pred >= 0) & (pred < num_classes))
  index = jnp.where(valid, labels * num_classes + pred, 0)
  counts = jnp.bincount(index.ravel(), weights=valid.ravel().astype(jnp.int32),
                        length=num_classes * num_classes)
  return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def segmentation_metrics(cm) -> dict[str, np.ndarray | float]:
  """Metrics of a confusion matrix (rows truth, columns prediction).

  Returns a dict of:
    miou: mean IoU over classes present in the truth or the prediction
      (classes absent from both are excluded, not counted as 0 or 1).
    per_class_iou: float64 [C], NaN for classes absent from both.
    pixel_accuracy: correct / counted pixels.
    mean_class_accuracy: mean recall over classes present in the truth.
    fw_iou: frequency-weighted IoU, sum_c freq_c * IoU_c with freq_c the
      truth share of class c.
  """
  cm = np.asarray(cm, dtype=np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'confusion matrix must be square [C, C]; got {cm.shape}.')
  tp = np.diag(cm)
  truth = cm.sum(axis=1)
  predicted = cm.sum(axis=0)
  union = truth + predicted - tp
  total = cm.sum()
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = np.where(union > 0, tp / union, np.nan)
    recall = np.where(truth > 0, tp / truth, np.nan)
  present = union > 0
  freq = truth / total if total > 0 else np.zeros_like(truth)
  return {
      'miou': float(np.nanmean(iou)) if present.any() else float('nan'),
      'per_class_iou': iou,
      'pixel_accuracy': float(tp.sum() / total) if total > 0 else float('nan'),
      'mean_class_accuracy': (float(np.nanmean(recall)) if (truth > 0).any()
                              else float('nan')),
      'fw_iou': float(np.sum(freq[present] * iou[present])),
  }
