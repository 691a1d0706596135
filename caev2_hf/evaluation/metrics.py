# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Top-1 / top-5 accuracy of a classifier, shared by linear probing and fine-tuning."""

from pathlib import Path

import evaluate
import torch


ACCURACY_TOPK_PATH = str(Path(__file__).with_name("accuracy_topk"))


def rank_predictions(logits: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Class indices `(batch, min(k, num_classes))`, best first: all the top-k metric needs."""
    return logits.topk(min(k, logits.shape[-1]), dim=-1).indices


def compute_topk_accuracy(ranked_predictions: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 through the `evaluate` module shipped in the package (no Hub access)."""
    metric = evaluate.load(ACCURACY_TOPK_PATH)
    return metric.compute(predictions=ranked_predictions.cpu().tolist(), references=labels.cpu().tolist())
