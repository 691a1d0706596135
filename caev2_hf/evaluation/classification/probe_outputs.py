# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""What a linear probe leaves behind: `results.json`, the probed classifier, its entries for a model card, and the
summary it prints."""

import copy
import dataclasses
import json
import os
from dataclasses import dataclass

from huggingface_hub import EvalResult
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel

from ...files import write_json
from ...hub.model_card import build_eval_results
from ...modeling_caev2 import CAEv2ForImageClassification, CAEv2Model
from .labelled_data import build_label_mappings
from .metrics import TOP_K, format_topk_accuracy
from .probe import ProbeResult


@dataclass
class ProbeOutputs:
    """The files a probe wrote: `results.json`, and a classifier folder (CAE v2) or a head file (another encoder)."""

    results_file: str
    model_dir: str | None  # a CAEv2ForImageClassification that pipeline("image-classification") runs
    head_file: str | None  # probe_head.safetensors, for an encoder that is not CAE v2


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


def save_probe_outputs(output_dir: str, encoder: PreTrainedModel, result: ProbeResult, results: dict) -> ProbeOutputs:
    """`results` as `results.json`, plus a classifier folder for a CAE v2 encoder (`probe_head.safetensors` for
    another one) holding `result`'s head."""
    os.makedirs(output_dir, exist_ok=True)
    outputs = ProbeOutputs(os.path.join(output_dir, "results.json"), model_dir=None, head_file=None)
    write_json(outputs.results_file, results, indent=2)
    if isinstance(encoder, CAEv2Model):
        build_probe_classifier(encoder, result.head.cpu(), result.class_names).save_pretrained(output_dir)
        outputs.model_dir = output_dir
    else:
        outputs.head_file = os.path.join(output_dir, "probe_head.safetensors")
        state = {f"head.{name}": tensor.contiguous() for name, tensor in result.head.state_dict().items()}
        save_file(state, outputs.head_file, metadata={"classes": json.dumps(result.class_names)})
    return outputs


def format_probe_summary(result: ProbeResult, outputs: ProbeOutputs, model: str) -> str:
    """The lines a probe prints at its end: top-1 / top-5, the chosen lr, and where results and model went."""
    lines = [
        f"Linear probe ({result.protocol} protocol) of {model}: {format_topk_accuracy(result)} on "
        f"{result.num_validation_examples} validation images",
        f"  learning rate {result.learning_rate:.4g} (base {result.base_learning_rate:g})"
        + (
            f", best of {len(result.learning_rate_histories)} on the held-out part of train "
            f"(top-1 {100 * result.holdout_top1_accuracy:.2f} %)"
            if result.holdout_top1_accuracy is not None
            else ""
        ),
        f"  results: {outputs.results_file}",
    ]
    if outputs.model_dir is not None:
        lines.append(
            f'  model:   {outputs.model_dir}  (pipeline("image-classification", model="{outputs.model_dir}"))'
        )
    if outputs.head_file is not None:
        lines.append(f"  head:    {outputs.head_file}  (no model folder: the encoder is not CAE v2)")
    return "\n".join(lines)


def build_probe_eval_results(result: ProbeResult, dataset_id: str, dataset_split: str) -> list[EvalResult]:
    """Model-index entries for the probe's top-1 / top-5 (in %), for `model_card.add_eval_results`; a top-k left out
    (top-5 of 5 classes or fewer) has none.

    They are the card's own linear-probe entry ("Top-1 (LIN)", see `model_card.RESULT_FIELDS`) with this dataset,
    split and number; the fast protocol says so in the metric name, so its number never replaces an official one.
    """
    (linear_probe,) = build_eval_results({"imagenet_linear_probe_top1": 0.0}, source_name=None, source_url=None)
    suffix = "" if result.protocol == "official" else f", {result.protocol} protocol"
    return [
        dataclasses.replace(
            linear_probe,
            dataset_type=dataset_id,
            dataset_name=dataset_id,
            dataset_split=dataset_split,
            metric_name=f"Top-{k} (LIN{suffix})",
            metric_value=round(100 * getattr(result, f"top{k}_accuracy"), 2),
        )
        for k in TOP_K
        if getattr(result, f"top{k}_accuracy") is not None
    ]
