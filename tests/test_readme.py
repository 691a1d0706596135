"""The README's first screen stays true: its Python example runs as written."""

import re
from pathlib import Path

import torch


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs_and_round_trips(tmp_path, monkeypatch):
    example = re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)  # it saves to ./caev2-tiny
    torch.manual_seed(0)
    namespace = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert namespace["features"].shape == (1, 192)  # ViT-Tiny width
    assert (tmp_path / "caev2-tiny" / "model.safetensors").is_file()
    assert 0 < float(namespace["outputs"].loss) < 2  # a cosine distance averaged over tokens
