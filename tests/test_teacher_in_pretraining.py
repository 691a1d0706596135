"""The teacher in run_pretrain.py (docs/design.md#teacher): downloaded once for a fresh model, then carried by every
checkpoint and pretraining folder, so resuming or continuing from a folder downloads nothing."""

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from test_run_pretrain import (
    final_weights,
    pretrain,
    run_pretrain,
    run_until_preempted,
    tiny_model_overrides,
    write_config,
)
from transformers import CLIPVisionModelWithProjection

from caev2_hf import CAEv2ForPreTraining
from caev2_hf_cli.pretraining import PretrainingModelArguments


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture
def clip_folder(tmp_path: Path) -> str:
    """A tiny CLIP standing in for openai/clip-vit-base-patch16 (the tests are offline)."""
    torch.manual_seed(7)
    overrides = tiny_model_overrides()
    config = CAEv2ForPreTraining.config_class(**overrides).teacher_config
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    return str(tmp_path / "clip")


@pytest.fixture
def downloads(monkeypatch) -> list[str]:
    """Records every teacher download (`load_teacher` goes through `CLIPVisionModelWithProjection.from_pretrained`)."""
    calls, original = [], CLIPVisionModelWithProjection.from_pretrained

    def recording_from_pretrained(source, *args, **kwargs):
        calls.append(str(source))
        return original(source, *args, **kwargs)

    monkeypatch.setattr(CLIPVisionModelWithProjection, "from_pretrained", recording_from_pretrained)
    return calls


def real_teacher_overrides(clip_folder: str) -> dict:
    return {**tiny_model_overrides(), "use_random_teacher": False, "teacher_name_or_path": clip_folder}


def test_build_model_downloads_only_a_teacher_that_never_received_weights(tmp_path, clip_folder, downloads):
    accelerator = Accelerator(cpu=True)
    fresh = PretrainingModelArguments(model_preset="base", config_overrides=real_teacher_overrides(clip_folder))
    config = run_pretrain.build_config(fresh)
    model = run_pretrain.build_model(fresh, config, accelerator, seed=0)
    assert downloads == [clip_folder] and bool(model.teacher.has_weights)
    model.save_pretrained(tmp_path / "loaded")
    run_pretrain.build_model(fresh, config, accelerator, seed=0, resuming=True)  # the checkpoint brings the teacher
    continued = run_pretrain.build_model(
        PretrainingModelArguments(model_name_or_path=str(tmp_path / "loaded")), None, accelerator, seed=0
    )
    assert downloads == [clip_folder] and bool(continued.teacher.has_weights)
    torch.testing.assert_close(
        continued.teacher.model.visual_projection.weight, model.teacher.model.visual_projection.weight, rtol=0, atol=0
    )
    CAEv2ForPreTraining(model.config).save_pretrained(tmp_path / "never_loaded")
    run_pretrain.build_model(
        PretrainingModelArguments(model_name_or_path=str(tmp_path / "never_loaded")), None, accelerator, seed=0
    )
    assert downloads == [clip_folder, clip_folder]


def test_resume_with_a_real_teacher_restores_it_without_a_download(
    tmp_path, demo_image_folder, clip_folder, downloads, monkeypatch
):
    arguments = dict(
        train_dir=demo_image_folder, max_steps=4, save_steps=2, config_overrides=real_teacher_overrides(clip_folder)
    )
    uninterrupted = write_config(tmp_path, "uninterrupted", **arguments)
    interrupted = write_config(tmp_path, "interrupted", **arguments)
    pretrain(["--config", uninterrupted])
    run_until_preempted(monkeypatch, interrupted, step_calls=2)  # in update 3
    assert downloads == [clip_folder, clip_folder]
    pretrain(["--config", interrupted, "--resume_from_checkpoint", "latest"])
    assert downloads == [clip_folder, clip_folder]  # the resumed run took its teacher from the checkpoint

    expected, resumed = final_weights(tmp_path / "uninterrupted"), final_weights(tmp_path / "interrupted")
    assert expected.keys() == resumed.keys() and bool(resumed["teacher.has_weights"])
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0, msg=name)
    clip = CLIPVisionModelWithProjection.from_pretrained(clip_folder)
    torch.testing.assert_close(
        resumed["teacher.model.visual_projection.weight"], clip.visual_projection.weight, rtol=0, atol=0
    )
