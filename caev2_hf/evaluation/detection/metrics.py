# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""COCO's detection and instance-segmentation metrics from pycocotools' `COCOeval`, for boxes (`"bbox"`) and masks
(`"segm"`), with predictions gathered batch by batch (docs/detection.md#metrics)."""

import contextlib
import copy
import io

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .coco import build_ground_truth


# `COCOeval.stats[:6]`: AP averaged over IoU 0.50:0.05:0.95, at IoU 0.50 and 0.75, and over objects of area below
# 32^2, between 32^2 and 96^2, above 96^2 pixels. -1 where the ground truth has no object of that kind.
COCO_METRIC_NAMES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")
IOU_TYPES = ("bbox", "segm")
MASK_THRESHOLD = 0.5  # a pixel belongs to a predicted instance when its mask probability is above this


def evaluate_coco(ground_truth: COCO, predictions: list[dict], iou_type: str = "bbox") -> dict[str, float]:
    """COCO AP of `predictions` against `ground_truth` (`COCO_METRIC_NAMES` -> value in [0, 1], or -1).

    Args:
        ground_truth: The split's `COCO` (`CocoSplit.ground_truth`).
        predictions: COCO results, `{"image_id", "category_id", "score", "bbox": [x, y, width, height]}` and, for
            `"segm"`, `"segmentation"` as an RLE (`masks_to_rles`). An empty list scores 0.
        iou_type: `"bbox"` (boxes) or `"segm"` (instance masks).
    """
    check_predictions(ground_truth, predictions, iou_type)
    if predictions:
        with contextlib.redirect_stdout(io.StringIO()):
            detections = ground_truth.loadRes(copy.deepcopy(predictions))  # loadRes writes into the dicts
    else:
        detections = build_ground_truth({**ground_truth.dataset, "annotations": []})
    evaluator = COCOeval(ground_truth, detections, iou_type)
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_METRIC_NAMES, evaluator.stats[:6], strict=True)}


def check_predictions(ground_truth: COCO, predictions: list[dict], iou_type: str) -> None:
    """Refuse what pycocotools would answer with an assertion: unknown images or categories, masks missing."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type {iou_type!r}: choose 'bbox' (boxes) or 'segm' (instance masks).")
    if iou_type == "segm" and any("segmentation" not in item for item in ground_truth.dataset["annotations"]):
        raise ValueError(
            "Mask AP needs a segmentation (polygons or RLE) on every ground-truth annotation; this ground truth has "
            "boxes only: score boxes with iou_type='bbox'."
        )
    unknown_images = {item["image_id"] for item in predictions} - set(ground_truth.imgs)
    unknown_categories = {item["category_id"] for item in predictions} - set(ground_truth.cats)
    if unknown_images or unknown_categories:
        raise ValueError(
            f"Predictions name images {sorted(unknown_images)[:5]} / categories {sorted(unknown_categories)[:5]} "
            "that the ground truth does not hold: map model labels back with CocoSplit.label_to_category_id."
        )


def detections_to_coco(
    image_id: int, scores: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor, label_to_category_id: list[int]
) -> list[dict]:
    """One image's detections (`boxes` as `(x_min, y_min, x_max, y_max)` in pixels, model `labels`) as COCO results."""
    boxes = boxes.detach().float().cpu()
    widths_heights = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    xywh = torch.cat([boxes[:, :2], widths_heights], dim=1).tolist()
    return [
        {"image_id": image_id, "category_id": label_to_category_id[label], "bbox": box, "score": score}
        for score, label, box in zip(scores.tolist(), labels.tolist(), xywh, strict=True)
    ]


def masks_to_rles(masks: torch.Tensor | np.ndarray) -> list[dict]:
    """`(count, height, width)` binary masks -> COCO RLEs with text `counts` (JSON-ready), for `"segm"` results."""
    masks = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else masks
    rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def instances_to_coco(image_id: int, detections: dict, label_to_category_id: list[int]) -> list[dict]:
    """One image's output of a torchvision Mask R-CNN (`boxes`, `labels` counting the background as 0, `scores`,
    `masks` as `(N, 1, H, W)` probabilities) as COCO results with boxes and RLE masks, the masks thresholded at
    `MASK_THRESHOLD` as the authors' mmdetection does."""
    results = detections_to_coco(
        image_id, detections["scores"], detections["labels"] - 1, detections["boxes"], label_to_category_id
    )
    if results:
        for result, rle in zip(results, masks_to_rles(detections["masks"][:, 0] > MASK_THRESHOLD), strict=True):
            result["segmentation"] = rle
    return results


class CocoEvaluator:
    """Gathers COCO results batch by batch and scores them once: for `Trainer(compute_metrics=...)` with
    `batch_eval_metrics=True`, which keeps no model outputs for the whole evaluation set.

    Args:
        ground_truth: The evaluation split's `COCO`.
        iou_types: What to score: `("bbox",)` for a detector, `("bbox", "segm")` for instance segmentation; metric
            names get a `segm_` prefix for masks.
    """

    def __init__(self, ground_truth: COCO, iou_types: tuple[str, ...] = ("bbox",)) -> None:
        self.ground_truth, self.iou_types = ground_truth, tuple(iou_types)
        self.predictions: list[dict] = []

    def add(self, predictions: list[dict]) -> None:
        self.predictions += predictions

    def compute(self) -> dict[str, float]:
        """Every metric of every IoU type, then forget the gathered results (the next evaluation starts afresh)."""
        metrics = {}
        for iou_type in self.iou_types:
            prefix = "" if iou_type == "bbox" else f"{iou_type}_"
            scores = evaluate_coco(self.ground_truth, self.predictions, iou_type)
            metrics.update({prefix + name: value for name, value in scores.items()})
        self.predictions = []
        return metrics


def random_detections(ground_truth: COCO, per_image: int = 100, seed: int = 0, with_masks: bool = False) -> list[dict]:
    """Boxes, categories and scores drawn uniformly at random for every image: the score of a detector that has
    learned nothing, to set a trained one against. `with_masks` gives each detection its box as its mask, for mask
    AP."""
    generator = np.random.default_rng(seed)
    category_ids = sorted(ground_truth.cats)
    detections = []
    for image in ground_truth.dataset["images"]:
        width, height = image["width"], image["height"]
        corners = generator.uniform(0, 1, (per_image, 4)) * [width, height, width, height]
        lows, highs = np.minimum(corners[:, :2], corners[:, 2:]), np.maximum(corners[:, :2], corners[:, 2:])
        for low, high, score in zip(lows, highs, generator.uniform(0, 1, per_image), strict=True):
            detections.append(
                {
                    "image_id": image["id"],
                    "category_id": int(generator.choice(category_ids)),
                    "bbox": [float(low[0]), float(low[1]), float(high[0] - low[0]), float(high[1] - low[1])],
                    "score": float(score),
                }
            )
            if with_masks:
                (rle,) = mask_utils.frPyObjects(np.array([detections[-1]["bbox"]]), height, width)
                detections[-1]["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    return detections
