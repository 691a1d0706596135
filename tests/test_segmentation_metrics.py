"""Unit tests for caev2_hf.evaluation.segmentation.metrics and its local `mean_iou` module: mIoU against hand-computed
confusion matrices, absent classes, reduced labels and the Trainer's batch-by-batch accumulator."""

import math

import evaluate
import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from caev2_hf.evaluation.segmentation.metrics import MEAN_IOU_PATH, MeanIoUAccumulator, count_confusion


def test_mean_iou_matches_a_hand_computed_confusion_matrix():
    # References (rows) x predictions (columns), 255 ignored:
    #   reference 0 0 1 1 2 255       confusion: ref 0 -> pred 0: 1, pred 1: 1
    #   predicted 0 1 1 2 2 0                    ref 1 -> pred 1: 1, pred 2: 1
    #                                            ref 2 -> pred 2: 1
    # IoU_0 = 1 / (2 + 1 - 1) = 1/2; IoU_1 = 1 / (2 + 2 - 1) = 1/3; IoU_2 = 1 / (1 + 2 - 1) = 1/2
    # accuracy per class 1/2, 1/2, 1; pixel accuracy 3/5.
    predictions = [np.array([[0, 1, 1], [2, 2, 0]])]
    references = [np.array([[0, 0, 1], [1, 2, 255]])]
    result = evaluate.load(MEAN_IOU_PATH).compute(predictions=predictions, references=references, num_labels=3)
    np.testing.assert_allclose(result["per_category_iou"], [1 / 2, 1 / 3, 1 / 2])
    assert result["mean_iou"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    np.testing.assert_allclose(result["per_category_accuracy"], [1 / 2, 1 / 2, 1.0])
    assert result["overall_accuracy"] == pytest.approx(3 / 5)
    confusion = count_confusion(torch.tensor(predictions[0]), torch.tensor(references[0]), 3, 255)
    assert confusion.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_absent_class_is_left_out_of_the_mean_and_reduce_labels_ignores_zero():
    # 4 classes, class 3 never referenced nor predicted: NaN, not a zero in the mean.
    result = evaluate.load(MEAN_IOU_PATH).compute(
        predictions=[np.array([[0, 2], [2, 2]])], references=[np.array([[1, 2], [3, 0]])], num_labels=4,
        reduce_labels=True,
    )  # fmt: skip
    # Reduced references [[0, 1], [2, 255]]: ref 0 -> pred 0, ref 1 -> pred 2, ref 2 -> pred 2, the last pixel
    # ignored (its prediction too). IoU_0 = 1, IoU_1 = 0 / 1, IoU_2 = 1 / (1 + 2 - 1); class 3 absent: NaN.
    np.testing.assert_allclose(result["per_category_iou"][:3], [1.0, 0.0, 1 / 2])
    assert math.isnan(result["per_category_iou"][3]) and result["mean_iou"] == pytest.approx(1.5 / 3)


def test_references_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match="outside \\[0, 3\\)"):
        evaluate.load(MEAN_IOU_PATH).compute(predictions=[[[0, 1]]], references=[[[0, 7]]], num_labels=3)


def test_accumulator_sums_batches_then_scores_once():
    metric = MeanIoUAccumulator(num_labels=2)
    first = torch.tensor([[[3, 1], [0, 2]]])
    second = torch.tensor([[[1, 0], [1, 1]], [[0, 0], [0, 4]]])
    assert metric(EvalPrediction(predictions=first, label_ids=torch.zeros(1)), compute_result=False) == {}
    scores = metric(EvalPrediction(predictions=second, label_ids=torch.zeros(2)), compute_result=True)
    # total [[4, 1], [1, 7]]: IoU_0 = 4 / (5 + 5 - 4) = 2/3, IoU_1 = 7 / (8 + 8 - 7) = 7/9
    assert scores["mean_iou"] == pytest.approx((2 / 3 + 7 / 9) / 2)
    assert scores["overall_accuracy"] == pytest.approx(11 / 13)
    assert metric.total.sum() == 0  # reset for the next evaluation
