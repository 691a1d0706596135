# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Linear probing of a frozen vision encoder (SPEC §8), in two protocols sharing one head and one optimizer.

- official: every step crops and flips fresh images, runs the frozen encoder and trains BatchNorm(affine=False) +
  Linear with LARS (lr = base lr x batch / 256, warmup then cosine) for 90 epochs, as the authors' `run_linear.py`.
- fast: centre-crop features of train and validation are extracted once and cached on disk; a grid of heads (one per
  learning rate) trains on them at once; the best on a held-out part of train is reported on validation.
"""

import copy
import glob
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import evaluate
import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, default_collate
from transformers import (
    AutoImageProcessor,
    AutoModel,
    HfArgumentParser,
    PreTrainedModel,
    get_cosine_schedule_with_warmup,
)
from transformers.utils import logging

from .configuration_caev2 import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, CAEv2Config
from .data import (
    PretrainImageStream,
    build_eval_transform,
    build_pretrain_dataloader,
    build_pretrain_transform,
    iterate_forever,
    normalize_pixel_values,
    open_image_dataset,
    shard_for_process,
)
from .lars import LARS
from .modeling_caev2 import CAEv2ForImageClassification, CAEv2Model


logger = logging.get_logger(__name__)

ACCURACY_TOPK_PATH = str(Path(__file__).with_name("metrics") / "accuracy_topk")
CACHE_FORMAT = "1"
# Config fields that name or label a checkpoint without changing the features it computes.
CONFIG_KEYS_WITHOUT_EFFECT = {
    "architectures", "auto_map", "dtype", "torch_dtype", "transformers_version", "id2label", "label2id",
    "problem_type", "classifier_pooling", "classifier_init_scale", "return_dict", "output_hidden_states",
    "output_attentions", "use_random_teacher", "teacher_name_or_path",
}  # fmt: skip


@dataclass
class EncoderPreprocessing:
    """How images reach the encoder: crop side, evaluation resize (256 for a 224 crop, SPEC §8), normalisation."""

    image_size: int
    resize_size: int
    image_mean: list[float]
    image_std: list[float]


@dataclass
class ImageDataArguments:
    """Where labelled images come from: a Hub dataset (streamed), image folders, or .tar / .parquet shards."""

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id, e.g. ILSVRC/imagenet-1k."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    train_split: str = field(default="train", metadata={"help": "Training split of the Hub dataset."})
    validation_split: str = field(default="validation", metadata={"help": "Validation split of the Hub dataset."})
    train_dir: str | None = field(default=None, metadata={"help": "Training image folder, one subfolder per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "Validation image folder, likewise."})
    train_files: list[str] | None = field(default=None, metadata={"help": "Training .tar or .parquet shards."})
    validation_files: list[str] | None = field(default=None, metadata={"help": "Validation shards, likewise."})
    image_column: str | None = field(default=None, metadata={"help": "Image column, when not a usual name."})
    label_column: str | None = field(default=None, metadata={"help": "Label column, when not a usual name."})
    streaming: bool = field(
        default=True,
        metadata={"help": "false: prepare local data in the Arrow cache first; its 64 shards feed many workers/GPUs."},
    )

    def data_sources(self) -> tuple[dict, dict]:
        """Keyword arguments of `open_image_dataset` for the training and the validation data."""
        columns = {"image_column": self.image_column, "label_column": self.label_column, "streaming": self.streaming}
        if self.dataset_name:
            hub = {"dataset_name": self.dataset_name, "dataset_config_name": self.dataset_config_name, **columns}
            return {**hub, "split": self.train_split}, {**hub, "split": self.validation_split}
        train = {"train_dir": self.train_dir, "data_files": self.train_files, **columns}
        return train, {"train_dir": self.validation_dir, "data_files": self.validation_files, **columns}

    @property
    def dataset_id(self) -> str:
        """The dataset's name in a model card: the Hub id, else the validation folder's or first shard's name."""
        local = self.validation_dir or (self.validation_files or [None])[0] or self.train_dir or "local"
        return self.dataset_name or Path(local).resolve().name


def config_to_arguments(values: dict) -> list[str]:
    """`{"lr": 0.1, "files": ["a", "b"], "flag": True}` -> `--lr 0.1 --files a b --flag true`."""
    tokens = []
    for key, value in values.items():
        if value is None:
            continue
        value = json.dumps(value) if isinstance(value, dict) else value
        value = str(value).lower() if isinstance(value, bool) else value
        tokens += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return tokens


def parse_script_arguments(dataclass_types: tuple, argv: list[str] | None = None) -> tuple:
    """Dataclasses from a YAML/JSON file (first argument, or `--config FILE`) overridden by command-line flags.

    The file's values become flags placed before the command line's, and argparse keeps the last value of a flag.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        config_path = argv.pop(0)
    elif "--config" in argv:
        index = argv.index("--config")
        config_path = argv[index + 1]
        del argv[index : index + 2]
    values = {}
    if config_path is not None:
        with open(config_path) as file:
            values = yaml.safe_load(file) or {}  # YAML is a superset of JSON
    return HfArgumentParser(dataclass_types).parse_args_into_dataclasses(config_to_arguments(values) + argv)


def load_frozen_encoder(model_name_or_path: str) -> PreTrainedModel:
    """Any transformers vision encoder (CAE v2 from a checkpoint of any head), frozen and in eval mode.

    Refuses a folder without a model and a checkpoint whose weights do not fill the encoder: probing random
    weights would report a number that means nothing.
    """
    if os.path.isdir(model_name_or_path) and not os.path.isfile(os.path.join(model_name_or_path, "config.json")):
        raise ValueError(
            f"{model_name_or_path} holds no model (no config.json): give a folder written by save_pretrained (a CAE "
            "v2 checkpoint of any head, or another transformers vision encoder) or a Hub id."
        )
    try:
        encoder, loading_info = AutoModel.from_pretrained(model_name_or_path, output_loading_info=True)
    except OSError as error:
        raise ValueError(f"No encoder weights could be loaded from {model_name_or_path}: {error}") from error
    missing = sorted(loading_info["missing_keys"])
    if missing:
        raise ValueError(
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


def pool_features(outputs) -> torch.Tensor:
    """[CLS] after the final norm: `pooler_output` (CAE v2, CLIP, DINOv2), else the first token of the last layer."""
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


def open_labelled_dataset(**source) -> datasets.IterableDataset:
    """`open_image_dataset(**source)`, refusing data without labels (a probe needs them)."""
    dataset = open_image_dataset(**source)
    if "label" not in dataset.column_names:
        raise ValueError(
            f"The dataset {describe_data_source(source)} has no label column (columns: {dataset.column_names}): "
            "linear probing needs labelled images. Name the column with --label_column."
        )
    return dataset


def read_label_names(dataset: datasets.IterableDataset) -> list[str] | None:
    feature = (dataset.features or {}).get("label")
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def count_labels(dataset: datasets.IterableDataset, split: str = "train") -> tuple[int, int]:
    """(number of examples, largest label), from the dataset card's split size and class names when it has both
    (a Hub dataset: no pass over the data), else from one pass over the labels (a stream has no length)."""
    names, splits = read_label_names(dataset), dataset.info.splits
    if names and splits and split in splits and splits[split].num_examples:
        return splits[split].num_examples, len(names) - 1
    labels = [example["label"] for example in dataset.select_columns(["label"])]
    if not labels:
        raise ValueError("The dataset is empty.")
    return len(labels), max(labels)


def resolve_class_names(
    names: list[str] | None, validation_names: list[str] | None, max_train_label: int, max_validation_label: int
) -> list[str]:
    """The head's classes: the training data's ClassLabel names, else "0".."max label".

    Refuses validation data whose classes differ from the head's: its accuracy would be meaningless.
    """
    if names and validation_names and names != validation_names:
        raise ValueError(
            f"The training data has {len(names)} classes ({names[:5]}...) and the validation data "
            f"{len(validation_names)} ({validation_names[:5]}...): the head's classes differ from the dataset's."
        )
    names = names or [str(label) for label in range(max_train_label + 1)]
    if max_validation_label >= len(names):
        raise ValueError(
            f"The validation data has label {max_validation_label}, but the head has {len(names)} classes (from the "
            "training data): the head's class count differs from the dataset's."
        )
    return names


def open_labelled_datasets(
    train_source: dict, validation_source: dict
) -> tuple[datasets.IterableDataset, datasets.IterableDataset, int, list[str]]:
    """(train, validation, number of training examples, class names of the head) from two data sources."""
    train_dataset, validation_dataset = (
        open_labelled_dataset(**train_source),
        open_labelled_dataset(**validation_source),
    )
    num_examples, max_train_label = count_labels(train_dataset, train_source.get("split", "train"))
    max_validation_label = count_labels(validation_dataset, validation_source.get("split", "train"))[1]
    class_names = resolve_class_names(
        read_label_names(train_dataset), read_label_names(validation_dataset), max_train_label, max_validation_label
    )
    return train_dataset, validation_dataset, num_examples, class_names


def build_eval_loader(dataset: datasets.IterableDataset, transform, batch_size: int, num_workers: int) -> DataLoader:
    """Every example once, in order, decoded and cropped to uint8 in the workers (a worker reads whole shards)."""
    stream = PretrainImageStream(dataset, transform)
    num_workers = min(num_workers, dataset.num_shards)
    return DataLoader(stream, batch_size=batch_size, num_workers=num_workers, collate_fn=default_collate)


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


def describe_data_source(source: dict) -> dict:
    """What identifies the data: the opening arguments, plus path, size and mtime of every local file."""
    description = {key: value for key, value in source.items() if value is not None}
    patterns = [source["train_dir"]] if source.get("train_dir") else source.get("data_files") or []
    patterns = [patterns] if isinstance(patterns, str) else patterns
    paths = [os.path.abspath(path) for pattern in patterns for path in sorted(glob.glob(pattern))]
    files = [os.path.join(root, name) for path in paths for root, _, names in os.walk(path) for name in names]
    files = sorted(files + [path for path in paths if os.path.isfile(path)])
    if files:
        stats = [(path, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in files]
        description["files"] = hashlib.blake2b(json.dumps(stats).encode(), digest_size=16).hexdigest()
    return description


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
            raise ValueError(
                f"The feature cache {path} was written by another model ({found.get('encoder_name')}, fingerprint "
                f"{found.get('encoder')}), not by {expected['encoder_name']} (fingerprint {expected['encoder']}): "
                "delete the file or choose another --cache_dir."
            )
        for key in ("format", "data", "transform"):
            if found.get(key) != expected[key]:
                raise ValueError(
                    f"The feature cache {path} was written for another {key} ({found.get(key)}, expected "
                    f"{expected[key]}): delete the file or choose another --cache_dir."
                )
        return cache.get_tensor("features"), cache.get_tensor("labels"), json.loads(found["label_names"])


def save_cached_features(path: str, features: torch.Tensor, labels: torch.Tensor, metadata: dict[str, str]) -> None:
    """Written under a temporary name, then renamed: an interrupted run never leaves a half-written cache."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary_path = f"{path}.{os.getpid()}.tmp"
    save_file({"features": features.contiguous(), "labels": labels.contiguous()}, temporary_path, metadata=metadata)
    os.replace(temporary_path, path)


def extract_dataset_features(
    encoder: PreTrainedModel, loader: DataLoader, preprocessing: EncoderPreprocessing, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) on the CPU for every example the loader yields."""
    features, labels = [], []
    for batch in loader:
        features.append(extract_features(encoder, batch["pixel_values"], preprocessing, chunk_size).cpu())
        labels.append(batch["label"])
    return torch.cat(features), torch.cat(labels)


def load_or_extract_features(
    encoder: PreTrainedModel,
    encoder_name: str,
    encoder_fingerprint: str,
    source: dict,
    preprocessing: EncoderPreprocessing,
    cache_dir: str,
    batch_size: int,
    num_workers: int,
) -> tuple[torch.Tensor, torch.Tensor, list[str] | None, str, bool]:
    """Centre-crop features of a data source from the cache, else extracted and cached.

    Returns (features, labels, label names, cache path, whether the cache was reused); a reused cache opens no data.
    """
    transform = build_eval_transform(preprocessing.image_size, preprocessing.resize_size)
    precision = "bf16" if encoder.device.type == "cuda" else "fp32"
    metadata = {
        "format": CACHE_FORMAT,
        "encoder": encoder_fingerprint,
        "encoder_name": encoder_name,
        "data": json.dumps(describe_data_source(source), sort_keys=True),
        "transform": f"{transform} mean={preprocessing.image_mean} std={preprocessing.image_std} {precision}",
    }
    path = feature_cache_path(cache_dir, metadata)
    cached = load_cached_features(path, metadata)
    if cached is not None:
        logger.info(f"Reusing cached features {path}")
        return *cached, path, True
    dataset = open_labelled_dataset(**source)
    loader = build_eval_loader(dataset, transform, batch_size, num_workers)
    features, labels = extract_dataset_features(encoder, loader, preprocessing, batch_size)
    label_names = read_label_names(dataset)
    save_cached_features(path, features, labels, {**metadata, "label_names": json.dumps(label_names)})
    logger.info(f"Cached {len(features)} features in {path}")
    return features, labels, label_names, path, False


def build_linear_classifier(hidden_size: int, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """The probe's Linear: weights trunc-normal with std 0.01, zero bias (SPEC §8)."""
    linear = nn.Linear(hidden_size, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01, generator=generator)
    nn.init.zeros_(linear.bias)
    return linear


def build_probe_head(hidden_size: int, num_classes: int, generator: torch.Generator) -> nn.Sequential:
    """BatchNorm without affine (eps 1e-6), then the Linear: the authors' linear-probe head."""
    batch_norm = nn.BatchNorm1d(hidden_size, affine=False, eps=1e-6)
    return nn.Sequential(batch_norm, build_linear_classifier(hidden_size, num_classes, generator))


def compute_grid_logits(heads: list[nn.Linear], features: torch.Tensor) -> torch.Tensor:
    """Logits `(num_heads, batch, num_classes)` of every head in one einsum."""
    weight, bias = torch.stack([head.weight for head in heads]), torch.stack([head.bias for head in heads])
    return torch.einsum("nd,hcd->hnc", features, weight) + bias[:, None]


def train_linear_heads(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    learning_rates: list[float],
    epochs: int,
    warmup_epochs: int,
    batch_size: int,
    seed: int,
) -> list[nn.Linear]:
    """One Linear per learning rate, trained together with LARS on (standardised) features.

    Every head starts from the same weights and sees the same batches, so they differ by their lr alone; the
    summed loss gives each head exactly its own gradient, so the grid costs about one head's time.
    """
    generator = torch.Generator().manual_seed(seed)
    start = build_linear_classifier(features.shape[1], num_classes, generator).to(features.device)
    heads = [copy.deepcopy(start) for _ in learning_rates]
    optimizer = LARS([{"params": head.parameters(), "lr": lr} for head, lr in zip(heads, learning_rates, strict=True)])
    batch_size = min(batch_size, len(features))
    steps_per_epoch = len(features) // batch_size
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_epochs * steps_per_epoch, epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator).to(features.device)
        for batch in order[: steps_per_epoch * batch_size].view(steps_per_epoch, batch_size):
            logits = compute_grid_logits(heads, features[batch])
            loss = F.cross_entropy(logits.flatten(0, 1), labels[batch].repeat(len(heads))) * len(heads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return heads


def fit_feature_batch_norm(features: torch.Tensor) -> nn.BatchNorm1d:
    """The probe's BatchNorm in eval mode, holding the features' own mean and variance as running statistics."""
    batch_norm = nn.BatchNorm1d(features.shape[1], affine=False, eps=1e-6).to(features.device)
    batch_norm.running_mean.copy_(features.mean(dim=0))
    batch_norm.running_var.copy_(features.var(dim=0, unbiased=False))
    return batch_norm.eval()


def train_fast_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    base_learning_rates: list[float],
    batch_size: int,
    epochs: int,
    warmup_epochs: int,
    holdout_fraction: float,
    seed: int,
) -> tuple[nn.Sequential, list[dict]]:
    """Grid of heads on cached features; the best on a held-out part of train wins: (head, grid report).

    Features are standardised once with their own statistics, as a BatchNorm in eval mode would, so the returned
    head is the official BatchNorm(affine=False) + Linear.
    """
    batch_norm = fit_feature_batch_norm(features)
    with torch.no_grad():
        standardised = batch_norm(features)
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed)).to(features.device)
    num_holdout = min(max(1, round(holdout_fraction * len(features))), len(features) - 1)
    holdout, fit = order[:num_holdout], order[num_holdout:]
    learning_rates = [base * batch_size / 256 for base in base_learning_rates]
    heads = train_linear_heads(
        standardised[fit], labels[fit], num_classes, learning_rates, epochs, warmup_epochs, batch_size, seed
    )
    with torch.no_grad():
        predictions = compute_grid_logits(heads, standardised[holdout]).argmax(dim=-1)
    holdout_accuracy = (predictions == labels[holdout]).float().mean(dim=1)
    best = int(holdout_accuracy.argmax())
    grid = [
        {"base_learning_rate": base, "learning_rate": lr, "holdout_top1_accuracy": float(accuracy)}
        for base, lr, accuracy in zip(base_learning_rates, learning_rates, holdout_accuracy, strict=True)
    ]
    return nn.Sequential(batch_norm, heads[best]).eval(), grid


def train_official_probe(
    accelerator: Accelerator,
    encoder: PreTrainedModel,
    head: nn.Sequential,
    batches,
    preprocessing: EncoderPreprocessing,
    learning_rate: float,
    total_steps: int,
    warmup_steps: int,
    chunk_size: int,
    log_every: int,
) -> nn.Sequential:
    """The authors' loop: frozen encoder features of augmented crops -> head, LARS, warmup + cosine per step."""
    optimizer = LARS(head.parameters(), lr=learning_rate)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    head, optimizer = accelerator.prepare(head, optimizer)
    head.train()
    for step in range(1, total_steps + 1):
        batch = next(batches)
        features = extract_features(encoder, batch["pixel_values"], preprocessing, chunk_size)
        loss = F.cross_entropy(head(features), batch["label"].to(features.device))
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == total_steps:
            loss_value = loss.item()  # the only host sync: on log steps
            if not math.isfinite(loss_value):
                raise RuntimeError(f"Non-finite probe loss {loss_value} at step {step}: lower --base_learning_rate.")
            logger.info(f"step {step}/{total_steps} loss {loss_value:.4f} lr {scheduler.get_last_lr()[0]:.4g}")
    return accelerator.unwrap_model(head).eval()


def rank_predictions(logits: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Class indices `(batch, min(k, num_classes))`, best first: all the top-k metric needs."""
    return logits.topk(min(k, logits.shape[-1]), dim=-1).indices


def predict_with_encoder(
    accelerator: Accelerator,
    encoder: PreTrainedModel,
    head: nn.Sequential,
    loader: DataLoader,
    preprocessing: EncoderPreprocessing,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranked predictions and labels of every process's share of the validation data, gathered on all processes."""
    rows = []
    with torch.no_grad():
        for batch in loader:
            logits = head(extract_features(encoder, batch["pixel_values"], preprocessing, chunk_size))
            rows.append(torch.cat([batch["label"].to(logits.device)[:, None], rank_predictions(logits)], dim=1))
    rows = torch.cat(rows)
    # Shares differ in length: pad with label -1, gather, then drop the padding.
    rows = accelerator.gather(accelerator.pad_across_processes(rows, dim=0, pad_index=-1))
    rows = rows[rows[:, 0] >= 0]
    return rows[:, 1:], rows[:, 0]


def run_official_probe(
    accelerator: Accelerator,
    encoder: PreTrainedModel,
    preprocessing: EncoderPreprocessing,
    train_source: dict,
    validation_source: dict,
    batch_size: int,
    base_learning_rate: float,
    epochs: int,
    warmup_epochs: int,
    chunk_size: int,
    num_workers: int,
    seed: int,
) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor, list[str], dict]:
    """Official protocol end to end: (head, ranked validation predictions, labels, class names, report).

    `batch_size` is the global batch, split evenly over the processes; steps per epoch come from the number of
    training examples (the dataset card's split size, else one pass over the labels), since a stream has no length.
    """
    train_dataset, validation_dataset, num_examples, class_names = open_labelled_datasets(
        train_source, validation_source
    )
    if batch_size % accelerator.num_processes or num_examples < batch_size:
        raise ValueError(
            f"batch_size={batch_size} must divide among {accelerator.num_processes} processes and not exceed the "
            f"{num_examples} training examples."
        )
    steps_per_epoch, learning_rate = num_examples // batch_size, base_learning_rate * batch_size / 256
    logger.info(
        f"lr {learning_rate:.4g} (base {base_learning_rate} x {batch_size} / 256), {steps_per_epoch} steps/epoch"
    )
    shard = shard_for_process(train_dataset, accelerator.process_index, accelerator.num_processes)
    train_transform = build_pretrain_transform(preprocessing.image_size, scale=(0.08, 1.0), color_jitter=0.0)
    loader = build_pretrain_dataloader(
        shard,
        train_transform,
        default_collate,
        batch_size // accelerator.num_processes,
        num_workers,
        seed,
        process_index=accelerator.process_index,
    )
    generator = torch.Generator().manual_seed(seed)
    head = build_probe_head(encoder.config.hidden_size, len(class_names), generator).to(accelerator.device)
    head = train_official_probe(
        accelerator, encoder, head, iterate_forever(loader), preprocessing, learning_rate,
        epochs * steps_per_epoch, warmup_epochs * steps_per_epoch, chunk_size, steps_per_epoch,
    )  # fmt: skip
    eval_transform = build_eval_transform(preprocessing.image_size, preprocessing.resize_size)
    validation_shard = shard_for_process(validation_dataset, accelerator.process_index, accelerator.num_processes)
    eval_loader = build_eval_loader(validation_shard, eval_transform, chunk_size, num_workers)
    ranked, labels = predict_with_encoder(accelerator, encoder, head, eval_loader, preprocessing, chunk_size)
    report = {"learning_rate": learning_rate, "num_train_examples": num_examples, "steps": epochs * steps_per_epoch}
    return head, ranked, labels, class_names, report


def run_fast_probe(
    encoder: PreTrainedModel,
    encoder_name: str,
    preprocessing: EncoderPreprocessing,
    train_source: dict,
    validation_source: dict,
    cache_dir: str,
    base_learning_rates: list[float],
    batch_size: int,
    epochs: int,
    warmup_epochs: int,
    holdout_fraction: float,
    chunk_size: int,
    num_workers: int,
    seed: int,
) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor, list[str], dict]:
    """Fast protocol end to end, in one process: (head, ranked validation predictions, labels, class names, report)."""
    fingerprint = fingerprint_encoder(encoder)
    extracted, cache = {}, {}
    for split, source in (("train", train_source), ("validation", validation_source)):
        features, labels, names, path, hit = load_or_extract_features(
            encoder, encoder_name, fingerprint, source, preprocessing, cache_dir, chunk_size, num_workers
        )
        extracted[split] = (features.to(encoder.device), labels.to(encoder.device), names)
        cache[split] = {"path": path, "reused": hit}
    (train_features, train_labels, names), (validation_features, validation_labels, validation_names) = (
        extracted["train"],
        extracted["validation"],
    )
    class_names = resolve_class_names(names, validation_names, int(train_labels.max()), int(validation_labels.max()))
    head, grid = train_fast_probe(
        train_features, train_labels, len(class_names), base_learning_rates, batch_size, epochs, warmup_epochs,
        holdout_fraction, seed,
    )  # fmt: skip
    with torch.no_grad():
        ranked = rank_predictions(head(validation_features))
    best = max(grid, key=lambda entry: entry["holdout_top1_accuracy"])
    report = {**best, "num_train_examples": len(train_features), "grid": grid, "feature_cache": cache}
    return head, ranked, validation_labels, class_names, report


def compute_topk_accuracy(ranked_predictions: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 through the `evaluate` module shipped in the package (no Hub access)."""
    metric = evaluate.load(ACCURACY_TOPK_PATH)
    return metric.compute(predictions=ranked_predictions.cpu().tolist(), references=labels.cpu().tolist())


def build_probe_classifier(
    encoder: CAEv2Model, head: nn.Sequential, class_names: list[str]
) -> CAEv2ForImageClassification:
    """The probed encoder with the trained head as one `CAEv2ForImageClassification` ("cls" pooling)."""
    config = copy.deepcopy(encoder.config)
    config.classifier_pooling = "cls"
    config.id2label = dict(enumerate(class_names))
    config.label2id = {name: index for index, name in enumerate(class_names)}
    classifier = CAEv2ForImageClassification(config)
    classifier.caev2.load_state_dict(encoder.state_dict())
    classifier.pooler.batch_norm.load_state_dict(head[0].state_dict())
    classifier.classifier.load_state_dict(head[1].state_dict())
    return classifier.eval()


def save_probe_outputs(
    output_dir: str, encoder: PreTrainedModel, head: nn.Sequential, class_names: list[str], results: dict
) -> None:
    """`results.json`, plus a classifier folder for a CAE v2 encoder (`probe_head.safetensors` for another one)."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "results.json"), "w") as file:
        json.dump(results, file, indent=2)
    if isinstance(encoder, CAEv2Model):
        build_probe_classifier(encoder, head.cpu(), class_names).save_pretrained(output_dir)
    else:
        state = {f"head.{name}": tensor.contiguous() for name, tensor in head.state_dict().items()}
        save_file(
            state, os.path.join(output_dir, "probe_head.safetensors"), metadata={"classes": json.dumps(class_names)}
        )


def add_results_to_model_card(
    model_dir: str, results: dict[str, float], dataset_id: str, dataset_split: str, protocol: str
) -> Path:
    """Adds the probe's top-1 / top-5 (in %) to the model-index of `model_dir/README.md`, creating the card if needed.

    Entries are named as `caev2_hf.model_card` names them ("Top-1 (LIN)"; the fast protocol says so), and replace
    an entry of the same task, dataset and metric, e.g. the paper's number once it is reproduced.
    """
    path = Path(model_dir) / "README.md"
    name = Path(model_dir).resolve().name
    card = ModelCard.load(path) if path.is_file() else ModelCard.from_template(ModelCardData(model_name=name))
    card.data.model_name = card.data.model_name or name
    suffix = "" if protocol == "official" else f", {protocol} protocol"
    new_results = [
        EvalResult(
            task_type="image-classification",
            task_name="Linear probing",
            dataset_type=dataset_id,
            dataset_name=dataset_id,
            dataset_split=dataset_split,
            metric_type="accuracy",
            metric_name=f"Top-{k} (LIN{suffix})",
            metric_value=round(100 * results[f"top{k}_accuracy"], 2),
        )  # fmt: skip
        for k in (1, 5)
    ]
    replaced = {(result.task_name, result.dataset_type, result.metric_name) for result in new_results}
    kept = [
        result
        for result in card.data.eval_results or []
        if (result.task_name, result.dataset_type, result.metric_name) not in replaced
    ]
    card.data.eval_results = kept + new_results
    card.save(path)
    return path
