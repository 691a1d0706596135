# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""mIoU of semantic segmentation: confusion matrices counted on the device, scored by the local `mean_iou` module."""

from pathlib import Path

import evaluate
import numpy as np
import torch
from transformers import EvalPrediction

from ...cli import UserError


MEAN_IOU_PATH = str(Path(__file__).with_name("mean_iou"))


def count_confusion(
    predictions: torch.Tensor, references: torch.Tensor, num_labels: int, ignore_index: int
) -> torch.Tensor:
    """`(num_labels, num_labels)` int64 counts of (reference, prediction) over pixels whose reference is not ignored.

    Works on the tensors' device (one bincount): evaluation sends `num_labels**2` numbers per image, not a label map.
    """
    valid = references != ignore_index
    references, predictions = references[valid].long(), predictions[valid].long()
    if references.numel() and (int(references.min()) < 0 or int(references.max()) >= num_labels):
        raise UserError(
            f"A reference label outside [0, {num_labels}) that is not ignore_index={ignore_index}: set num_labels to "
            "the number of classes, and reduce_labels=true for ADE20K (whose 0 = other)."
        )
    counts = torch.bincount(references * num_labels + predictions, minlength=num_labels * num_labels)
    return counts.view(num_labels, num_labels)


def compute_mean_iou(confusion: np.ndarray | torch.Tensor, num_labels: int, ignore_index: int = 255) -> dict:
    """mIoU, accuracies and per-class scores of an accumulated confusion matrix, through the `evaluate` module."""
    confusion = confusion.cpu().numpy() if isinstance(confusion, torch.Tensor) else np.asarray(confusion)
    metric = evaluate.load(MEAN_IOU_PATH)
    return metric.compute(
        predictions=[], references=[], num_labels=num_labels, ignore_index=ignore_index, confusion_matrix=confusion
    )


class MeanIoUAccumulator:
    """`Trainer(compute_metrics=...)` for predictions that are per-image confusion matrices `(batch, C, C)`.

    Works with `batch_eval_metrics=True` (sums batch by batch, scores at `compute_result=True`) and without it (one
    call with every image). The last full result, per-class scores included, stays in `last_result`.
    """

    def __init__(self, num_labels: int, ignore_index: int = 255) -> None:
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.total = np.zeros((num_labels, num_labels), dtype=np.int64)
        self.last_result: dict | None = None

    def __call__(self, prediction: EvalPrediction, compute_result: bool = True) -> dict[str, float]:
        confusions = prediction.predictions
        confusions = confusions.cpu().numpy() if isinstance(confusions, torch.Tensor) else np.asarray(confusions)
        self.total += confusions.reshape(-1, self.num_labels, self.num_labels).sum(axis=0).astype(np.int64)
        if not compute_result:
            return {}
        self.last_result = compute_mean_iou(self.total, self.num_labels, self.ignore_index)
        self.total = np.zeros_like(self.total)
        return {name: self.last_result[name] for name in ("mean_iou", "mean_accuracy", "overall_accuracy")}
