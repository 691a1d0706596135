"""Unit tests for caev2_hf.probe: the head grid, the feature cache key, the top-k metric, argument files."""

import os
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from conftest import build_tiny_config
from transformers import CLIPVisionConfig, CLIPVisionModel

from caev2_hf import CAEv2Model
from caev2_hf.probe import (
    ImageDataArguments,
    compute_topk_accuracy,
    config_to_arguments,
    count_labels,
    describe_data_source,
    fingerprint_encoder,
    fit_feature_batch_norm,
    load_frozen_encoder,
    parse_script_arguments,
    train_linear_heads,
)


def separable_features(num_examples: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(num_examples) % 3
    return torch.randn(num_examples, 8, generator=generator) + 3 * torch.eye(8)[labels], labels


def test_grid_heads_train_exactly_as_each_would_alone():
    features, labels = separable_features()
    settings = {"num_classes": 3, "epochs": 3, "warmup_epochs": 1, "batch_size": 16, "seed": 0}
    grid = train_linear_heads(features, labels, learning_rates=[2.0, 20.0], **settings)
    alone = train_linear_heads(features, labels, learning_rates=[20.0], **settings)
    torch.testing.assert_close(grid[1].weight, alone[0].weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grid[1].bias, alone[0].bias, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(grid[0].weight, grid[1].weight)


def test_grid_heads_learn_separable_features():
    features, labels = separable_features()
    (head,) = train_linear_heads(features, labels, 3, [200.0], epochs=20, warmup_epochs=2, batch_size=16, seed=0)
    accuracy = (head(features).argmax(-1) == labels).float().mean()
    assert accuracy > 0.9


def test_fitted_batch_norm_standardises_the_features():
    features = torch.randn(200, 4) * torch.tensor([1.0, 5.0, 0.1, 2.0]) + torch.tensor([3.0, -1.0, 0.0, 10.0])
    with torch.no_grad():
        standardised = fit_feature_batch_norm(features)(features)
    torch.testing.assert_close(standardised.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    variance = features.var(0, unbiased=False)
    torch.testing.assert_close(standardised.var(0, unbiased=False), variance / (variance + 1e-6))  # eps 1e-6


def test_topk_metric_counts_ranked_hits():
    ranked = torch.tensor([[2, 0, 1, 3, 4], [1, 2, 0, 3, 4], [0, 1, 2, 3, 4]])
    accuracy = compute_topk_accuracy(ranked, torch.tensor([0, 1, 5]))
    assert accuracy == {"top1_accuracy": pytest.approx(1 / 3), "top5_accuracy": pytest.approx(2 / 3)}


def test_encoder_fingerprint_changes_with_any_weight_but_not_with_labels():
    torch.manual_seed(0)
    encoder = CAEv2Model(build_tiny_config())
    relabelled = CAEv2Model(build_tiny_config(num_labels=7))
    relabelled.load_state_dict(encoder.state_dict())
    assert fingerprint_encoder(relabelled) == fingerprint_encoder(encoder)
    with torch.no_grad():
        relabelled.encoder.layers[1].mlp.fc2.bias[3] += 1e-3
    assert fingerprint_encoder(relabelled) != fingerprint_encoder(encoder)


def test_data_description_changes_when_a_file_changes(tmp_path: Path):
    for name in ("a", "b"):
        (tmp_path / "cls" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "cls" / f"{name}.png").write_bytes(b"12345")
    source = {"train_dir": str(tmp_path), "data_files": None, "image_column": None}
    before = describe_data_source(source)
    assert before == describe_data_source(dict(source))
    (tmp_path / "cls" / "b.png").write_bytes(b"123456")
    assert describe_data_source(source)["files"] != before["files"]
    assert {key for key in before} == {"train_dir", "files"}


def test_frozen_encoder_loader_refuses_weights_of_another_architecture(tmp_path: Path):
    teacher = dict(build_tiny_config().teacher_config.to_dict())
    CLIPVisionModel(CLIPVisionConfig(**teacher)).save_pretrained(tmp_path / "clip")
    build_tiny_config().save_pretrained(tmp_path / "mixed")
    shutil.copy(tmp_path / "clip" / "model.safetensors", tmp_path / "mixed" / "model.safetensors")
    with pytest.raises(ValueError, match="has no weights for .* tensors of its CAEv2Model encoder"):
        load_frozen_encoder(str(tmp_path / "mixed"))
    assert os.path.isfile(tmp_path / "clip" / "config.json")
    assert not any(parameter.requires_grad for parameter in load_frozen_encoder(str(tmp_path / "clip")).parameters())


def test_config_values_become_command_line_flags():
    values = {"lr": 0.1, "files": ["a", "b"], "flag": True, "unset": None, "kwargs": {"min_lr": 1e-6}}
    assert config_to_arguments(values) == [
        "--lr", "0.1", "--files", "a", "b", "--flag", "true", "--kwargs", '{"min_lr": 1e-06}',
    ]  # fmt: skip


def test_label_count_comes_from_the_dataset_card_when_it_has_split_sizes():
    features = datasets.Features({"label": datasets.ClassLabel(names=["a", "b", "c"])})
    dataset = datasets.Dataset.from_dict({"label": [0, 1, 1, 0]}, features=features).to_iterable_dataset()
    assert count_labels(dataset, "train") == (4, 1)  # no split sizes: one pass over the labels
    dataset.info.splits = datasets.SplitDict({"train": datasets.SplitInfo("train", num_examples=1000)})
    assert count_labels(dataset, "train") == (1000, 2)  # a Hub dataset's card: no pass over the data


def test_config_file_is_found_by_flag_and_overridden(tmp_path: Path):
    config = tmp_path / "probe.json"
    config.write_text('{"train_dir": "a", "image_column": "jpg", "streaming": false}')
    (data_args,) = parse_script_arguments((ImageDataArguments,), ["--image_column", "png", "--config", str(config)])
    assert (data_args.train_dir, data_args.image_column, data_args.streaming) == ("a", "png", False)
