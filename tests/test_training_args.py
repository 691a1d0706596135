"""Tests for caev2_hf/training_args.py: YAML plus command-line parsing, and the shipped recipe files."""

from pathlib import Path

import pytest
import yaml

from caev2_hf.pretraining.arguments import parse_pretraining_arguments
from caev2_hf.pretraining.schedule import compute_training_numbers


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write_yaml(tmp_path: Path, values: dict | list) -> str:
    path = tmp_path / "arguments.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_parse_reads_yaml_then_lets_the_command_line_override(tmp_path: Path) -> None:
    config = write_yaml(
        tmp_path,
        {"model_preset": "small", "per_device_train_batch_size": 8, "learning_rate": "1e-4",  # YAML 1.1 reads a str
         "data_files": ["a.tar", "b.tar"], "torch_compile": True, "config_overrides": {"drop_path_rate": 0.0}},
    )  # fmt: skip
    model_args, data_args, training_args = parse_pretraining_arguments(
        ["--config", config, "--per_device_train_batch_size", "16", "--torch_compile", "false"]
    )
    assert model_args.model_preset == "small" and model_args.config_overrides == {"drop_path_rate": 0.0}
    assert data_args.data_files == ["a.tar", "b.tar"] and data_args.dataloader_num_workers == 8  # a default
    assert training_args.per_device_train_batch_size == 16 and training_args.learning_rate == 1e-4
    assert training_args.torch_compile is False


def test_parse_without_a_config_file_uses_the_defaults() -> None:
    model_args, data_args, training_args = parse_pretraining_arguments(["--max_steps", "5"])
    assert (model_args.model_preset, data_args.crop_min_scale, training_args.max_steps) == ("base", 0.4, 5)
    assert (training_args.learning_rate, training_args.learning_rate_batch_size) == (1.5e-3, 2048)


def test_parse_refuses_unknown_yaml_keys_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown argument\(s\) learning_rat \(did you mean \['learning_rate'\]\)"):
        parse_pretraining_arguments(["--config", write_yaml(tmp_path, {"learning_rat": 0.1})])


def test_parse_refuses_a_yaml_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must hold a mapping"):
        parse_pretraining_arguments(["--config", write_yaml(tmp_path, ["max_steps", 3])])


def test_config_overrides_read_json_from_the_command_line() -> None:
    model_args, _, _ = parse_pretraining_arguments(["--config_overrides", '{"num_masking_patches": 75}'])
    assert model_args.config_overrides == {"num_masking_patches": 75}
    with pytest.raises(ValueError, match="is not JSON"):
        parse_pretraining_arguments(["--config_overrides", "num_masking_patches=75"])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--mixed_precision", "fp8"], "mixed_precision='fp8'"),
        (["--push_to_hub"], "push_to_hub needs hub_model_id"),
        (["--logging_steps", "0"], "logging_steps=0 must be at least 1"),
    ],
)
def test_parse_refuses_invalid_training_arguments(arguments: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_pretraining_arguments(arguments)


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large"])
def test_recipe_files_give_the_official_numbers_on_eight_processes(size: str) -> None:
    model_args, _, training_args = parse_pretraining_arguments(["--config", str(CONFIGS / f"vit-{size}.yaml")])
    numbers = compute_training_numbers(
        training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps, 8,
        training_args.learning_rate, training_args.learning_rate_batch_size,
        num_train_epochs=training_args.num_train_epochs, num_train_examples=training_args.num_train_examples,
        warmup_epochs=training_args.warmup_epochs,
    )  # fmt: skip
    assert model_args.model_preset == size
    assert (numbers.effective_batch_size, numbers.learning_rate) == (2048, 1.5e-3)
    assert (numbers.steps_per_epoch, numbers.max_steps, numbers.warmup_steps) == (625, 187_500, 6_250)
    assert (training_args.adam_beta1, training_args.adam_beta2, training_args.weight_decay) == (0.9, 0.999, 0.05)
    assert (training_args.min_learning_rate, training_args.max_grad_norm) == (1e-5, 3.0)
    assert training_args.torch_compile and training_args.mixed_precision == "bf16"  # the measured fast path


def test_demo_file_asks_for_a_random_teacher_and_offline_images() -> None:
    model_args, data_args, training_args = parse_pretraining_arguments(["--config", str(CONFIGS / "demo.yaml")])
    assert model_args.config_overrides["use_random_teacher"] is True
    assert data_args.train_dir == "demo_data/images" and data_args.num_demo_images > 0
    assert training_args.mixed_precision == "no" and training_args.max_steps > 0
