# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""What a linear probe leaves behind: `results.json`, the probed classifier, and its entries for a model card."""

import copy
import dataclasses
import json
import os

from huggingface_hub import EvalResult
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel

from ..hub.model_card import build_eval_results
from ..modeling_caev2 import CAEv2ForImageClassification, CAEv2Model
from .labelled_data import build_label_mappings


def build_probe_classifier(
    encoder: CAEv2Model, head: nn.Sequential, class_names: list[str]
) -> CAEv2ForImageClassification:
    """The probed encoder with the trained head as one `CAEv2ForImageClassification` ("cls" pooling)."""
    config = copy.deepcopy(encoder.config)
    config.classifier_pooling = "cls"
    config.update(build_label_mappings(class_names))
    classifier = CAEv2ForImageClassification(config)
    classifier.caev2.load_state_dict(encoder.state_dict())
    classifier.pooler.batch_norm.load_state_dict(head[0].state_dict())
    classifier.classifier.load_state_dict(head[1].state_dict())
    return classifier.eval()


def save_probe_outputs(
    output_dir: str, encoder: PreTrainedModel, head: nn.Sequential, class_names: list[str], results: dict
) -> None:
    """`results.json`, plus a classifier folder for a CAE v2 encoder (`probe_head.safetensors` for another one)."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "results.json"), "w") as file:
        json.dump(results, file, indent=2)
    if isinstance(encoder, CAEv2Model):
        build_probe_classifier(encoder, head.cpu(), class_names).save_pretrained(output_dir)
    else:
        state = {f"head.{name}": tensor.contiguous() for name, tensor in head.state_dict().items()}
        save_file(
            state, os.path.join(output_dir, "probe_head.safetensors"), metadata={"classes": json.dumps(class_names)}
        )


def build_probe_eval_results(
    results: dict[str, float], dataset_id: str, dataset_split: str, protocol: str
) -> list[EvalResult]:
    """Model-index entries for the probe's top-1 / top-5 (in %), for `model_card.add_eval_results`.

    They are the card's own linear-probe entry ("Top-1 (LIN)", see `model_card.RESULT_FIELDS`) with this dataset,
    split and number; the fast protocol says so in the metric name, so its number never replaces an official one.
    """
    (linear_probe,) = build_eval_results({"imagenet_linear_probe_top1": 0.0}, source_name=None, source_url=None)
    suffix = "" if protocol == "official" else f", {protocol} protocol"
    return [
        dataclasses.replace(
            linear_probe,
            dataset_type=dataset_id,
            dataset_name=dataset_id,
            dataset_split=dataset_split,
            metric_name=f"Top-{k} (LIN{suffix})",
            metric_value=round(100 * results[f"top{k}_accuracy"], 2),
        )
        for k in (1, 5)
    ]
