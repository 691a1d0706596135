"""Unit tests for caev2_hf.evaluation.probe_outputs: the probe's entries in a model card's model-index."""

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from caev2_hf.evaluation.probe_outputs import build_probe_eval_results
from caev2_hf.hub.model_card import add_eval_results


RESULTS = {"top1_accuracy": 0.81234, "top5_accuracy": 0.95}


@pytest.mark.parametrize("protocol, suffix", [("official", ""), ("fast", ", fast protocol")])
def test_probe_eval_results_are_named_as_the_card_names_linear_probing(protocol: str, suffix: str):
    entries = build_probe_eval_results(RESULTS, "imagenette", "validation", protocol)
    assert [(entry.metric_name, entry.metric_value) for entry in entries] == [
        (f"Top-1 (LIN{suffix})", 81.23), (f"Top-5 (LIN{suffix})", 95.0),
    ]  # fmt: skip
    assert {(entry.task_name, entry.task_type, entry.metric_type, entry.dataset_split) for entry in entries} == {
        ("Linear probing", "image-classification", "accuracy", "validation")
    }


def test_added_eval_results_replace_the_same_metric_and_keep_the_others(tmp_path: Path):
    add_eval_results(tmp_path, build_probe_eval_results(RESULTS, "imagenette", "validation", "official"))
    add_eval_results(tmp_path, build_probe_eval_results(RESULTS, "imagewoof", "validation", "official"))
    better = {"top1_accuracy": 0.9, "top5_accuracy": 0.99}
    add_eval_results(tmp_path, build_probe_eval_results(better, "imagenette", "validation", "official"))
    card = ModelCard.load(tmp_path / "README.md")
    assert sorted((entry.dataset_type, entry.metric_name, entry.metric_value) for entry in card.data.eval_results) == [
        ("imagenette", "Top-1 (LIN)", 90.0), ("imagenette", "Top-5 (LIN)", 99.0),
        ("imagewoof", "Top-1 (LIN)", 81.23), ("imagewoof", "Top-5 (LIN)", 95.0),
    ]  # fmt: skip
    assert card.data.model_name == tmp_path.name
