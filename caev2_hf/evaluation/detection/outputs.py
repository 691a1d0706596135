# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""What a detection run leaves beside its model: `results.json` and a model card whose model-index holds the mAP."""

import os

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ...files import write_json
from ...hub.model_card import add_eval_results
from .metrics import COCO_METRIC_NAMES


CARD_METRICS = {"map": "mAP@[.5:.95]", "map_50": "AP50", "map_75": "AP75"}


def write_results(output_dir: str, results: dict) -> str:
    """`results.json`, written whole (a temporary file renamed), so a stopped run never leaves half a file."""
    return write_json(os.path.join(output_dir, "results.json"), results, indent=2)


def describe_detector(size: str, encoder: str, data_name: str, results: dict) -> str:
    """The card's prose: what was built from what, trained how long on what, and how to run it."""
    return (
        f"# LW-DETR-{size} on a CAE v2 encoder\n\n"
        f"Transformers' `LwDetrForObjectDetection` (LW-DETR-{size}) whose ViT was initialised from the CAE v2 encoder "
        f"`{encoder}`, then trained with `run_object_detection.py` of caev2_hf on {data_name} for "
        f"{results['max_steps']:,} optimizer steps ({results['num_train_images']:,} training images). Scored with "
        f"pycocotools on {results['num_eval_images']:,} held-out images: mAP@[.5:.95] {100 * results['map']:.1f}, "
        f"AP50 {100 * results['map_50']:.1f}.\n\n"
        "```python\nfrom transformers import pipeline\n\n"
        'detector = pipeline("object-detection", model="path/to/this/folder")\n'
        'detector("image.jpg", threshold=0.5)\n```\n'
    )


def write_detection_card(output_dir: str, size: str, encoder: str, data_name: str, results: dict) -> str:
    """`README.md` for the output folder: the description, then a model-index with mAP, AP50 and AP75."""
    entries = [
        eval_result("object-detection", f"Object detection (LW-DETR-{size})", data_name, name, label, results[name])
        for name, label in CARD_METRICS.items()
    ]
    description = describe_detector(size, encoder, data_name, results)
    return write_card(output_dir, description, ["caev2", "lw-detr"], entries, "object-detection", "transformers")


def eval_result(task: str, task_name: str, data_name: str, metric: str, label: str, value: float) -> EvalResult:
    """One model-index entry, the metric in percent."""
    return EvalResult(
        task_type=task, task_name=task_name, dataset_type=data_name, dataset_name=data_name, metric_type=metric,
        metric_name=label, metric_value=round(100 * value, 2),
    )  # fmt: skip


def write_card(
    output_dir: str,
    description: str,
    tags: list[str],
    entries: list[EvalResult],
    pipeline_tag: str | None = None,
    library_name: str | None = None,
) -> str:
    """`README.md` of an output folder: metadata, `description`, and the model-index `entries`."""
    data = ModelCardData(library_name=library_name, pipeline_tag=pipeline_tag, tags=tags)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{description}")
    card.save(os.path.join(output_dir, "README.md"))
    return str(add_eval_results(output_dir, entries))


def describe_mask_rcnn(encoder: str, data_name: str, results: dict) -> str:
    """The card's prose for a Mask R-CNN folder of `run_instance_segmentation.py`."""
    return (
        "# Mask R-CNN on a CAE v2 encoder\n\n"
        f"torchvision's Mask R-CNN whose backbone is the CAE v2 encoder `{encoder}` (with the authors' 4-scale neck "
        f"and an FPN), trained with `run_instance_segmentation.py` of caev2_hf on {data_name} for "
        f"{results['max_steps']:,} optimizer steps ({results['num_train_images']:,} training images). Scored with "
        f"pycocotools on {results['num_eval_images']:,} held-out images: box AP {100 * results['map']:.1f}, mask AP "
        f"{100 * results['segm_map']:.1f}.\n\n"
        "```python\nfrom caev2_hf.evaluation.detection.maskrcnn import load_mask_rcnn\n\n"
        'model, class_names = load_mask_rcnn("path/to/this/folder")\n'
        "detections = model([image])  # (3, H, W) floats in [0, 1]: boxes, labels (class_names[label - 1]), scores, "
        "masks\n```\n"
    )


def write_mask_rcnn_card(output_dir: str, encoder: str, data_name: str, results: dict) -> str:
    """`README.md` of a Mask R-CNN folder: the description, then a model-index with box AP and mask AP."""
    entries = [
        eval_result(task, task_name, data_name, name, label, results[name])
        for task, task_name, name, label in (
            ("object-detection", "Object detection (Mask R-CNN)", "map", "box AP"),
            ("object-detection", "Object detection (Mask R-CNN)", "map_50", "box AP50"),
            ("instance-segmentation", "Instance segmentation (Mask R-CNN)", "segm_map", "mask AP"),
            ("instance-segmentation", "Instance segmentation (Mask R-CNN)", "segm_map_50", "mask AP50"),
        )
    ]
    tags = ["caev2", "mask-rcnn", "object-detection", "instance-segmentation"]
    return write_card(output_dir, describe_mask_rcnn(encoder, data_name, results), tags, entries)


def summary_line(results: dict, output_dir: str) -> str:
    """The run's last printed line."""
    scores = ", ".join(f"{name} {100 * results[name]:.1f}" for name in COCO_METRIC_NAMES[1:] if results[name] >= 0)
    baseline = results.get("random_baseline_map")
    versus = f" (boxes at random: {100 * baseline:.1f})" if baseline is not None else ""
    return (
        f"mAP@[.5:.95] {100 * results['map']:.1f}{versus}; {scores} on {results['num_eval_images']} images. Model, "
        f"results.json and README.md in {output_dir}"
    )


def mask_rcnn_summary_line(results: dict, output_dir: str) -> str:
    """The last printed line of an instance-segmentation run."""
    versus = ""
    if "random_baseline_map" in results:
        baseline = results["random_baseline_map"], results["random_baseline_segm_map"]
        versus = " (random boxes and masks: {:.1f} / {:.1f})".format(*(100 * value for value in baseline))
    return (
        f"box AP {100 * results['map']:.1f}, mask AP {100 * results['segm_map']:.1f}{versus}; AP50 "
        f"{100 * results['map_50']:.1f} / {100 * results['segm_map_50']:.1f} on {results['num_eval_images']} images. "
        f"Model, results.json and README.md in {output_dir}"
    )
