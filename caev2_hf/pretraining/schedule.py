# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""The numbers a pretraining run derives from its arguments (batch, lr, steps) and its lr schedule (docs/method.md#recipes)."""

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup


@dataclass(frozen=True)
class TrainingNumbers:
    """Derived once, logged once and saved with every checkpoint, so a reader never recomputes them."""

    num_processes: int
    effective_batch_size: int
    learning_rate: float
    max_steps: int
    warmup_steps: int
    steps_per_epoch: int | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _steps(steps: int | None, epochs: float | None, steps_per_epoch: int | None, name: str) -> int | None:
    """A step count given directly or as epochs; refuses both, and epochs without a dataset size."""
    if steps is not None and epochs is not None:
        raise ValueError(f"Give {name}_steps or {name}_epochs, not both.")
    if epochs is None:
        return steps
    if steps_per_epoch is None:
        raise ValueError(f"{name}_epochs needs num_train_examples (a stream has no length): set it, or give steps.")
    return round(epochs * steps_per_epoch)


def compute_training_numbers(
    per_device_batch_size: int,
    gradient_accumulation_steps: int,
    num_processes: int,
    learning_rate: float,
    learning_rate_batch_size: int,
    max_steps: int | None = None,
    num_train_epochs: float | None = None,
    num_train_examples: int | None = None,
    warmup_steps: int | None = None,
    warmup_epochs: float | None = None,
) -> TrainingNumbers:
    """Effective batch, absolute lr by the linear scaling rule, and the step counts.

    `lr = learning_rate * effective_batch_size / learning_rate_batch_size` (the official recipe quotes 1.5e-3 at
    2048). An epoch is `num_train_examples // effective_batch_size` updates (incomplete batches are dropped), so
    ImageNet-1k at 2048 gives 625 updates per epoch: 300 epochs = 187,500 updates, 10 warmup epochs = 6,250.
    """
    effective_batch_size = per_device_batch_size * gradient_accumulation_steps * num_processes
    steps_per_epoch = None if num_train_examples is None else num_train_examples // effective_batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"num_train_examples={num_train_examples} is below one effective batch ({effective_batch_size})."
        )
    total = _steps(max_steps, num_train_epochs, steps_per_epoch, "max")
    if total is None or total < 1:
        raise ValueError("The run has no updates: set max_steps >= 1, or num_train_epochs and num_train_examples.")
    warmup = _steps(warmup_steps, warmup_epochs, steps_per_epoch, "warmup") or 0
    if warmup > total:
        raise ValueError(
            f"warmup ({warmup} updates) is longer than the run ({total} updates): lower --warmup_steps (or "
            "--warmup_epochs), or lengthen the run."
        )
    return TrainingNumbers(
        num_processes=num_processes,
        effective_batch_size=effective_batch_size,
        learning_rate=learning_rate * effective_batch_size / learning_rate_batch_size,
        max_steps=total,
        warmup_steps=warmup,
        steps_per_epoch=steps_per_epoch,
    )


def authors_cosine_factor(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """The lr of update `step` over the peak in the authors' schedule (`cosine_scheduler` of their `furnace/utils.py`).

    Warmup is `np.linspace(0, 1, W)`: update k gets k / (W - 1), so the peak comes at update W - 1 (a warmup of one
    update is `[0]`). Then half a cosine per update, from the peak at update W to `min_ratio` after the last update.
    Only the warmup differs from transformers' cosine-with-min-lr schedule, which gives k / W (docs/method.md#recipes).
    """
    if step < warmup_steps:
        return step / (warmup_steps - 1) if warmup_steps > 1 else 0.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    numbers: TrainingNumbers,
    min_learning_rate: float,
    scheduler_type: str = "cosine_with_min_lr",
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0, then half a cosine down to `min_learning_rate`, stepped once per update
    (docs/method.md#recipes): transformers' `cosine_with_min_lr`, or `authors_cosine` (`authors_cosine_factor`)."""
    if not 0 <= min_learning_rate <= numbers.learning_rate:
        raise ValueError(
            f"min_learning_rate={min_learning_rate} must lie in [0, {numbers.learning_rate:.3g}] (the scaled peak lr)."
        )
    if scheduler_type == "authors_cosine":
        factor = functools.partial(
            authors_cosine_factor,
            warmup_steps=numbers.warmup_steps,
            max_steps=numbers.max_steps,
            min_ratio=min_learning_rate / numbers.learning_rate,
        )
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if scheduler_type != "cosine_with_min_lr":
        raise ValueError(f"scheduler_type={scheduler_type!r}: choose cosine_with_min_lr or authors_cosine.")
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, numbers.warmup_steps, numbers.max_steps, min_lr=min_learning_rate
    )


def set_peak_learning_rates(scheduler: torch.optim.lr_scheduler.LambdaLR, peak_learning_rates: list[float]) -> None:
    """Makes a restored schedule continue, from its current update, with new peak lrs (what a changed
    `--learning_rate` means on resume): `LambdaLR` gives each group its peak times the schedule's factor, so replacing
    the peaks it restored from the checkpoint (`base_lrs`) rebuilds the schedule from the new peak."""
    scheduler.base_lrs = list(peak_learning_rates)
    for group, peak in zip(scheduler.optimizer.param_groups, peak_learning_rates, strict=True):
        group["initial_lr"] = peak
    scheduler.last_epoch -= 1
    scheduler.step()  # the current update's lrs again, from the new peaks
