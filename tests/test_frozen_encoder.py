"""Unit tests for caev2_hf.evaluation.classification.frozen_encoder: loading an encoder to probe."""

import os
import shutil
from pathlib import Path

import pytest
from conftest import build_tiny_config
from transformers import CLIPVisionConfig, CLIPVisionModel

from caev2_hf.evaluation.classification.frozen_encoder import load_frozen_encoder


def test_frozen_encoder_loader_refuses_weights_of_another_architecture(tmp_path: Path):
    teacher = dict(build_tiny_config().teacher_config.to_dict())
    CLIPVisionModel(CLIPVisionConfig(**teacher)).save_pretrained(tmp_path / "clip")
    build_tiny_config().save_pretrained(tmp_path / "mixed")
    shutil.copy(tmp_path / "clip" / "model.safetensors", tmp_path / "mixed" / "model.safetensors")
    with pytest.raises(ValueError, match="has no weights for .* tensors of its CAEv2Model encoder"):
        load_frozen_encoder(str(tmp_path / "mixed"))
    assert os.path.isfile(tmp_path / "clip" / "config.json")
    assert not any(parameter.requires_grad for parameter in load_frozen_encoder(str(tmp_path / "clip")).parameters())
