"""caev2_hf_cli.parsing: the config file read to a mapping, the command line laid over it, parsed once."""

import argparse
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from caev2_hf_cli.errors import UserError
from caev2_hf_cli.parsing import ALTERNATIVES, MERGED_MAPPING, parse_arguments, run_command


@dataclass
class Source:
    train_dir: str | None = field(default=None, metadata={"help": "A folder.", ALTERNATIVES: "source"})
    data_files: list[str] | None = field(default=None, metadata={"help": "Shards.", ALTERNATIVES: "source"})
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


def test_run_command_turns_a_user_error_into_one_line_and_status_2(capsys: pytest.CaptureFixture):
    def fails() -> None:
        raise UserError("--train_dir x: no such folder.")

    with pytest.raises(SystemExit) as exit_info:
        run_command(fails)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --train_dir x: no such folder.\n"
    assert run_command(lambda value: value + 1, 1) == 2


def test_the_command_line_package_imports_neither_torch_nor_caev2_hf():
    code = (
        "import sys, caev2_hf_cli, caev2_hf_cli.parsing, caev2_hf_cli.checks, caev2_hf_cli.errors\n"
        "print(sorted(name for name in ('torch', 'caev2_hf') if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"
