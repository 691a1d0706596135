"""Unit tests for caev2_hf.evaluation.classification.metrics: ranked predictions and top-1 / top-5 accuracy against
hand-computed values, ties and class counts of 5 or fewer included."""

from types import SimpleNamespace

import pytest
import torch

from caev2_hf.evaluation.classification.metrics import (
    compute_topk_accuracy,
    format_topk_accuracy,
    rank_predictions,
    topk_notes,
)


def test_topk_accuracy_counts_the_label_among_the_first_k_ranked_classes():
    # Label 0 is first (top-1 and top-5 hit), label 1 is fifth (top-5 hit), label 9 is sixth (miss), label 3 first.
    ranked = torch.tensor([[0, 2, 1, 3, 4, 5], [2, 0, 3, 4, 1, 5], [0, 1, 2, 3, 4, 9], [3, 1, 2, 0, 4, 5]])
    accuracy = compute_topk_accuracy(ranked, torch.tensor([0, 1, 9, 3]), num_classes=10)
    assert accuracy == {"top1_accuracy": 2 / 4, "top5_accuracy": 3 / 4}


def test_rank_predictions_puts_the_lower_class_first_in_a_tie_as_argmax():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, 2.0, -1.0], [0.5] * 7])
    ranked = rank_predictions(logits)
    assert ranked.tolist() == [[1, 2, 4, 5, 0], [0, 1, 2, 3, 4]]
    assert ranked[:, 0].tolist() == logits.argmax(dim=-1).tolist()
    # Label 2 ties with the best (class 1) but ranks second: a top-1 miss, a top-5 hit; label 6 of the flat row
    # ranks seventh.
    accuracy = compute_topk_accuracy(ranked, torch.tensor([2, 6]), num_classes=7)
    assert accuracy == {"top1_accuracy": 0.0, "top5_accuracy": 0.5}


def test_rank_predictions_keeps_every_class_when_there_are_fewer_than_k():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]])
    assert rank_predictions(logits).tolist() == [[1, 0, 2], [0, 2, 1]]


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_top5_is_left_out_with_five_classes_or_fewer(num_classes: int):
    # Every label is among the top 5 of 5 classes or fewer: a 100 % that says nothing, so None.
    logits = torch.eye(num_classes)[[1, 0]]  # example 0 predicts class 1, example 1 class 0
    accuracy = compute_topk_accuracy(rank_predictions(logits), torch.tensor([1, 1]), num_classes)
    assert accuracy == {"top1_accuracy": 0.5, "top5_accuracy": None}


def test_top5_is_reported_from_six_classes():
    logits = torch.tensor([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]] * 2)
    accuracy = compute_topk_accuracy(rank_predictions(logits), torch.tensor([4, 5]), num_classes=6)
    assert accuracy == {"top1_accuracy": 0.0, "top5_accuracy": 0.5}


def test_a_missing_top5_is_explained_in_the_summary_and_the_results_file():
    three_classes = SimpleNamespace(top1_accuracy=0.8, top5_accuracy=None, num_classes=3)
    assert (
        format_topk_accuracy(three_classes) == "top-1 80.00 %, top-5 n/a (every label is among the top 5 of 3 classes)"
    )
    assert topk_notes(three_classes) == {"top5_accuracy_note": "null: every label is among the top 5 of 3 classes"}
    ten_classes = SimpleNamespace(top1_accuracy=0.8, top5_accuracy=0.95, num_classes=10)
    assert format_topk_accuracy(ten_classes) == "top-1 80.00 %, top-5 95.00 %"
    assert topk_notes(ten_classes) == {}
