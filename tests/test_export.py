"""Tests for caev2_hf/export.py: the final folder (encoder, processor, card, pretraining/) and the card's text."""

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import build_tiny_config
from transformers import AutoImageProcessor, AutoModel

from caev2_hf import CAEv2Config, CAEv2ForPreTraining, CAEv2Model
from caev2_hf.pretraining import export
from caev2_hf.pretraining.export import describe_training, export_final_model, preset_of


NUMBERS = {"max_steps": 1200, "effective_batch_size": 2048, "num_processes": 8, "learning_rate": 1.5e-3,
           "warmup_steps": 40, "steps_per_epoch": 625}  # fmt: skip


def test_export_final_model_writes_the_encoder_and_the_pretraining_model(
    tmp_path: Path,
    fresh_accelerate_state,
) -> None:
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(CAEv2ForPreTraining(build_tiny_config()))
    final_dir = str(tmp_path / "run" / "final")
    export_final_model(accelerator, model, final_dir, None, None, ["ILSVRC/imagenet-1k"], "Trained for a test.")
    encoder = AutoModel.from_pretrained(final_dir)
    pretraining = CAEv2ForPreTraining.from_pretrained(str(tmp_path / "run" / "final" / "pretraining"))
    assert type(encoder) is CAEv2Model and AutoImageProcessor.from_pretrained(final_dir).crop_size["height"] == 32
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(pretraining.state_dict()[name], tensor, rtol=0, atol=0)
        if name.startswith("caev2."):
            torch.testing.assert_close(encoder.state_dict()[name.removeprefix("caev2.")], tensor, rtol=0, atol=0)
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert "Trained for a test." in card and "model_name: run" in card and "the **encoder**" in card


def test_preset_of_names_only_an_exact_official_architecture() -> None:
    assert preset_of(CAEv2Config.from_preset("base"), "base") == "base"
    assert preset_of(CAEv2Config.from_preset("base", hidden_size=384, num_attention_heads=6), "base") is None
    assert preset_of(CAEv2Config.from_preset("small"), None) is None


def test_describe_training_states_the_run_and_flags_a_random_teacher() -> None:
    text = describe_training("base", NUMBERS, 0.1234, "timm/imagenet-1k-wds", use_random_teacher=False)
    assert text == (
        "Pretrained with `run_pretrain.py` (ViT-Base) on timm/imagenet-1k-wds: 1,200 updates at an effective batch of "
        "2,048 (8 process(es)), peak lr 0.0015 after 40 warmup updates, cosine decay. Training loss at the end: 0.1234."
    )
    assert "randomly initialised teacher" in describe_training(None, NUMBERS, None, "demo_data", True)


def test_export_card_loads_the_folder_that_holds_the_model(tmp_path: Path, fresh_accelerate_state) -> None:
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(CAEv2ForPreTraining(build_tiny_config()))
    final_dir = str(tmp_path / "demo_output" / "final")
    export_final_model(accelerator, model, final_dir, None, None, [], "Trained for a test.")
    card = (tmp_path / "demo_output" / "final" / "README.md").read_text()
    assert f'AutoModel.from_pretrained("{final_dir}")' in card and "model_name: demo_output" in card
    assert f'from_pretrained("{tmp_path / "demo_output"}")' not in card and "imagenet" not in card.split("---")[1]
    export_final_model(accelerator, model, final_dir, None, "my-org/caev2-demo", [], "Trained for a test.")
    assert 'AutoModel.from_pretrained("my-org/caev2-demo")' in (Path(final_dir) / "README.md").read_text()


def test_a_crash_while_exporting_leaves_the_previous_final_folder_whole(
    tmp_path: Path, fresh_accelerate_state, monkeypatch
) -> None:
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(CAEv2ForPreTraining(build_tiny_config()))
    final_dir = tmp_path / "run" / "final"
    export_final_model(accelerator, model, str(final_dir), None, None, [], "The first export.")
    before = sorted(path.relative_to(final_dir) for path in final_dir.rglob("*"))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "write_model_card", crash)
    with pytest.raises(OSError, match="disk full"):
        export_final_model(accelerator, model, str(final_dir), None, None, [], "The second export.")
    assert sorted(path.relative_to(final_dir) for path in final_dir.rglob("*")) == before
    assert "The first export." in (final_dir / "README.md").read_text()
    monkeypatch.undo()
    export_final_model(accelerator, model, str(final_dir), None, None, [], "The third export.")
    assert "The third export." in (final_dir / "README.md").read_text()
    assert sorted(path.name for path in final_dir.parent.iterdir()) == ["final"]  # no .incomplete or .replaced left
