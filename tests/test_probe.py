"""Unit tests for caev2_hf.evaluation.classification.probe: the grid of linear heads, its epoch records, the probe's
BatchNorm and the `ProbeResult` that `results.json` is written from."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from caev2_hf.evaluation.arguments import ProbeArguments
from caev2_hf.evaluation.classification.feature_cache import FeatureCacheFile
from caev2_hf.evaluation.classification.probe import (
    EpochRecord,
    LearningRateHistory,
    ProbeResult,
    fit_feature_batch_norm,
    train_fast_probe,
    train_linear_heads,
)


def separable_features(num_examples: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(num_examples) % 3
    return torch.randn(num_examples, 8, generator=generator) + 3 * torch.eye(8)[labels], labels


def probe_arguments(**values) -> ProbeArguments:
    return ProbeArguments(output_dir="unused", **values)


def test_grid_heads_train_exactly_as_each_would_alone():
    features, labels = separable_features()
    args = probe_arguments(epochs=3, warmup_epochs=1, batch_size=16, seed=0)
    grid = train_linear_heads(features, labels, 3, [2.0, 20.0], args)
    alone = train_linear_heads(features, labels, 3, [20.0], args)
    torch.testing.assert_close(grid.heads[1].weight, alone.heads[0].weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grid.heads[1].bias, alone.heads[0].bias, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(grid.heads[0].weight, grid.heads[1].weight)
    losses = [[epoch.train_loss for epoch in epochs] for epochs in (grid.epochs[1], alone.epochs[0])]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # each head's record is its own, not the grid's sum


def test_grid_heads_learn_separable_features_and_record_each_epoch():
    features, labels = separable_features()
    args = probe_arguments(epochs=20, warmup_epochs=2, batch_size=16, seed=0)
    grid = train_linear_heads(features, labels, 3, [200.0], args, holdout=(features[:30], labels[:30]))
    (head,), (epochs,) = grid.heads, grid.epochs
    accuracy = (head(features).argmax(-1) == labels).float().mean()
    assert accuracy > 0.9 and grid.steps == 20 * 6
    assert [epoch.epoch for epoch in epochs] == list(range(1, 21))
    assert epochs[0].train_loss > epochs[-1].train_loss
    assert epochs[-1].train_top1_accuracy > 0.9
    final_holdout = (head(features[:30]).argmax(-1) == labels[:30]).float().mean().item()
    assert epochs[-1].holdout_top1_accuracy == pytest.approx(final_holdout)


def test_grid_records_no_holdout_accuracy_without_a_holdout():
    features, labels = separable_features()
    grid = train_linear_heads(
        features, labels, 3, [1.0, 2.0], probe_arguments(epochs=2, warmup_epochs=0, batch_size=32)
    )
    assert [[epoch.holdout_top1_accuracy for epoch in epochs] for epochs in grid.epochs] == [[None, None]] * 2


def test_fast_probe_reports_every_learning_rate_and_keeps_the_best_held_out_head():
    features, labels = separable_features(200)
    args = probe_arguments(fast_base_learning_rates=[1e-4, 3200.0], batch_size=16, epochs=20, warmup_epochs=2)
    fit = train_fast_probe(features, labels, 3, args)
    head, histories, steps = fit.head, fit.learning_rate_histories, fit.steps
    assert fit.best is histories[1]
    assert [(h.base_learning_rate, h.learning_rate) for h in histories] == [(1e-4, 1e-4 * 16 / 256), (3200.0, 200.0)]
    assert [len(history.epochs) for history in histories] == [20, 20]
    assert histories[1].holdout_top1_accuracy > 0.9 > histories[0].holdout_top1_accuracy  # a tiny lr barely moves
    assert steps == 20 * (180 // 16)  # 20 of 200 held out
    assert isinstance(head[0], nn.BatchNorm1d) and not head.training
    with torch.no_grad():
        assert (head(features).argmax(-1) == labels).float().mean() > 0.9  # the lr 100 head, not the lr 1e-4 one


def test_fitted_batch_norm_standardises_the_features():
    features = torch.randn(200, 4) * torch.tensor([1.0, 5.0, 0.1, 2.0]) + torch.tensor([3.0, -1.0, 0.0, 10.0])
    with torch.no_grad():
        standardised = fit_feature_batch_norm(features)(features)
    torch.testing.assert_close(standardised.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    variance = features.var(0, unbiased=False)
    torch.testing.assert_close(standardised.var(0, unbiased=False), variance / (variance + 1e-6))  # eps 1e-6


def test_probe_result_json_holds_every_measured_value_but_the_head():
    history = LearningRateHistory(1.0, 0.5, 0.75, [EpochRecord(1, 2.0, 0.25, 0.5), EpochRecord(2, 1.0, 0.5, 0.75)])
    result = ProbeResult(
        protocol="fast", top1_accuracy=0.8, top5_accuracy=0.95, base_learning_rate=1.0, learning_rate=0.5,
        holdout_top1_accuracy=0.75, num_train_examples=90, num_validation_examples=20, steps=12,
        learning_rate_histories=[history], class_names=["a", "b", "c"], head=nn.Sequential(nn.Linear(2, 3)),
        feature_cache={"train": FeatureCacheFile("/c/train.safetensors", reused=True)},
    )  # fmt: skip
    values = json.loads(json.dumps(result.to_json()))
    assert values == {
        "protocol": "fast", "top1_accuracy": 0.8, "top5_accuracy": 0.95, "num_classes": 3, "num_train_examples": 90,
        "num_validation_examples": 20, "steps": 12, "base_learning_rate": 1.0, "learning_rate": 0.5,
        "holdout_top1_accuracy": 0.75,
        "learning_rate_histories": [{
            "base_learning_rate": 1.0, "learning_rate": 0.5, "holdout_top1_accuracy": 0.75,
            "epochs": [
                {"epoch": 1, "train_loss": 2.0, "train_top1_accuracy": 0.25, "holdout_top1_accuracy": 0.5},
                {"epoch": 2, "train_loss": 1.0, "train_top1_accuracy": 0.5, "holdout_top1_accuracy": 0.75},
            ],
        }],
        "feature_cache": {"train": {"path": "/c/train.safetensors", "reused": True}},
    }  # fmt: skip
    assert "head" not in repr(result) and "class_names" not in repr(result)
    # With 5 classes or fewer top-5 is null, and results.json says why beside it (3 classes here).
    without_top5 = json.loads(json.dumps(dataclasses.replace(result, top5_accuracy=None).to_json()))
    assert list(without_top5)[:4] == ["protocol", "top1_accuracy", "top5_accuracy", "top5_accuracy_note"]
    assert without_top5["top5_accuracy"] is None
    assert without_top5["top5_accuracy_note"] == "null: every label is among the top 5 of 3 classes"
    assert {key: value for key, value in without_top5.items() if key != "top5_accuracy_note"} == values | {
        "top5_accuracy": None
    }
