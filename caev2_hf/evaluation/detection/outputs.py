# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""What a detection run leaves beside its model: `results.json` and a model card whose model-index holds the mAP."""

import json
import os

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ...hub.model_card import add_eval_results
from .metrics import COCO_METRIC_NAMES


CARD_METRICS = {"map": "mAP@[.5:.95]", "map_50": "AP50", "map_75": "AP75"}


def write_results(output_dir: str, results: dict) -> str:
    """`results.json`, written whole (a temporary file renamed), so a stopped run never leaves half a file."""
    path = os.path.join(output_dir, "results.json")
    with open(path + ".tmp", "w", encoding="utf-8") as file:
        json.dump(results, file, indent=2)
    os.replace(path + ".tmp", path)
    return path


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
    data = ModelCardData(library_name="transformers", pipeline_tag="object-detection", tags=["caev2", "lw-detr"])
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{describe_detector(size, encoder, data_name, results)}")
    card.save(os.path.join(output_dir, "README.md"))
    entries = [
        EvalResult(
            task_type="object-detection",
            task_name=f"Object detection (LW-DETR-{size})",
            dataset_type=data_name,
            dataset_name=data_name,
            metric_type=name,
            metric_name=label,
            metric_value=round(100 * results[name], 2),
        )
        for name, label in CARD_METRICS.items()
    ]
    return str(add_eval_results(output_dir, entries))


def summary_line(results: dict, output_dir: str) -> str:
    """The run's last printed line."""
    scores = ", ".join(f"{name} {100 * results[name]:.1f}" for name in COCO_METRIC_NAMES[1:] if results[name] >= 0)
    baseline = results.get("random_baseline_map")
    versus = f" (boxes at random: {100 * baseline:.1f})" if baseline is not None else ""
    return (
        f"mAP@[.5:.95] {100 * results['map']:.1f}{versus}; {scores} on {results['num_eval_images']} images. Model, "
        f"results.json and README.md in {output_dir}"
    )
