# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Linear probing of a frozen vision encoder (docs/method.md#recipes), in two protocols sharing one head and one optimizer.

- official: every step crops and flips fresh images, runs the frozen encoder and trains BatchNorm(affine=False) +
  Linear with LARS (lr = base lr x batch / 256, warmup then cosine) for 90 epochs, as the authors' `run_linear.py`.
- fast: centre-crop features of train and validation are extracted once and cached on disk (`feature_cache`); a grid
  of heads (one per learning rate) trains on them at once; the best on a held-out part of train is reported on
  validation.

`run_probe` runs either from a `FrozenEncoder`, the data and the `ProbeArguments`, and returns a `ProbeResult`.
"""

import copy
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import datasets
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import default_collate
from transformers import get_cosine_schedule_with_warmup
from transformers.utils import logging
from transformers.utils.logging import tqdm

from ...cli import UserError
from ...data.loader import build_labelled_image_loader, iterate_forever
from ...data.sources import shard_for_process
from ...data.transforms import build_eval_transform, build_random_crop_transform
from ...optim import LARS
from ..arguments import ProbeArguments
from ..data_arguments import ImageDataArguments
from .feature_cache import FeatureCacheFile, fingerprint_encoder, load_or_extract_features
from .frozen_encoder import FrozenEncoder, extract_features
from .labelled_data import build_eval_loader, open_labelled_datasets, resolve_class_names
from .metrics import compute_topk_accuracy, rank_predictions, topk_notes


logger = logging.get_logger(__name__)


@dataclass
class EpochRecord:
    """One head after one training epoch. The fast protocol also scores it on the held-out part of train."""

    epoch: int
    train_loss: float  # mean over the epoch's steps
    train_top1_accuracy: float  # on the epoch's training batches (augmented crops in the official protocol)
    holdout_top1_accuracy: float | None = None  # fast only: what selects the head


@dataclass
class LearningRateHistory:
    """One learning rate of the probe: the lr, the head's final held-out accuracy (fast) and its epoch-by-epoch record."""

    base_learning_rate: float
    learning_rate: float  # base x batch / 256
    holdout_top1_accuracy: float | None  # fast: after the last epoch; None for the official protocol
    epochs: list[EpochRecord]


@dataclass
class ProbeResult:
    """What a probe measured, with the head that measured it (`to_json` leaves the head and class names out)."""

    protocol: str
    top1_accuracy: float  # on validation, as a fraction
    top5_accuracy: float | None  # None with 5 classes or fewer, where every example is in its top 5
    base_learning_rate: float  # the reported head's (official: the given one; fast: the grid's best)
    learning_rate: float
    holdout_top1_accuracy: float | None  # fast: the reported head's accuracy on the held-out part of train
    num_train_examples: int
    num_validation_examples: int
    steps: int  # optimizer steps of the reported head
    learning_rate_histories: list[LearningRateHistory]  # one per learning rate tried, in the given order
    class_names: list[str] = field(repr=False)
    head: nn.Sequential = field(repr=False)  # BatchNorm1d(affine=False) + Linear, in eval mode
    feature_cache: dict[str, FeatureCacheFile] | None = None  # fast: the cache file of "train" and "validation"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict:
        """The measured values for `results.json`: every field but the head, with the class count for the names and
        a note beside a top-k left out."""
        values = {"protocol": self.protocol, "top1_accuracy": self.top1_accuracy, "top5_accuracy": self.top5_accuracy}
        values |= topk_notes(self)
        values |= {"num_classes": self.num_classes, "num_train_examples": self.num_train_examples}
        values |= {"num_validation_examples": self.num_validation_examples, "steps": self.steps}
        values |= {"base_learning_rate": self.base_learning_rate, "learning_rate": self.learning_rate}
        values["holdout_top1_accuracy"] = self.holdout_top1_accuracy
        values["learning_rate_histories"] = [asdict(history) for history in self.learning_rate_histories]
        if self.feature_cache is not None:
            values["feature_cache"] = {split: asdict(file) for split, file in self.feature_cache.items()}
        return values


@dataclass
class FastProbeFit:
    """The fast protocol's grid after training: the chosen head, and every learning rate's history."""

    head: nn.Sequential  # BatchNorm1d(affine=False) with the features' statistics + the best Linear, in eval mode
    learning_rate_histories: list[LearningRateHistory]
    best: LearningRateHistory  # the first with the highest held-out accuracy
    steps: int


@dataclass
class HeadGrid:
    """Linear heads trained together, one per learning rate, and each head's record per epoch."""

    heads: list[nn.Linear]
    epochs: list[list[EpochRecord]]  # [head][epoch]
    steps: int


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
    args: ProbeArguments,
    holdout: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> HeadGrid:
    """One Linear per learning rate, trained together with LARS on (standardised) features for `args.epochs`.

    Every head starts from the same weights and sees the same batches, so they differ by their lr alone; each
    head's loss is its own mean, summed over heads, so each gets exactly its own gradient and the grid costs about
    one head's time. After each epoch every head is scored on `holdout` (features, labels) when given; the host
    waits for the device once per epoch, for the record.
    """
    generator = torch.Generator().manual_seed(args.seed)
    start = build_linear_classifier(features.shape[1], num_classes, generator).to(features.device)
    heads = [copy.deepcopy(start) for _ in learning_rates]
    optimizer = LARS([{"params": head.parameters(), "lr": lr} for head, lr in zip(heads, learning_rates, strict=True)])
    batch_size = min(args.batch_size, len(features))
    steps_per_epoch = len(features) // batch_size
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, args.warmup_epochs * steps_per_epoch, args.epochs * steps_per_epoch
    )
    records = [[] for _ in heads]
    progress = tqdm(range(1, args.epochs + 1), desc=f"Training {len(heads)} heads", unit="epoch")
    for epoch in progress:
        order = torch.randperm(len(features), generator=generator).to(features.device)
        totals = torch.zeros(2, len(heads), device=features.device)  # summed loss, summed accuracy
        for batch in order[: steps_per_epoch * batch_size].view(steps_per_epoch, batch_size):
            logits = compute_grid_logits(heads, features[batch])
            targets = labels[batch].repeat(len(heads))
            losses = F.cross_entropy(logits.flatten(0, 1), targets, reduction="none").view(len(heads), -1).mean(1)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                correct = (logits.argmax(dim=-1) == labels[batch]).float().mean(dim=1)
                totals += torch.stack([losses.detach(), correct])
        train_loss, train_accuracy = (totals / steps_per_epoch).tolist()
        holdout_accuracy = [None] * len(heads)
        if holdout is not None:
            with torch.no_grad():
                predictions = compute_grid_logits(heads, holdout[0]).argmax(dim=-1)
            holdout_accuracy = (predictions == holdout[1]).float().mean(dim=1).tolist()
            progress.set_postfix(best_holdout_top1=f"{max(holdout_accuracy):.4f}")
        for index, head_records in enumerate(records):
            head_records.append(EpochRecord(epoch, train_loss[index], train_accuracy[index], holdout_accuracy[index]))
    return HeadGrid(heads, records, args.epochs * steps_per_epoch)


def fit_feature_batch_norm(features: torch.Tensor) -> nn.BatchNorm1d:
    """The probe's BatchNorm in eval mode, holding the features' own mean and variance as running statistics."""
    batch_norm = nn.BatchNorm1d(features.shape[1], affine=False, eps=1e-6).to(features.device)
    batch_norm.running_mean.copy_(features.mean(dim=0))
    batch_norm.running_var.copy_(features.var(dim=0, unbiased=False))
    return batch_norm.eval()


def train_fast_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, args: ProbeArguments
) -> FastProbeFit:
    """Grid of heads on cached features, one per `args.fast_base_learning_rates`; the best on a held-out part of
    train wins.

    Features are standardised once with their own statistics, as a BatchNorm in eval mode would, so the returned
    head is the official BatchNorm(affine=False) + Linear.
    """
    batch_norm = fit_feature_batch_norm(features)
    with torch.no_grad():
        standardised = batch_norm(features)
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(args.seed)).to(features.device)
    num_holdout = min(max(1, round(args.holdout_fraction * len(features))), len(features) - 1)
    holdout, fit = order[:num_holdout], order[num_holdout:]
    base_learning_rates = args.fast_base_learning_rates
    learning_rates = [args.learning_rate(base) for base in base_learning_rates]
    grid = train_linear_heads(
        standardised[fit],
        labels[fit],
        num_classes,
        learning_rates,
        args,
        holdout=(standardised[holdout], labels[holdout]),
    )
    histories = [
        LearningRateHistory(base, lr, epochs[-1].holdout_top1_accuracy, epochs)
        for base, lr, epochs in zip(base_learning_rates, learning_rates, grid.epochs, strict=True)
    ]
    best = max(range(len(histories)), key=lambda index: histories[index].holdout_top1_accuracy)  # first of ties
    return FastProbeFit(nn.Sequential(batch_norm, grid.heads[best]).eval(), histories, histories[best], grid.steps)


def train_official_probe(
    accelerator: Accelerator,
    encoder: FrozenEncoder,
    head: nn.Sequential,
    batches: Iterator[dict[str, torch.Tensor]],
    args: ProbeArguments,
    steps_per_epoch: int,
) -> list[EpochRecord]:
    """The authors' loop: frozen encoder features of augmented crops -> head, LARS, warmup + cosine per step.

    Trains `head` in place (it ends in eval mode) for `args.epochs` epochs and returns its record per epoch: the
    loss and top-1 on the training crops, averaged over the epoch's steps and the processes. The host waits for the
    device once per epoch.
    """
    total_steps = args.epochs * steps_per_epoch
    optimizer = LARS(head.parameters(), lr=args.learning_rate(args.base_learning_rate))
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_epochs * steps_per_epoch, total_steps)
    prepared_head, optimizer = accelerator.prepare(head, optimizer)
    prepared_head.train()
    records, totals = [], torch.zeros(2, device=accelerator.device)  # summed loss, summed accuracy
    progress = tqdm(total=total_steps, desc="Training the head", unit="step", disable=not accelerator.is_main_process)
    for step in range(1, total_steps + 1):
        batch = next(batches)
        features = extract_features(
            encoder.model, batch["pixel_values"], encoder.preprocessing, args.encoder_batch_size
        )
        logits = prepared_head(features)
        labels = batch["label"].to(features.device)
        loss = F.cross_entropy(logits, labels)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        totals += torch.stack([loss.detach(), (logits.detach().argmax(dim=-1) == labels).float().mean()])
        progress.update()
        if step % steps_per_epoch == 0:
            train_loss, train_accuracy = (accelerator.reduce(totals, reduction="mean") / steps_per_epoch).tolist()
            if not math.isfinite(train_loss):
                raise RuntimeError(f"Non-finite probe loss {train_loss} at step {step}: lower --base_learning_rate.")
            records.append(EpochRecord(step // steps_per_epoch, train_loss, train_accuracy))
            totals.zero_()
            lr = scheduler.get_last_lr()[0]
            progress.set_postfix(loss=f"{train_loss:.4f}", train_top1=f"{train_accuracy:.3f}", lr=f"{lr:.3g}")
            logger.info(
                f"epoch {len(records)}/{args.epochs} step {step}/{total_steps} loss {train_loss:.4f} lr {lr:.4g}"
            )
    progress.close()
    head.eval()
    return records


def check_global_batch_size(batch_size: int, num_processes: int, num_examples: int) -> None:
    """The official protocol splits one global batch evenly over the processes, each step a full one."""
    if batch_size % num_processes or num_examples < batch_size:
        raise UserError(
            f"batch_size={batch_size} must divide among {num_processes} processes and not exceed the "
            f"{num_examples} training examples."
        )


def build_official_train_batches(
    accelerator: Accelerator, dataset: datasets.IterableDataset, encoder: FrozenEncoder, args: ProbeArguments
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches of this process's share of `args.batch_size`: random-resized crops (scale 0.08-1) and flips."""
    shard = shard_for_process(dataset, accelerator.process_index, accelerator.num_processes)
    transform = build_random_crop_transform(encoder.preprocessing.image_size, scale=(0.08, 1.0), color_jitter=0.0)
    loader = build_labelled_image_loader(
        shard,
        transform,
        default_collate,
        batch_size=args.batch_size // accelerator.num_processes,
        num_workers=args.num_workers,
        seed=args.seed,
        process_index=accelerator.process_index,
    )
    return iterate_forever(loader)


def predict_with_encoder(
    accelerator: Accelerator,
    encoder: FrozenEncoder,
    head: nn.Sequential,
    dataset: datasets.IterableDataset,
    args: ProbeArguments,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranked predictions and labels of every process's share of centre crops of `dataset`, gathered on all."""
    shard = shard_for_process(dataset, accelerator.process_index, accelerator.num_processes)
    preprocessing = encoder.preprocessing
    transform = build_eval_transform(preprocessing.image_size, preprocessing.resize_size)
    rows = []
    loader = build_eval_loader(shard, transform, args.encoder_batch_size, args.num_workers)
    progress = tqdm(desc="Validation", unit="img", disable=not accelerator.is_main_process)
    with torch.no_grad():
        for batch in loader:
            features = extract_features(encoder.model, batch["pixel_values"], preprocessing, args.encoder_batch_size)
            logits = head(features)
            rows.append(torch.cat([batch["label"].to(logits.device)[:, None], rank_predictions(logits)], dim=1))
            progress.update(len(batch["label"]))
    progress.close()
    rows = torch.cat(rows)
    # Shares differ in length: pad with label -1, gather, then drop the padding.
    rows = accelerator.gather(accelerator.pad_across_processes(rows, dim=0, pad_index=-1))
    rows = rows[rows[:, 0] >= 0]
    return rows[:, 1:], rows[:, 0]


def run_official_probe(
    accelerator: Accelerator, encoder: FrozenEncoder, data_args: ImageDataArguments, args: ProbeArguments
) -> ProbeResult:
    """Official protocol end to end, data-parallel over the accelerator's processes.

    `args.batch_size` is the global batch, split evenly over the processes; steps per epoch come from the number of
    training examples (the dataset card's split size, else one pass over the labels), since a stream has no length.
    """
    train_source, validation_source = data_args.data_sources()
    train_dataset, validation_dataset, num_examples, class_names = open_labelled_datasets(
        train_source, validation_source
    )
    check_global_batch_size(args.batch_size, accelerator.num_processes, num_examples)
    steps_per_epoch, learning_rate = num_examples // args.batch_size, args.learning_rate(args.base_learning_rate)
    logger.info(
        f"lr {learning_rate:.4g} (base {args.base_learning_rate} x {args.batch_size} / 256), {steps_per_epoch} steps/epoch"
    )
    batches = build_official_train_batches(accelerator, train_dataset, encoder, args)
    generator = torch.Generator().manual_seed(args.seed)
    hidden_size = encoder.model.config.hidden_size
    head = build_probe_head(hidden_size, len(class_names), generator).to(accelerator.device)
    epochs = train_official_probe(accelerator, encoder, head, batches, args, steps_per_epoch)
    ranked, labels = predict_with_encoder(accelerator, encoder, head, validation_dataset, args)
    accuracy = compute_topk_accuracy(ranked, labels, len(class_names))
    return ProbeResult(
        protocol="official",
        top1_accuracy=accuracy["top1_accuracy"],
        top5_accuracy=accuracy["top5_accuracy"],
        base_learning_rate=args.base_learning_rate,
        learning_rate=learning_rate,
        holdout_top1_accuracy=None,
        num_train_examples=num_examples,
        num_validation_examples=len(labels),
        steps=args.epochs * steps_per_epoch,
        learning_rate_histories=[LearningRateHistory(args.base_learning_rate, learning_rate, None, epochs)],
        class_names=class_names,
        head=head,
    )


def run_fast_probe(encoder: FrozenEncoder, data_args: ImageDataArguments, args: ProbeArguments) -> ProbeResult:
    """Fast protocol end to end, in one process: cached features, a grid of heads, the best reported on validation."""
    fingerprint = fingerprint_encoder(encoder.model)
    train_source, validation_source = data_args.data_sources()
    train = load_or_extract_features(encoder, fingerprint, train_source, args, split="train")
    validation = load_or_extract_features(encoder, fingerprint, validation_source, args, split="validation")
    device = encoder.model.device
    train_features, train_labels = train.features.to(device), train.labels.to(device)
    validation_features, validation_labels = validation.features.to(device), validation.labels.to(device)
    class_names = resolve_class_names(
        train.label_names, validation.label_names, int(train_labels.max()), int(validation_labels.max())
    )
    fit = train_fast_probe(train_features, train_labels, len(class_names), args)
    with torch.no_grad():
        ranked = rank_predictions(fit.head(validation_features))
    accuracy = compute_topk_accuracy(ranked, validation_labels, len(class_names))
    best = fit.best
    return ProbeResult(
        protocol="fast",
        top1_accuracy=accuracy["top1_accuracy"],
        top5_accuracy=accuracy["top5_accuracy"],
        base_learning_rate=best.base_learning_rate,
        learning_rate=best.learning_rate,
        holdout_top1_accuracy=best.holdout_top1_accuracy,
        num_train_examples=len(train_features),
        num_validation_examples=len(validation_labels),
        steps=fit.steps,
        learning_rate_histories=fit.learning_rate_histories,
        class_names=class_names,
        head=fit.head,
        feature_cache={"train": train.file, "validation": validation.file},
    )


def run_probe(
    accelerator: Accelerator, encoder: FrozenEncoder, data_args: ImageDataArguments, args: ProbeArguments
) -> ProbeResult:
    """The protocol that `args.protocol` names, end to end."""
    if args.protocol == "official":
        return run_official_probe(accelerator, encoder, data_args, args)
    if accelerator.num_processes > 1:
        raise UserError("The fast protocol runs in one process: launch it with python, not accelerate launch.")
    return run_fast_probe(encoder, data_args, args)
