# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Centre-crop features of a frozen encoder, cached on disk under a key of the encoder's weights, data and transform.

The fast linear-probe protocol extracts them once and trains its grid of heads on them (docs/method.md#recipes).
"""

import hashlib
import json
import os
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from transformers import PreTrainedModel
from transformers.utils import logging
from transformers.utils.logging import tqdm

from caev2_hf_cli.classification import ProbeArguments
from caev2_hf_cli.errors import UserError

from ...data.transforms import build_eval_transform
from ...files import write_atomically
from .frozen_encoder import EncoderPreprocessing, FrozenEncoder, extract_features
from .labelled_data import build_eval_loader, describe_data_source, open_labelled_dataset, read_label_names


logger = logging.get_logger(__name__)

CACHE_FORMAT = "1"
# Config fields that name or label a checkpoint without changing the features it computes.
CONFIG_KEYS_WITHOUT_EFFECT = {
    "architectures", "auto_map", "dtype", "torch_dtype", "transformers_version", "id2label", "label2id",
    "problem_type", "classifier_init_scale", "return_dict", "output_hidden_states",
    "output_attentions", "use_random_teacher", "teacher_name_or_path",
}  # fmt: skip


@dataclass
class FeatureCacheFile:
    """Where one data source's features are cached, and whether this run read them from there."""

    path: str
    reused: bool  # read from the cache (no data opened) rather than extracted and written


@dataclass
class CachedFeatures:
    """Centre-crop features of one data source, their labels and their cache file."""

    features: torch.Tensor
    labels: torch.Tensor
    label_names: list[str] | None  # the label column's class names, None for plain integer labels
    file: FeatureCacheFile


def fingerprint_encoder(encoder: PreTrainedModel) -> str:
    """Hash of the encoder's class, feature-relevant config and every weight: any change gives another cache key."""
    digest = hashlib.blake2b(digest_size=16)
    config = {
        key: value
        for key, value in encoder.config.to_dict().items()
        if key not in CONFIG_KEYS_WITHOUT_EFFECT and not key.startswith("_")
    }
    digest.update(json.dumps([type(encoder).__name__, config], sort_keys=True, default=str).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"{name}{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def feature_cache_path(cache_dir: str, metadata: dict[str, str]) -> str:
    """`cache_dir/features-<key>.safetensors`, the key hashing the encoder, data and transform in `metadata`."""
    keyed = {key: metadata[key] for key in ("format", "encoder", "data", "transform")}
    digest = hashlib.blake2b(json.dumps(keyed, sort_keys=True).encode(), digest_size=12).hexdigest()
    return os.path.join(cache_dir, f"features-{digest}.safetensors")


def load_cached_features(
    path: str, expected: dict[str, str]
) -> tuple[torch.Tensor, torch.Tensor, list[str] | None] | None:
    """The cached (features, labels, label names), None when absent; raises when written for another setting."""
    if not os.path.isfile(path):
        return None
    with safe_open(path, framework="pt") as cache:
        found = cache.metadata() or {}
        if found.get("encoder") != expected["encoder"]:
            raise UserError(
                f"The feature cache {path} was written by another model ({found.get('encoder_name')}, fingerprint "
                f"{found.get('encoder')}), not by {expected['encoder_name']} (fingerprint {expected['encoder']}): "
                "delete the file or choose another --cache_dir."
            )
        for key in ("format", "data", "transform"):
            if found.get(key) != expected[key]:
                raise UserError(
                    f"The feature cache {path} was written for another {key} ({found.get(key)}, expected "
                    f"{expected[key]}): delete the file or choose another --cache_dir."
                )
        return cache.get_tensor("features"), cache.get_tensor("labels"), json.loads(found["label_names"])


def save_cached_features(path: str, features: torch.Tensor, labels: torch.Tensor, metadata: dict[str, str]) -> None:
    """Written under a temporary name, then renamed: an interrupted run never leaves a half-written cache."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tensors = {"features": features.contiguous(), "labels": labels.contiguous()}
    write_atomically(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))


def extract_dataset_features(
    encoder: PreTrainedModel,
    loader: DataLoader,
    preprocessing: EncoderPreprocessing,
    chunk_size: int,
    description: str = "Extracting features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) on the CPU for every example the loader yields, with a progress bar in images."""
    features, labels = [], []
    with tqdm(desc=description, unit="img") as progress:
        for batch in loader:
            features.append(extract_features(encoder, batch["pixel_values"], preprocessing, chunk_size).cpu())
            labels.append(batch["label"])
            progress.update(len(batch["label"]))
    return torch.cat(features), torch.cat(labels)


def load_or_extract_features(
    encoder: FrozenEncoder, fingerprint: str, source: dict, args: ProbeArguments, split: str
) -> CachedFeatures:
    """Centre-crop features of the `split` data source from `args.cache_dir`, else extracted and cached there.

    `fingerprint` is `fingerprint_encoder(encoder.model)`, computed once for all splits; a reused cache opens no data.
    """
    preprocessing = encoder.preprocessing
    transform = build_eval_transform(preprocessing.image_size, preprocessing.resize_size)
    precision = "bf16" if encoder.model.device.type == "cuda" else "fp32"
    metadata = {
        "format": CACHE_FORMAT,
        "encoder": fingerprint,
        "encoder_name": encoder.name,
        "data": json.dumps(describe_data_source(source), sort_keys=True),
        "transform": f"{transform} mean={preprocessing.image_mean} std={preprocessing.image_std} {precision}",
    }
    path = feature_cache_path(os.path.expanduser(args.cache_dir), metadata)
    cached = load_cached_features(path, metadata)
    if cached is not None:
        logger.info(f"Reusing cached features {path}")
        return CachedFeatures(*cached, FeatureCacheFile(path, reused=True))
    dataset = open_labelled_dataset(**source)
    loader = build_eval_loader(dataset, transform, args.encoder_batch_size, args.num_workers)
    features, labels = extract_dataset_features(
        encoder.model, loader, preprocessing, args.encoder_batch_size, description=f"Features of {split}"
    )
    label_names = read_label_names(dataset)
    save_cached_features(path, features, labels, {**metadata, "label_names": json.dumps(label_names)})
    logger.info(f"Cached {len(features)} features in {path}")
    return CachedFeatures(features, labels, label_names, FeatureCacheFile(path, reused=False))
