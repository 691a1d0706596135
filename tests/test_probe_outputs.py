"""Unit tests for caev2_hf.evaluation.classification.probe_outputs: the probe's entries in a model card's model-index
and the summary it prints."""

from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from torch import nn

from caev2_hf.evaluation.classification.probe import LearningRateHistory, ProbeResult
from caev2_hf.evaluation.classification.probe_outputs import (
    ProbeOutputs,
    build_probe_eval_results,
    format_probe_summary,
)
from caev2_hf.hub.model_card import add_eval_results


def probe_result(top1: float = 0.81234, top5: float | None = 0.95, protocol: str = "official") -> ProbeResult:
    holdout = 0.875 if protocol == "fast" else None
    histories = [LearningRateHistory(0.1, 0.05, holdout, []), LearningRateHistory(0.3, 0.15, 0.5, [])]
    return ProbeResult(
        protocol=protocol, top1_accuracy=top1, top5_accuracy=top5, base_learning_rate=0.1, learning_rate=0.05,
        holdout_top1_accuracy=holdout, num_train_examples=100, num_validation_examples=40, steps=10,
        learning_rate_histories=histories if protocol == "fast" else histories[:1], class_names=["a", "b"],
        head=nn.Sequential(nn.BatchNorm1d(4, affine=False), nn.Linear(4, 2)),
    )  # fmt: skip


@pytest.mark.parametrize("protocol, suffix", [("official", ""), ("fast", ", fast protocol")])
def test_probe_eval_results_are_named_as_the_card_names_linear_probing(protocol: str, suffix: str):
    entries = build_probe_eval_results(probe_result(protocol=protocol), "imagenette", "validation")
    assert [(entry.metric_name, entry.metric_value) for entry in entries] == [
        (f"Top-1 (LIN{suffix})", 81.23), (f"Top-5 (LIN{suffix})", 95.0),
    ]  # fmt: skip
    assert {(entry.task_name, entry.task_type, entry.metric_type, entry.dataset_split) for entry in entries} == {
        ("Linear probing", "image-classification", "accuracy", "validation")
    }


def test_a_probe_without_top5_has_no_top5_entry_and_its_summary_says_why():
    result = probe_result(top5=None)  # 2 classes: every label is in the top 5
    entries = build_probe_eval_results(result, "imagenette", "validation")
    assert [(entry.metric_name, entry.metric_value) for entry in entries] == [("Top-1 (LIN)", 81.23)]
    summary = format_probe_summary(result, ProbeOutputs("probe/results.json", "probe", None), "my-encoder")
    assert summary.splitlines()[0] == (
        "Linear probe (official protocol) of my-encoder: top-1 81.23 %, top-5 n/a (every label is among the top 5 "
        "of 2 classes) on 40 validation images"
    )


def test_added_eval_results_replace_the_same_metric_and_keep_the_others(tmp_path: Path):
    add_eval_results(tmp_path, build_probe_eval_results(probe_result(), "imagenette", "validation"))
    add_eval_results(tmp_path, build_probe_eval_results(probe_result(), "imagewoof", "validation"))
    better = probe_result(top1=0.9, top5=0.99)
    add_eval_results(tmp_path, build_probe_eval_results(better, "imagenette", "validation"))
    card = ModelCard.load(tmp_path / "README.md")
    assert sorted((entry.dataset_type, entry.metric_name, entry.metric_value) for entry in card.data.eval_results) == [
        ("imagenette", "Top-1 (LIN)", 90.0), ("imagenette", "Top-5 (LIN)", 99.0),
        ("imagewoof", "Top-1 (LIN)", 81.23), ("imagewoof", "Top-5 (LIN)", 95.0),
    ]  # fmt: skip
    assert card.data.model_name == tmp_path.name


def test_summary_gives_accuracy_learning_rate_and_the_written_paths():
    outputs = ProbeOutputs("probe/results.json", model_dir="probe", head_file=None)
    assert format_probe_summary(probe_result(), outputs, "my-encoder").splitlines() == [
        "Linear probe (official protocol) of my-encoder: top-1 81.23 %, top-5 95.00 % on 40 validation images",
        "  learning rate 0.05 (base 0.1)",
        "  results: probe/results.json",
        '  model:   probe  (pipeline("image-classification", model="probe"))',
    ]


def test_fast_summary_names_the_grid_and_a_head_file_for_another_encoder():
    outputs = ProbeOutputs("out/results.json", model_dir=None, head_file="out/probe_head.safetensors")
    lines = format_probe_summary(probe_result(protocol="fast"), outputs, "clip").splitlines()
    assert lines[1] == "  learning rate 0.05 (base 0.1), best of 2 on the held-out part of train (top-1 87.50 %)"
    assert lines[2:] == [
        "  results: out/results.json",
        "  head:    out/probe_head.safetensors  (no model folder: the encoder is not CAE v2)",
    ]
