# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""A frozen vision encoder for evaluation: loading it, how its images are prepared, and its pooled features."""

import os
from dataclasses import dataclass

import torch
from transformers import MODEL_MAPPING, AutoConfig, AutoImageProcessor, AutoModel, PreTrainedModel

from caev2_hf_cli.checks import describe_non_encoder, not_an_encoder_message
from caev2_hf_cli.errors import UserError

from ...configuration_caev2 import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, CAEv2Config
from ...data.device_augment import normalize_pixel_values


@dataclass
class EncoderPreprocessing:
    """How images reach the encoder: crop side, evaluation resize (256 for a 224 crop, docs/method.md#recipes), normalisation."""

    image_size: int
    resize_size: int
    image_mean: list[float]
    image_std: list[float]


def load_frozen_encoder(model_name_or_path: str) -> PreTrainedModel:
    """Any transformers vision encoder (CAE v2 from a checkpoint of any head), frozen and in eval mode.

    Refuses a folder without a model and a checkpoint whose weights do not fill the encoder: probing random
    weights would report a number that means nothing.
    """
    if os.path.isdir(model_name_or_path) and not os.path.isfile(os.path.join(model_name_or_path, "config.json")):
        raise UserError(
            f"{model_name_or_path} holds no model (no config.json): give a folder written by save_pretrained (a CAE "
            "v2 checkpoint of any head, or another transformers vision encoder) or a Hub id."
        )
    config = AutoConfig.from_pretrained(model_name_or_path)
    found = describe_non_encoder(config.model_type, config.architectures, caev2_only=False)
    if found is not None or type(config) not in MODEL_MAPPING:
        found = found or f"a {config.model_type} model, which AutoModel cannot load"
        raise UserError(not_an_encoder_message(model_name_or_path, found, caev2_only=False))
    try:
        encoder, loading_info = AutoModel.from_pretrained(model_name_or_path, output_loading_info=True)
    except OSError as error:
        raise UserError(f"No encoder weights could be loaded from {model_name_or_path}: {error}") from error
    missing = sorted(loading_info["missing_keys"])
    if missing:
        raise UserError(
            f"{model_name_or_path} has no weights for {len(missing)} tensors of its {type(encoder).__name__} encoder "
            f"(e.g. {missing[:3]}): the checkpoint does not hold this encoder."
        )
    encoder.requires_grad_(False)
    return encoder.eval()


def read_preprocessing(encoder: PreTrainedModel, model_name_or_path: str) -> EncoderPreprocessing:
    """CAE v2 reads its config; another encoder its saved image processor's statistics (ImageNet's without one)."""
    config = encoder.config
    image_size = getattr(config, "image_size", 224)
    image_size = image_size[0] if isinstance(image_size, list | tuple) else image_size
    if isinstance(config, CAEv2Config):
        mean, std = config.image_mean, config.image_std
    else:
        try:
            processor = AutoImageProcessor.from_pretrained(model_name_or_path)
        except (OSError, ValueError):
            processor = None
        mean = getattr(processor, "image_mean", None) or IMAGENET_DEFAULT_MEAN
        std = getattr(processor, "image_std", None) or IMAGENET_DEFAULT_STD
    return EncoderPreprocessing(image_size, round(image_size * 256 / 224), list(mean), list(std))


@dataclass
class FrozenEncoder:
    """A frozen encoder with what evaluating it needs: the model, the name it was loaded by, how images reach it."""

    model: PreTrainedModel
    name: str
    preprocessing: EncoderPreprocessing


def open_frozen_encoder(model_name_or_path: str, device: torch.device | str) -> FrozenEncoder:
    """`load_frozen_encoder` on `device`, with its `read_preprocessing`."""
    model = load_frozen_encoder(model_name_or_path).to(device)
    return FrozenEncoder(model, model_name_or_path, read_preprocessing(model, model_name_or_path))


def pool_features(outputs) -> torch.Tensor:
    """`pooler_output` (CAE v2, CLIP, DINOv2): [CLS] after the final norm for a pretrained CAE v2 (a fine-tuned one
    pools as its classifier did, `config.classifier_pooling`); else the first token of the last layer."""
    pooled = getattr(outputs, "pooler_output", None)
    return pooled if pooled is not None else outputs.last_hidden_state[:, 0]


def extract_features(
    encoder: PreTrainedModel, pixel_values: torch.Tensor, preprocessing: EncoderPreprocessing, chunk_size: int
) -> torch.Tensor:
    """Float32 features `(batch, hidden)` of a uint8 batch, in chunks, under inference mode (bf16 autocast on GPU)."""
    device = encoder.device
    pixel_values = pixel_values.to(device, non_blocking=True)
    chunks = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for chunk in pixel_values.split(chunk_size):
            chunk = normalize_pixel_values(chunk, preprocessing.image_mean, preprocessing.image_std)
            chunks.append(pool_features(encoder(pixel_values=chunk)).float())
    return torch.cat(chunks)  # built outside inference mode: an ordinary tensor that autograd may save
