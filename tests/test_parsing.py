"""caev2_hf_cli.parsing: the config file read to a mapping, the command line laid over it, parsed once."""

import argparse
import pkgutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import caev2_hf_cli
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.parsing import (
    ALTERNATIVES,
    MERGED_MAPPING,
    PART_OF,
    answer_help,
    closest_names,
    parse_arguments,
    run_command,
)


@dataclass
class Source:
    train_dir: str | None = field(default=None, metadata={"help": "A folder.", ALTERNATIVES: "source"})
    data_files: list[str] | None = field(default=None, metadata={"help": "Shards.", ALTERNATIVES: "source"})
    dataset_name: str | None = field(default=None, metadata={"help": "Both splits.", ALTERNATIVES: ("source", "val")})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its config.", PART_OF: ("source", "val")})
    validation_dir: str | None = field(default=None, metadata={"help": "Held out.", ALTERNATIVES: "val"})
    image_column: str | None = field(default=None, metadata={"help": "Not a source."})


@dataclass
class Run:
    output_dir: str = field(metadata={"help": "Required: no default."})
    learning_rate: float = field(default=1.0, metadata={"help": "A float."})
    max_steps: int = field(default=10, metadata={"help": "An int."})
    compile: bool = field(default=False, metadata={"help": "A bool."})
    overrides: dict | str | None = field(default=None, metadata={"help": "A mapping.", MERGED_MAPPING: True})

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise UserError(f"--max_steps {self.max_steps}: must be at least 1.")


CLASSES = (Source, Run)


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


def test_command_line_overrides_the_file_and_values_keep_their_types(tmp_path: Path):
    config = write(tmp_path, "output_dir: out\nlearning_rate: 1e-3\nmax_steps: 5\ncompile: true\n")
    source, run = parse_arguments(CLASSES, [config, "--max_steps", "7"])
    assert (run.output_dir, run.learning_rate, run.max_steps, run.compile) == ("out", 1e-3, 7, True)
    assert isinstance(run.learning_rate, float) and source.train_dir is None
    _, by_flag = parse_arguments(CLASSES, ["--config", config, "--learning_rate=0.5"])
    assert (by_flag.learning_rate, by_flag.max_steps) == (0.5, 5)


def test_a_mapping_field_merges_the_command_line_keys_into_the_files(tmp_path: Path):
    config = write(tmp_path, "output_dir: out\noverrides: {image_size: 64, use_random_teacher: true}\n")
    _, run = parse_arguments(CLASSES, [config, "--overrides", '{"drop_path_rate": 0.1, "image_size": 32}'])
    assert run.overrides == {"image_size": 32, "use_random_teacher": True, "drop_path_rate": 0.1}


def test_a_source_on_the_command_line_replaces_every_source_of_the_file(tmp_path: Path):
    config = write(tmp_path, "output_dir: out\ntrain_dir: demo\nimage_column: jpg\n")
    source, _ = parse_arguments(CLASSES, [config, "--data_files", "a.tar", "b.tar"])
    assert (source.train_dir, source.data_files, source.image_column) == (None, ["a.tar", "b.tar"], "jpg")


def test_a_setting_of_a_source_goes_with_it_but_replaces_nothing_itself(tmp_path: Path):
    config = write(tmp_path, "output_dir: out\ndataset_name: org/data\ndataset_config_name: full\n")
    source, _ = parse_arguments(CLASSES, [config, "--dataset_config_name", "mini"])
    assert (source.dataset_name, source.dataset_config_name) == ("org/data", "mini")
    source, _ = parse_arguments(CLASSES, [config, "--train_dir", "images"])
    assert (source.train_dir, source.dataset_name, source.dataset_config_name) == ("images", None, None)


def test_a_field_may_stand_in_several_groups(tmp_path: Path):
    """A Hub dataset holds both splits: it goes when either split gets a local source, and replaces both."""
    local = write(tmp_path, "output_dir: out\ntrain_dir: a\nvalidation_dir: b\n", "local.yaml")
    source, _ = parse_arguments(CLASSES, [local, "--validation_dir", "c"])
    assert (source.train_dir, source.validation_dir) == ("a", "c")
    source, _ = parse_arguments(CLASSES, [local, "--dataset_name", "org/data"])
    assert (source.train_dir, source.validation_dir, source.dataset_name) == (None, None, "org/data")
    hub = write(tmp_path, "output_dir: out\ndataset_name: org/data\n", "hub.yaml")
    source, _ = parse_arguments(CLASSES, [hub, "--validation_dir", "c"])
    assert (source.dataset_name, source.validation_dir) == (None, "c")


def test_help_lists_the_given_classes_and_the_epilog_then_exits(capsys: pytest.CaptureFixture):
    answer_help(["--max_steps", "3"], (Run,))  # not asked: nothing happens
    with pytest.raises(SystemExit) as exit_info:
        answer_help(["--max_steps", "3", "--help"], (Run,), "What it does.", "And the rest.")
    shown = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "What it does." in shown and "--max_steps MAX_STEPS" in shown and shown.rstrip().endswith("And the rest.")
    assert "--train_dir" not in shown


def test_the_command_line_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []
    original = argparse.ArgumentParser.parse_known_args
    monkeypatch.setattr(
        argparse.ArgumentParser, "parse_known_args", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    parse_arguments(CLASSES, [write(tmp_path, "output_dir: out\n"), "--max_steps", "3"])
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("text", "flags", "message"),
    [
        ("output_dir: out\nmax_step: 3\n", [], r"unknown argument\(s\) max_step \(did you mean max_steps\?\)"),
        ("output_dir: out\nmax_steps: 2.5\n", [], r"max_steps: 2.5 is not a valid int"),
        ("output_dir: out\nlearning_rate: fast\n", [], r"learning_rate: 'fast' is not a valid float"),
        ("output_dir: out\n", ["--max_steps", "0"], r"--max_steps 0: must be at least 1"),
        ("- a\n- b\n", [], "must hold a mapping"),
    ],
)
def test_bad_file_values_are_user_errors(tmp_path: Path, text: str, flags: list[str], message: str):
    with pytest.raises(UserError, match=message):
        parse_arguments(CLASSES, [write(tmp_path, text), *flags])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--output_dir", "o", "--max_step", "3"], "did you mean --max_steps for --max_step"),
        (["--max_steps", "3"], "the following arguments are required: --output_dir"),
        (["--output_dir", "o", "--max_steps", "three"], "invalid int value"),
    ],
)
def test_bad_flags_end_with_usage_and_status_2(argv: list[str], message: str, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(CLASSES, argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


FLAGS = ["--base_learning_rate", "--fast_base_learning_rates", "--learning_rate", "--max_steps", "--lr_scheduler_type",
         "--num_train_epochs", "--per_device_train_batch_size", "--per_device_eval_batch_size", "--epochs"]  # fmt: skip


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("--learning_rates", ["--fast_base_learning_rates"]),  # issue 22: difflib alone said --base_learning_rate
        ("--max_step", ["--max_steps"]),  # a word cut short
        ("--num_epochs", ["--num_train_epochs"]),  # a word left out
        ("--max_stepz", ["--max_steps"]),  # a misspelling: the closest spelling
        ("--learnig_rate", ["--learning_rate"]),
        ("--per_device_batch_size", ["--per_device_eval_batch_size", "--per_device_train_batch_size"]),  # both fit
        ("--lr", []),  # holds the word of --lr_scheduler_type, but is far from it: no guess beats a wrong one
        ("--colour", []),
    ],
)
def test_a_typo_is_matched_to_the_names_holding_its_words_first(typed: str, meant: list[str]):
    assert closest_names(typed, FLAGS) == meant


def test_run_command_turns_a_user_error_into_one_line_and_status_2(capsys: pytest.CaptureFixture):
    def fails() -> None:
        raise UserError("--train_dir x: no such folder.")

    with pytest.raises(SystemExit) as exit_info:
        run_command(fails)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --train_dir x: no such folder.\n"
    assert run_command(lambda value: value + 1, 1) == 2


def test_the_command_line_package_imports_neither_torch_nor_caev2_hf():
    """Every module of caev2_hf_cli, and the console commands' module before it runs a command."""
    modules = [f"caev2_hf_cli.{module.name}" for module in pkgutil.iter_modules(caev2_hf_cli.__path__)]
    assert {"caev2_hf_cli.pretraining", "caev2_hf_cli.classification", "caev2_hf_cli.hub"} <= set(modules)
    code = (
        f"import sys, importlib\nfor name in {[*modules, 'caev2_hf_commands']!r}:\n    importlib.import_module(name)\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'caev2_hf')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"
