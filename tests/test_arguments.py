"""Unit tests for caev2_hf.cli: config files turned into flags, found by flag or position, then overridden."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from caev2_hf.cli import config_to_arguments, parse_arguments_with_config
from caev2_hf.evaluation.labelled_data import ImageDataArguments


@dataclass
class RequiredArguments:
    output_dir: str = field(metadata={"help": "A field without a default."})
    epochs: int = field(default=1, metadata={"help": "A field with one."})


def test_config_values_become_command_line_flags():
    values = {"lr": 0.1, "files": ["a", "b"], "flag": True, "unset": None, "kwargs": {"min_lr": 1e-6}}
    assert config_to_arguments(values) == [
        "--lr", "0.1", "--files", "a", "b", "--flag", "true", "--kwargs", '{"min_lr": 1e-06}',
    ]  # fmt: skip


def test_config_file_is_found_by_flag_and_overridden(tmp_path: Path):
    config = tmp_path / "probe.json"
    config.write_text('{"train_dir": "a", "image_column": "jpg", "streaming": false}')
    (data_args,) = parse_arguments_with_config(
        (ImageDataArguments,), ["--image_column", "png", "--config", str(config)]
    )
    assert (data_args.train_dir, data_args.image_column, data_args.streaming) == ("a", "png", False)


def test_config_file_given_first_may_fill_required_fields(tmp_path: Path):
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\nepochs: 3\n")
    (arguments,) = parse_arguments_with_config((RequiredArguments,), [str(config), "--epochs", "5"])
    assert (arguments.output_dir, arguments.epochs) == ("out", 5)


def test_config_file_with_an_unknown_key_is_refused_with_a_suggestion(tmp_path: Path):
    config = tmp_path / "probe.yaml"
    config.write_text("validation_dirr: val\n")
    with pytest.raises(ValueError, match=r"unknown argument\(s\) validation_dirr \(did you mean \['validation_dir'\]"):
        parse_arguments_with_config((ImageDataArguments,), ["--config", str(config)])
