"""Confusion matrix and IoU against values worked out by hand."""

import math

import numpy as np
import pytest
import torch

from segsweep.data.labels import LabelSet
from segsweep.engine.evaluate import EvalResult, confusion_update

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)


def test_confusion_counts_pixels_and_drops_ignored():
    # 3 classes; ground truth and prediction pixel by pixel (255 = ignored).
    target = torch.tensor([[0, 0, 1, 2], [255, 1, 1, 2]])
    pred = torch.tensor([[0, 1, 1, 2], [2, 1, 0, 0]])
    conf = torch.zeros(3, 3, dtype=torch.long)
    confusion_update(conf, pred, target)
    # pairs (gt, pred): (0,0) (0,1) (1,1) (2,2) | ignored | (1,1) (1,0) (2,0)
    expected = np.array([[1, 1, 0],
                         [1, 2, 0],
                         [1, 0, 1]])
    np.testing.assert_array_equal(conf.numpy(), expected)


def test_iou_miou_pixel_accuracy_by_hand():
    conf = np.array([[1, 1, 0],
                     [1, 2, 0],
                     [1, 0, 1]])
    r = EvalResult(conf)
    # IoU_c = tp / (row + col - tp): c0: 1/(2+3-1)=1/4, c1: 2/(3+3-2)=1/2, c2: 1/(2+1-1)=1/2
    np.testing.assert_allclose(r.iou, [0.25, 0.5, 0.5])
    assert math.isclose(r.miou, (0.25 + 0.5 + 0.5) / 3)
    assert math.isclose(r.pixel_acc, 4 / 7)
    assert math.isclose(r.miou_over((0, 2)), (0.25 + 0.5) / 2)


def test_class_absent_from_ground_truth_is_not_averaged():
    # class 2 never in the ground truth but predicted once: IoU 0, excluded from mIoU (Cityscapes convention)
    conf = np.array([[3, 0, 1],
                     [0, 2, 0],
                     [0, 0, 0]])
    r = EvalResult(conf)
    assert r.iou[2] == 0.0
    assert math.isclose(r.miou, (3 / 4 + 2 / 2) / 2)
    metrics = r.metrics(LabelSet.of(["a", "b", "c"], rare=("c",)))
    assert math.isnan(metrics["val/mIoU_rare"])
    assert metrics["val/IoU/c"] == 0.0 and math.isclose(metrics["val/IoU/a"], 0.75)
