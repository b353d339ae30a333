"""Metrics on hand-computed confusion matrices."""

import numpy as np
import pytest

from kdseg import metrics


def test_confusion_matrix_hand_computed():
  labels = np.array([[[0, 0, 1, 2], [2, 255, 1, 7]]])
  pred = np.array([[[0, 1, 1, 2], [0, 2, 1, 1]]])
  cm = np.asarray(metrics.confusion_matrix(pred, labels, num_classes=3,
                                           ignore_index=255))
  # Truth rows: 0 -> preds (0, 1); 1 -> (1, 1); 2 -> (2, 0); 255 and 7 skipped.
  expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
  np.testing.assert_array_equal(cm, expected)


def test_confusion_matrix_is_summable():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, size=(4, 8, 8))
  pred = rng.integers(0, 4, size=(4, 8, 8))
  whole = metrics.confusion_matrix(pred, labels, num_classes=4)
  parts = sum(metrics.confusion_matrix(pred[i:i + 1], labels[i:i + 1],
                                       num_classes=4) for i in range(4))
  np.testing.assert_array_equal(whole, parts)
  ref = np.zeros((4, 4), int)
  np.add.at(ref, (labels.ravel(), pred.ravel()), 1)
  np.testing.assert_array_equal(whole, ref)


def test_segmentation_metrics_hand_computed():
  cm = np.array([[3, 1, 0, 0],
                 [0, 2, 2, 0],
                 [1, 0, 1, 0],
                 [0, 0, 0, 0]])  # Class 3 absent from truth and prediction.
  m = metrics.segmentation_metrics(cm)
  iou = [3 / (4 + 4 - 3), 2 / (4 + 3 - 2), 1 / (2 + 3 - 1)]
  np.testing.assert_allclose(m['per_class_iou'][:3], iou)
  assert np.isnan(m['per_class_iou'][3])
  assert m['miou'] == pytest.approx(np.mean(iou))
  assert m['pixel_accuracy'] == pytest.approx(6 / 10)
  assert m['mean_class_accuracy'] == pytest.approx(np.mean([3 / 4, 2 / 4, 1 / 2]))
  assert m['fw_iou'] == pytest.approx(0.4 * iou[0] + 0.4 * iou[1] + 0.2 * iou[2])


def test_predicted_but_absent_class_counts_as_zero_iou():
  cm = np.array([[2, 2], [0, 0]])  # Class 1 predicted, never true.
  m = metrics.segmentation_metrics(cm)
  np.testing.assert_allclose(m['per_class_iou'], [0.5, 0.0])
  assert m['miou'] == pytest.approx(0.25)


def test_rejects_bad_inputs():
  with pytest.raises(ValueError, match='square'):
    metrics.segmentation_metrics(np.zeros((2, 3)))
  with pytest.raises(ValueError, match='same shape'):
    metrics.confusion_matrix(np.zeros((1, 2, 2)), np.zeros((1, 2, 3)),
                             num_classes=2)
