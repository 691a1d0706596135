"""Unit tests for caev2_hf.evaluation.metrics: ranked predictions and the shipped top-k metric."""

import pytest
import torch

from caev2_hf.evaluation.metrics import compute_topk_accuracy, rank_predictions


def test_topk_metric_counts_ranked_hits():
    ranked = torch.tensor([[2, 0, 1, 3, 4], [1, 2, 0, 3, 4], [0, 1, 2, 3, 4]])
    accuracy = compute_topk_accuracy(ranked, torch.tensor([0, 1, 5]))
    assert accuracy == {"top1_accuracy": pytest.approx(1 / 3), "top5_accuracy": pytest.approx(2 / 3)}


def test_rank_predictions_keeps_every_class_when_there_are_fewer_than_k():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]])
    assert rank_predictions(logits).tolist() == [[1, 0, 2], [0, 2, 1]]
