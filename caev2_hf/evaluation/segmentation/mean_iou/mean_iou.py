# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Mean IoU as a local `evaluate` module, shipped inside the package so evaluation never reaches the Hub."""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Mean intersection over union of semantic segmentation, as mmsegmentation computes it for ADE20K: every pixel whose
reference is `ignore_index` is left out; per class, IoU = intersection / union over the whole evaluation set (not a
mean of per-image IoUs); a class that appears neither in the references nor in the predictions has no IoU (NaN) and
is left out of the mean. The counts live in a confusion matrix, so a large evaluation can send per-batch confusion
matrices (`confusion_matrix=`) instead of full-resolution label maps.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D `int` arrays): Predicted class per pixel, in [0, num_labels).
    references (`list` of 2-D `int` arrays): True class per pixel, in [0, num_labels) or `ignore_index`; same shapes.
    num_labels (`int`): Number of classes.
    ignore_index (`int`, *optional*, defaults to 255): Reference value of pixels left out.
    reduce_labels (`bool`, *optional*, defaults to `False`): Map reference 0 (ADE20K's "other") to `ignore_index` and
        every other class c to c - 1, as mmsegmentation's `reduce_zero_label`.
    confusion_matrix (`array` of shape `(num_labels, num_labels)`, *optional*): Counts already accumulated, rows =
        reference class, columns = predicted class; added to those of `predictions` / `references`.
Returns:
    `mean_iou`, `mean_accuracy` (mean of per-class recall), `overall_accuracy` (pixel accuracy), all in [0, 1];
    `per_category_iou` and `per_category_accuracy` (arrays of `num_labels`, NaN for an absent class).
Examples:
    >>> import evaluate
    >>> from caev2_hf.evaluation.segmentation.metrics import MEAN_IOU_PATH
    >>> metric = evaluate.load(MEAN_IOU_PATH)
    >>> result = metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, 255]]], num_labels=2)
    >>> round(result["mean_iou"], 4), result["overall_accuracy"]
    (0.5, 0.6666666666666666)
"""


def confusion_from_label_maps(
    prediction: np.ndarray, reference: np.ndarray, num_labels: int, ignore_index: int, reduce_labels: bool = False
) -> np.ndarray:
    """`(num_labels, num_labels)` counts of (reference, prediction) pairs over the pixels not ignored."""
    prediction, reference = np.asarray(prediction, dtype=np.int64), np.asarray(reference, dtype=np.int64)
    if prediction.shape != reference.shape:
        raise ValueError(f"A prediction of shape {prediction.shape} has a reference of shape {reference.shape}.")
    if reduce_labels:
        reference = np.where(reference == 0, ignore_index, reference - 1)
        reference = np.where(reference == ignore_index - 1, ignore_index, reference)
    valid = reference != ignore_index
    prediction, reference = prediction[valid], reference[valid]
    for name, labels in (("reference", reference), ("prediction", prediction)):
        outside = labels[(labels < 0) | (labels >= num_labels)]
        if outside.size:
            raise ValueError(
                f"A {name} label {int(outside[0])} is outside [0, {num_labels}) and is not "
                f"ignore_index={ignore_index}: "
                "set num_labels to the number of classes (with reduce_labels for ADE20K's 0 = other)."
            )
    counts = np.bincount(reference * num_labels + prediction, minlength=num_labels * num_labels)
    return counts.reshape(num_labels, num_labels)


def scores_from_confusion(confusion: np.ndarray) -> dict:
    """IoU and accuracy per class from a `(reference, prediction)` confusion matrix, and their means."""
    confusion = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(confusion)
    reference_area, prediction_area = confusion.sum(axis=1), confusion.sum(axis=0)
    union = reference_area + prediction_area - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
        accuracy = np.where(reference_area > 0, intersection / reference_area, np.nan)
    total = confusion.sum()
    return {
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mean_accuracy": float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else float("nan"),
        "overall_accuracy": float(intersection.sum() / total) if total else float("nan"),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    """Mean IoU, mean accuracy and pixel accuracy of semantic segmentation."""

    def _info(self) -> evaluate.MetricInfo:
        label_map = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": label_map, "references": label_map}),
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels: int,
        ignore_index: int = 255,
        reduce_labels: bool = False,
        confusion_matrix=None,
    ) -> dict:
        total = np.zeros((num_labels, num_labels), dtype=np.int64)
        if confusion_matrix is not None:
            confusion_matrix = np.asarray(confusion_matrix, dtype=np.int64)
            if confusion_matrix.shape != total.shape:
                raise ValueError(
                    f"confusion_matrix has shape {confusion_matrix.shape}, expected {total.shape} for num_labels="
                    f"{num_labels}."
                )
            total += confusion_matrix
        for prediction, reference in zip(predictions, references, strict=True):
            total += confusion_from_label_maps(prediction, reference, num_labels, ignore_index, reduce_labels)
        return scores_from_confusion(total)
