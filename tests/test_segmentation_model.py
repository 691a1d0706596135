"""Unit tests for caev2_hf.evaluation.segmentation.model: UperNet on a CAE v2 backbone built from an encoder folder."""

import pytest
import torch
from conftest import build_tiny_config
from transformers import UperNetConfig

from caev2_hf import CAEv2ForPreTraining
from caev2_hf.evaluation.segmentation.model import load_segmentation_model


def test_upernet_from_a_pretraining_checkpoint_loads_the_whole_encoder(tmp_path):
    torch.manual_seed(0)
    source = CAEv2ForPreTraining(build_tiny_config(num_hidden_layers=4))
    source.save_pretrained(tmp_path)
    model, message = load_segmentation_model(str(tmp_path), 3, {0: "a", 1: "b", 2: "c"}, crop_size=32)
    assert "all 71 encoder tensors loaded" in message and "none missing or unexpected" in message
    torch.testing.assert_close(
        model.backbone.encoder.layers[2].mlp.fc1.weight, source.caev2.encoder.layers[2].mlp.fc1.weight
    )
    assert model.config.backbone_config.backbone_image_size == 32 and model.config.num_labels == 3


def test_upernet_from_another_model_is_refused(tmp_path):
    UperNetConfig(num_labels=2).backbone_config.save_pretrained(tmp_path)  # a ResNet config
    with pytest.raises(ValueError, match="not CAE v2"):
        load_segmentation_model(str(tmp_path), 2, {0: "a", 1: "b"}, crop_size=32)
