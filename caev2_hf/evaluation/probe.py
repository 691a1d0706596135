# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Linear probing of a frozen vision encoder (docs/method.md#recipes), in two protocols sharing one head and one optimizer.

- official: every step crops and flips fresh images, runs the frozen encoder and trains BatchNorm(affine=False) +
  Linear with LARS (lr = base lr x batch / 256, warmup then cosine) for 90 epochs, as the authors' `run_linear.py`.
- fast: centre-crop features of train and validation are extracted once and cached on disk (`feature_cache`); a grid
  of heads (one per learning rate) trains on them at once; the best on a held-out part of train is reported on
  validation.
"""

import copy
import math
from collections.abc import Iterator

import datasets
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import default_collate
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup
from transformers.utils import logging

from ..data.images import (
    build_eval_transform,
    build_pretrain_dataloader,
    build_pretrain_transform,
    iterate_forever,
    shard_for_process,
)
from ..optim import LARS
from .feature_cache import fingerprint_encoder, load_or_extract_features
from .frozen_encoder import EncoderPreprocessing, extract_features
from .labelled_data import build_eval_loader, open_labelled_datasets, resolve_class_names
from .metrics import rank_predictions


logger = logging.get_logger(__name__)


def build_linear_classifier(hidden_size: int, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """The probe's Linear: weights trunc-normal with std 0.01, zero bias (docs/method.md#recipes)."""
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


def check_global_batch_size(batch_size: int, num_processes: int, num_examples: int) -> None:
    """The official protocol splits one global batch evenly over the processes, each step a full one."""
    if batch_size % num_processes or num_examples < batch_size:
        raise ValueError(
            f"batch_size={batch_size} must divide among {num_processes} processes and not exceed the "
            f"{num_examples} training examples."
        )


def build_official_train_batches(
    accelerator: Accelerator,
    dataset: datasets.IterableDataset,
    preprocessing: EncoderPreprocessing,
    batch_size: int,
    num_workers: int,
    seed: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches of this process's share of `batch_size`: random-resized crops (scale 0.08-1) and flips."""
    shard = shard_for_process(dataset, accelerator.process_index, accelerator.num_processes)
    transform = build_pretrain_transform(preprocessing.image_size, scale=(0.08, 1.0), color_jitter=0.0)
    loader = build_pretrain_dataloader(
        shard,
        transform,
        default_collate,
        batch_size // accelerator.num_processes,
        num_workers,
        seed,
        process_index=accelerator.process_index,
    )
    return iterate_forever(loader)


def predict_with_encoder(
    accelerator: Accelerator,
    encoder: PreTrainedModel,
    head: nn.Sequential,
    dataset: datasets.IterableDataset,
    preprocessing: EncoderPreprocessing,
    chunk_size: int,
    num_workers: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranked predictions and labels of every process's share of centre crops of `dataset`, gathered on all."""
    shard = shard_for_process(dataset, accelerator.process_index, accelerator.num_processes)
    transform = build_eval_transform(preprocessing.image_size, preprocessing.resize_size)
    rows = []
    with torch.no_grad():
        for batch in build_eval_loader(shard, transform, chunk_size, num_workers):
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
    check_global_batch_size(batch_size, accelerator.num_processes, num_examples)
    steps_per_epoch, learning_rate = num_examples // batch_size, base_learning_rate * batch_size / 256
    logger.info(
        f"lr {learning_rate:.4g} (base {base_learning_rate} x {batch_size} / 256), {steps_per_epoch} steps/epoch"
    )
    batches = build_official_train_batches(accelerator, train_dataset, preprocessing, batch_size, num_workers, seed)
    generator = torch.Generator().manual_seed(seed)
    head = build_probe_head(encoder.config.hidden_size, len(class_names), generator).to(accelerator.device)
    head = train_official_probe(
        accelerator, encoder, head, batches, preprocessing, learning_rate, epochs * steps_per_epoch,
        warmup_epochs * steps_per_epoch, chunk_size, steps_per_epoch,
    )  # fmt: skip
    ranked, labels = predict_with_encoder(
        accelerator, encoder, head, validation_dataset, preprocessing, chunk_size, num_workers
    )
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
