"""Unit tests for caev2_hf.evaluation.feature_cache: the encoder fingerprint that keys the cached features."""

import torch
from conftest import build_tiny_config

from caev2_hf import CAEv2Model
from caev2_hf.evaluation.feature_cache import fingerprint_encoder


def test_encoder_fingerprint_changes_with_any_weight_but_not_with_labels():
    torch.manual_seed(0)
    encoder = CAEv2Model(build_tiny_config())
    relabelled = CAEv2Model(build_tiny_config(num_labels=7))
    relabelled.load_state_dict(encoder.state_dict())
    assert fingerprint_encoder(relabelled) == fingerprint_encoder(encoder)
    with torch.no_grad():
        relabelled.encoder.layers[1].mlp.fc2.bias[3] += 1e-3
    assert fingerprint_encoder(relabelled) != fingerprint_encoder(encoder)
