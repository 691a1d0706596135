"""Tests for caev2_hf.plots and the pictures the scripts write with it (loss.png, the probe's accuracy.png)."""

import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState
from conftest import build_tiny_config
from PIL import Image

from caev2_hf import CAEv2ForPreTraining, visualize
from caev2_hf.evaluation.classification.probe import EpochRecord, LearningRateHistory
from caev2_hf.plots import (
    INSTALL_HINT,
    MetricHistory,
    TrainingCurves,
    plot_probe_curves,
    plot_training_curves,
    probe_accuracy_curves,
)


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
REPO_ROOT = Path(__file__).resolve().parents[1]
MISSING_MESSAGE = f"matplotlib is not installed, so no loss.png picture: {INSTALL_HINT} to get it."


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_size(path: str | Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def logged_rows(steps: list[int]) -> list[dict[str, float]]:
    return [
        {"loss": 1 / step, "visible_loss": 0.5 / step, "masked_loss": 2 / step, "cls_loss": 0.1, "learning_rate": 1e-3,
         "images_per_second": 100.0 + step}
        for step in steps
    ]  # fmt: skip


def test_metric_history_keeps_rows_in_order():
    history = MetricHistory()
    for step, row in zip([10, 20, 30], logged_rows([10, 20, 30]), strict=True):
        history.append(step, row)
    history.append(40, {"loss": 0.01})  # a row without the other metrics
    assert len(history) == 4
    assert history.series("loss") == ([10, 20, 30, 40], [0.1, 0.05, 1 / 30, 0.01])
    assert history.series("images_per_second") == ([10, 20, 30], [110.0, 120.0, 130.0])


def test_loss_png_has_three_panels_of_the_expected_size(tmp_path: Path):
    history = MetricHistory()
    for step, row in zip([1, 2, 3], logged_rows([1, 2, 3]), strict=True):
        history.append(step, row)
    path = plot_training_curves(history, str(tmp_path / "loss.png"))
    assert path == str(tmp_path / "loss.png")
    assert png_size(path) == (1200, 300)  # 3 panels of 4 x 3 inches at 100 dpi
    assert os.listdir(tmp_path) == ["loss.png"]  # no temporary file left
    assert plot_training_curves(MetricHistory(), str(tmp_path / "empty.png")) is None


def test_training_curves_keep_the_rows_up_to_a_resumed_step(tmp_path: Path):
    curves = TrainingCurves(str(tmp_path))
    for step, row in zip([1, 2, 3, 4], logged_rows([1, 2, 3, 4]), strict=True):
        curves.record(step, row)
    assert curves.write() == str(tmp_path / "loss.png")
    saved = json.loads((tmp_path / "loss_history.json").read_text())
    assert [row["step"] for row in saved] == [1, 2, 3, 4] and saved[2]["metrics"]["loss"] == pytest.approx(1 / 3)
    resumed = TrainingCurves(str(tmp_path), start_step=2)
    assert resumed.history.steps == [1, 2] and resumed.history.rows == logged_rows([1, 2])
    assert len(TrainingCurves(str(tmp_path), start_step=0).history) == 0  # a fresh run ignores old rows


def test_training_curves_without_matplotlib_say_how_once_and_keep_the_rows(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    curves = TrainingCurves(str(tmp_path), log=logging.getLogger("test_plots"))
    curves.record(1, logged_rows([1])[0])
    with caplog.at_level(logging.INFO, logger="test_plots"):
        assert curves.write() is None
        assert curves.write() is None
    assert [record.getMessage() for record in caplog.records] == [MISSING_MESSAGE]
    assert sorted(os.listdir(tmp_path)) == ["loss_history.json"]


def probe_results(with_holdout: bool) -> dict:
    """A results.json as the probe writes it (ProbeResult.to_json's histories), for two learning rates."""
    histories = [
        LearningRateHistory(
            base, base * 2, 0.5 if with_holdout else None,
            [EpochRecord(epoch, 1.0 / epoch, 0.2 * epoch * scale, 0.1 * epoch * scale if with_holdout else None)
             for epoch in (1, 2, 3)],
        )
        for base, scale in ((0.1, 1.0), (1.0, 1.5))
    ]  # fmt: skip
    return {"top1_accuracy": 0.4, "learning_rate": 0.2, "learning_rate_histories": [asdict(h) for h in histories]}


def test_probe_curves_from_results_json():
    curves = probe_accuracy_curves(probe_results(with_holdout=True))
    assert list(curves) == ["holdout_top1_accuracy", "train_top1_accuracy"]
    assert list(curves["holdout_top1_accuracy"]) == ["base lr 0.1 (lr 0.2)", "base lr 1 (lr 2)"]
    epochs, accuracies = curves["train_top1_accuracy"]["base lr 1 (lr 2)"]
    assert epochs == [1, 2, 3] and accuracies == pytest.approx([0.3, 0.6, 0.9])
    assert list(probe_accuracy_curves(probe_results(with_holdout=False))) == ["train_top1_accuracy"]
    assert probe_accuracy_curves({"top1_accuracy": 0.5}) == {}


def test_probe_png_has_one_panel_per_measured_accuracy(tmp_path: Path):
    assert png_size(plot_probe_curves(probe_results(True), str(tmp_path / "fast.png"))) == (800, 300)
    assert png_size(plot_probe_curves(probe_results(False), str(tmp_path / "official.png"))) == (400, 300)
    assert plot_probe_curves({"top1_accuracy": 0.5}, str(tmp_path / "none.png")) is None


def write_pretrain_config(tmp_path: Path, train_dir: str, **arguments) -> str:
    overrides = build_tiny_config(regressor_num_hidden_layers=1).to_diff_dict()
    for key in ("model_type", "transformers_version"):
        overrides.pop(key, None)
    values = {
        "model_preset": "base", "config_overrides": overrides, "output_dir": str(tmp_path / "run"),
        "train_dir": train_dir, "dataloader_num_workers": 0, "shuffle_buffer_size": 8,
        "per_device_train_batch_size": 4, "learning_rate": 1e-3, "learning_rate_batch_size": 4, "max_steps": 4,
        "warmup_steps": 1, "logging_steps": 1, "save_steps": 2, "save_total_limit": 2, "mixed_precision": "no",
        "report_to": "none", **arguments,
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_pretraining_writes_loss_png_keeps_its_rows_on_resume_and_its_final_folder_draws(
    tmp_path: Path, demo_image_folder: str
):
    run_pretrain = load_script("run_pretrain")
    config = write_pretrain_config(tmp_path, demo_image_folder)
    run_pretrain.main(["--config", config])
    output_dir = tmp_path / "run"
    assert png_size(output_dir / "loss.png") == (1200, 300)
    first = json.loads((output_dir / "loss_history.json").read_text())
    assert [row["step"] for row in first] == [1, 2, 3, 4]
    assert set(first[0]["metrics"]) >= {"loss", "visible_loss", "masked_loss", "cls_loss", "learning_rate"}
    assert first[0]["metrics"]["learning_rate"] == pytest.approx(1e-3)  # after 1 warmup update: the peak
    # preempted after update 2: the resumed run keeps rows 1-2 and appends its own 3-4
    shutil.rmtree(output_dir / "checkpoints" / "checkpoint-00000004")
    AcceleratorState._reset_state(reset_partial_state=True)
    run_pretrain.main(["--config", config, "--resume_from_checkpoint", "latest"])
    resumed = json.loads((output_dir / "loss_history.json").read_text())
    assert [row["step"] for row in resumed] == [1, 2, 3, 4]
    assert resumed[:2] == first[:2]
    # and the run's final/ draws pictures, with the similarity panels from final/pretraining/ and its saved teacher
    image = os.path.join(demo_image_folder, "china", sorted(os.listdir(os.path.join(demo_image_folder, "china")))[0])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = visualize.main(
            ["--model", str(output_dir / "final"), "--image", image, "--output_dir", str(tmp_path)]
        )
    assert status == 0 and "cosine to the teacher: visible" in printed.getvalue()
    assert png_size(tmp_path / f"{Path(image).stem}.png") == (1100, 440)


def test_pretraining_without_matplotlib_says_how_and_goes_on(tmp_path: Path, demo_image_folder: str):
    config = write_pretrain_config(tmp_path, demo_image_folder, max_steps=2)
    code = (
        "import sys, runpy; sys.modules['matplotlib'] = None\n"
        f"sys.argv = ['run_pretrain.py', '--config', {config!r}]\n"
        "runpy.run_path('run_pretrain.py', run_name='__main__')\n"
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600, env=environment
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(MISSING_MESSAGE) == 1
    output_dir = tmp_path / "run"
    assert (output_dir / "final" / "model.safetensors").is_file()
    assert not (output_dir / "loss.png").exists() and (output_dir / "loss_history.json").is_file()


def test_probe_writes_its_accuracy_curves(tmp_path: Path, demo_image_folder: str):
    run_linear_probe = load_script("run_linear_probe")
    torch.manual_seed(0)
    CAEv2ForPreTraining(build_tiny_config()).save_pretrained(tmp_path / "encoder")
    arguments = [
        "--model", str(tmp_path / "encoder"), "--train_dir", demo_image_folder, "--validation_dir", demo_image_folder,
        "--output_dir", str(tmp_path / "probe"), "--protocol", "fast", "--cache_dir", str(tmp_path / "cache"),
        "--batch_size", "8", "--epochs", "3", "--warmup_epochs", "1", "--encoder_batch_size", "8",
        "--num_workers", "0", "--fast_base_learning_rates", "1", "10",
    ]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = run_linear_probe.main(arguments)
    picture = tmp_path / "probe" / "accuracy.png"
    assert png_size(picture) == (800, 300)  # held-out and train accuracy panels
    assert f"curves:  {picture}" in printed.getvalue()
    assert len(probe_accuracy_curves(results)["holdout_top1_accuracy"]) == 2


def test_probe_curves_without_matplotlib_say_how(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with caplog.at_level(logging.WARNING):
        assert plot_probe_curves(probe_results(True), str(tmp_path / "accuracy.png")) is None
    assert [record.getMessage() for record in caplog.records] == [
        f"matplotlib is not installed, so no probe accuracy picture: {INSTALL_HINT} to get it."
    ]
    assert os.listdir(tmp_path) == []
