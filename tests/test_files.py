"""caev2_hf.files: a file is replaced whole or left as it was, and no temporary file outlives a failed write."""

import json
import os
from pathlib import Path

import pytest

from caev2_hf.files import write_atomically, write_json, write_text


def test_json_and_text_are_written_and_replace_the_previous_file(tmp_path: Path):
    path = tmp_path / "results.json"
    path.write_text("old")
    assert write_json(str(path), {"map": 0.5, "classes": ["disk"]}, indent=2) == str(path)
    assert json.loads(path.read_text()) == {"map": 0.5, "classes": ["disk"]}
    assert path.read_text().startswith('{\n  "map"')  # the dump options reach json
    write_text(str(path), "plain")
    assert path.read_text() == "plain"
    assert os.listdir(tmp_path) == ["results.json"]


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path: Path):
    path = tmp_path / "results.json"
    path.write_text('{"map": 0.5}')
    seen = []

    def write_half_then_fail(temporary: str) -> None:
        seen.append(temporary)
        Path(temporary).write_text('{"map": ')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomically(str(path), write_half_then_fail)
    assert path.read_text() == '{"map": 0.5}'
    assert os.listdir(tmp_path) == ["results.json"]
    assert seen[0].startswith(f"{path}.") and f".{os.getpid()}." in seen[0]  # a name of this process's own


def test_a_write_that_creates_nothing_before_failing_raises_its_own_error(tmp_path: Path):
    def fail(temporary: str) -> None:
        raise ValueError("not serialisable")

    with pytest.raises(ValueError, match="not serialisable"):
        write_atomically(str(tmp_path / "a.json"), fail)
    assert os.listdir(tmp_path) == []
