"""Unit tests for caev2_hf.evaluation.classification.feature_cache: the encoder fingerprint that keys the cached
features, and a cache that is written once and then read back."""

import torch
from conftest import build_tiny_config

from caev2_hf import CAEv2Model
from caev2_hf.evaluation.arguments import ProbeArguments
from caev2_hf.evaluation.classification.feature_cache import (
    FeatureCacheFile,
    fingerprint_encoder,
    load_or_extract_features,
)
from caev2_hf.evaluation.classification.frozen_encoder import EncoderPreprocessing, FrozenEncoder


def test_encoder_fingerprint_changes_with_any_weight_but_not_with_labels():
    torch.manual_seed(0)
    encoder = CAEv2Model(build_tiny_config())
    relabelled = CAEv2Model(build_tiny_config(num_labels=7))
    relabelled.load_state_dict(encoder.state_dict())
    assert fingerprint_encoder(relabelled) == fingerprint_encoder(encoder)
    with torch.no_grad():
        relabelled.encoder.layers[1].mlp.fc2.bias[3] += 1e-3
    assert fingerprint_encoder(relabelled) != fingerprint_encoder(encoder)


def test_features_are_extracted_once_then_read_back_from_the_cache(demo_image_folder: str, tmp_path):
    torch.manual_seed(0)
    model = CAEv2Model(build_tiny_config()).eval()
    encoder = FrozenEncoder(model, "tiny", EncoderPreprocessing(32, 37, [0.5] * 3, [0.25] * 3))
    args = ProbeArguments(output_dir="unused", cache_dir=str(tmp_path / "cache"), encoder_batch_size=8, num_workers=0)
    source = {"train_dir": demo_image_folder, "data_files": None, "streaming": True}
    fingerprint = fingerprint_encoder(model)
    extracted = load_or_extract_features(encoder, fingerprint, source, args, split="train")
    assert extracted.file.reused is False and extracted.file.path.startswith(str(tmp_path / "cache"))
    assert extracted.features.shape == (len(extracted.labels), 32)
    assert extracted.label_names and int(extracted.labels.max()) < len(extracted.label_names)
    reused = load_or_extract_features(encoder, fingerprint, source, args, split="train")
    assert reused.file == FeatureCacheFile(extracted.file.path, reused=True)
    torch.testing.assert_close(reused.features, extracted.features, rtol=0, atol=0)
    assert torch.equal(reused.labels, extracted.labels) and reused.label_names == extracted.label_names
