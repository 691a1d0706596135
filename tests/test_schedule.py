"""Tests for caev2_hf/schedule.py: derived numbers (batch rule, steps) and the warmup + cosine lr schedule."""

import math

import pytest
import torch

from caev2_hf.pretraining.schedule import TrainingNumbers, build_lr_scheduler, compute_training_numbers


def test_numbers_scale_the_learning_rate_linearly_with_the_effective_batch() -> None:
    numbers = compute_training_numbers(128, 2, 4, learning_rate=1.5e-3, learning_rate_batch_size=2048, max_steps=10)
    assert numbers.effective_batch_size == 1024 and numbers.learning_rate == pytest.approx(7.5e-4)
    assert (numbers.max_steps, numbers.warmup_steps, numbers.steps_per_epoch) == (10, 0, None)


def test_numbers_turn_epochs_into_updates_of_complete_batches() -> None:
    numbers = compute_training_numbers(
        256, 1, 4, 1.5e-3, 2048, num_train_epochs=300, num_train_examples=1_281_167, warmup_epochs=10
    )
    assert numbers.steps_per_epoch == 1_281_167 // 1024 == 1251
    assert (numbers.max_steps, numbers.warmup_steps) == (375_300, 12_510)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"max_steps": 10, "num_train_epochs": 1, "num_train_examples": 100}, "Give max_steps or max_epochs"),
        ({"num_train_epochs": 1}, "max_epochs needs num_train_examples"),
        ({"max_steps": 10, "warmup_epochs": 1}, "warmup_epochs needs num_train_examples"),
        ({"max_steps": 10, "warmup_steps": 11}, r"warmup \(11 updates\) is longer than the run \(10 updates\)"),
        ({}, "The run has no updates"),
        ({"num_train_epochs": 1, "num_train_examples": 3}, "below one effective batch"),
    ],
)
def test_numbers_refuse_inconsistent_step_arguments(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_training_numbers(4, 1, 1, 1e-3, 4, **arguments)


def lr_after(scheduler: torch.optim.lr_scheduler.LRScheduler, optimizer: torch.optim.Optimizer, steps: int) -> float:
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return scheduler.get_last_lr()[0]


def test_scheduler_warms_up_linearly_then_follows_a_cosine_to_the_floor() -> None:
    numbers = TrainingNumbers(1, 4, learning_rate=1e-3, max_steps=110, warmup_steps=10, steps_per_epoch=None)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=numbers.learning_rate)
    scheduler = build_lr_scheduler(optimizer, numbers, min_learning_rate=1e-5)
    observed = [scheduler.get_last_lr()[0], lr_after(scheduler, optimizer, 5), lr_after(scheduler, optimizer, 5),
                lr_after(scheduler, optimizer, 50), lr_after(scheduler, optimizer, 50)]  # fmt: skip
    halfway = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5))  # step 60: half of the 100 cosine steps
    assert observed == pytest.approx([0.0, 5e-4, 1e-3, halfway, 1e-5], rel=1e-9, abs=1e-12)


def test_scheduler_refuses_a_floor_above_the_peak() -> None:
    numbers = TrainingNumbers(1, 4, learning_rate=1e-5, max_steps=10, warmup_steps=0, steps_per_epoch=None)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=numbers.learning_rate)
    with pytest.raises(ValueError, match="min_learning_rate=0.0001 must lie in"):
        build_lr_scheduler(optimizer, numbers, min_learning_rate=1e-4)
