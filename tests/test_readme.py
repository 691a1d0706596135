"""The README stays true: its Python examples run as written."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from conftest import BLOCK_CAEV2_HF, build_tiny_config
from PIL import Image
from torch import nn

from caev2_hf import CAEv2Model
from caev2_hf.evaluation.classification.probe_outputs import build_probe_classifier


README = Path(__file__).resolve().parents[1] / "README.md"


def python_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def test_readme_python_example_runs_and_round_trips(tmp_path, monkeypatch):
    example = python_examples()[0]
    monkeypatch.chdir(tmp_path)  # it saves to ./caev2-tiny
    torch.manual_seed(0)
    namespace = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert namespace["features"].shape == (1, 192)  # ViT-Tiny width
    assert (tmp_path / "caev2-tiny" / "model.safetensors").is_file()
    assert 0 < float(namespace["outputs"].loss) < 2  # a cosine distance averaged over tokens


def test_readme_pipeline_example_runs_in_a_fresh_process_without_the_package(tmp_path):
    (example,) = [block for block in python_examples() if 'pipeline("image-classification"' in block]
    torch.manual_seed(0)
    encoder = CAEv2Model(build_tiny_config()).eval()
    head = nn.Sequential(nn.BatchNorm1d(32, affine=False, eps=1e-6), nn.Linear(32, 2))
    build_probe_classifier(encoder, head, ["china", "flower"]).save_pretrained(tmp_path / "probe")  # as the probe
    Image.new("RGB", (48, 40), (10, 200, 30)).save(tmp_path / "photo.jpg")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_CAEV2_HF + example],
        cwd=tmp_path, env=env, timeout=300, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert sorted(prediction["label"] for prediction in predictions) == ["china", "flower"]
    assert abs(sum(prediction["score"] for prediction in predictions) - 1) < 1e-5
