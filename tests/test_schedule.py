"""Tests for caev2_hf/pretraining/schedule.py: the training schedule (batch rule, steps) and the warmup + cosine lr
schedulers, the authors' one through the real pretraining step and a checkpoint."""

import math

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from conftest import build_tiny_config

from caev2_hf import CAEv2ForPreTraining
from caev2_hf.pretraining.checkpointing import load_checkpoint, save_checkpoint
from caev2_hf.pretraining.schedule import TrainingSchedule, build_lr_scheduler, compute_training_schedule
from caev2_hf.pretraining.step import PretrainingStep, build_accelerator, build_pretraining_step
from caev2_hf.pretraining.step_tracking import unwrap_optimizer
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.pretraining import PretrainingArguments


def test_schedule_scales_the_learning_rate_linearly_with_the_effective_batch() -> None:
    schedule = compute_training_schedule(128, 2, 4, learning_rate=1.5e-3, learning_rate_batch_size=2048, max_steps=10)
    assert schedule.effective_batch_size == 1024 and schedule.learning_rate == pytest.approx(7.5e-4)
    assert (schedule.max_steps, schedule.warmup_steps, schedule.steps_per_epoch) == (10, 0, None)


def test_schedule_turns_epochs_into_updates_of_complete_batches() -> None:
    schedule = compute_training_schedule(
        256, 1, 4, 1.5e-3, 2048, num_train_epochs=300, num_train_examples=1_281_167, warmup_epochs=10
    )
    assert schedule.steps_per_epoch == 1_281_167 // 1024 == 1251
    assert (schedule.max_steps, schedule.warmup_steps) == (375_300, 12_510)


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
def test_schedule_refuses_inconsistent_step_arguments(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_training_schedule(4, 1, 1, 1e-3, 4, **arguments)


def lr_after(scheduler: torch.optim.lr_scheduler.LRScheduler, optimizer: torch.optim.Optimizer, steps: int) -> float:
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return scheduler.get_last_lr()[0]


def test_scheduler_warms_up_linearly_then_follows_a_cosine_to_the_floor() -> None:
    schedule = TrainingSchedule(1, 4, learning_rate=1e-3, max_steps=110, warmup_steps=10, steps_per_epoch=None)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=schedule.learning_rate)
    scheduler = build_lr_scheduler(optimizer, schedule, min_learning_rate=1e-5)
    observed = [scheduler.get_last_lr()[0], lr_after(scheduler, optimizer, 5), lr_after(scheduler, optimizer, 5),
                lr_after(scheduler, optimizer, 50), lr_after(scheduler, optimizer, 50)]  # fmt: skip
    halfway = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5))  # step 60: half of the 100 cosine steps
    assert observed == pytest.approx([0.0, 5e-4, 1e-3, halfway, 1e-5], rel=1e-9, abs=1e-12)


def test_scheduler_refuses_a_floor_above_the_peak() -> None:
    schedule = TrainingSchedule(1, 4, learning_rate=1e-5, max_steps=10, warmup_steps=0, steps_per_epoch=None)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=schedule.learning_rate)
    with pytest.raises(ValueError, match="min_learning_rate=0.0001 must lie in"):
        build_lr_scheduler(optimizer, schedule, min_learning_rate=1e-4)


def authors_schedule(peak: float, floor: float, warmup: int, total: int) -> np.ndarray:
    """The authors' lr of every update, written out by hand: `np.linspace(0, peak, warmup)`, then
    `floor + (peak - floor) / 2 * (1 + cos(pi * i / (total - warmup)))` for i = 0 .. total - warmup - 1."""
    cosine_steps = np.arange(total - warmup)
    cosine = floor + 0.5 * (peak - floor) * (1 + np.cos(np.pi * cosine_steps / (total - warmup)))
    return np.concatenate([np.linspace(0, peak, warmup), cosine])


PEAK, FLOOR, WARMUP, TOTAL = 1e-3, 1e-5, 4, 8


def build_real_step(output_dir: str, seed: int = 0) -> tuple[PretrainingStep, list[list[float]]]:
    """The step `run_pretrain.py` builds (`build_pretraining_step`: Accelerator, AdamW groups, scheduler, tracker) on
    a tiny model, with the lr of every parameter group recorded as each update uses it."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    training_args = PretrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=2, learning_rate=PEAK, learning_rate_batch_size=2,
        min_learning_rate=FLOOR, lr_scheduler_type="authors_cosine", max_steps=TOTAL, warmup_steps=WARMUP,
        report_to="none", mixed_precision="no",
    )  # fmt: skip
    schedule = compute_training_schedule(2, 1, 1, PEAK, 2, max_steps=TOTAL, warmup_steps=WARMUP)
    accelerator = build_accelerator(training_args)
    torch.manual_seed(seed)
    step = build_pretraining_step(accelerator, CAEv2ForPreTraining(build_tiny_config()), training_args, schedule)
    used = []
    unwrap_optimizer(step.optimizer).register_step_pre_hook(
        lambda opt, args, kwargs: used.append([group["lr"] for group in opt.param_groups])
    )
    return step, used


def tiny_batch(update: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(update)
    masks = torch.stack([torch.randperm(16, generator=generator) < 6 for _ in range(2)])
    pixels = torch.randint(0, 256, (2, 3, 32, 32), generator=generator, dtype=torch.uint8)
    return {"pixel_values": pixels, "bool_masked_pos": masks, "num_skipped_images": torch.tensor(0)}


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_authors_cosine_gives_the_authors_lr_at_every_update_of_the_real_step(tmp_path) -> None:
    step, used = build_real_step(str(tmp_path))
    for update in range(TOTAL):
        step(tiny_batch(update))
    reference = authors_schedule(PEAK, FLOOR, WARMUP, TOTAL)
    assert len(used) == TOTAL and all(len(set(groups)) == 1 for groups in used)  # both weight-decay groups alike
    ours = np.array([groups[0] for groups in used])
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=0)
    assert ours[WARMUP - 1] == PEAK and ours[0] == 0.0  # the peak exactly, one update before transformers' schedule
    assert step.scheduler.get_last_lr()[0] == pytest.approx(FLOOR, rel=1e-12)  # the floor after the last update


def test_transformers_schedule_peaks_one_update_later_than_the_authors() -> None:
    schedule = TrainingSchedule(1, 4, learning_rate=PEAK, max_steps=TOTAL, warmup_steps=WARMUP, steps_per_epoch=None)
    lrs = {}
    for kind in ("cosine_with_min_lr", "authors_cosine"):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
        scheduler = build_lr_scheduler(optimizer, schedule, FLOOR, kind)
        lrs[kind] = [scheduler.get_last_lr()[0]] + [lr_after(scheduler, optimizer, 1) for _ in range(TOTAL - 1)]
    warmup = np.arange(WARMUP)
    np.testing.assert_allclose(lrs["cosine_with_min_lr"][:WARMUP], PEAK * warmup / WARMUP, rtol=1e-12)
    np.testing.assert_allclose(lrs["authors_cosine"][:WARMUP], PEAK * warmup / (WARMUP - 1), rtol=1e-12)
    np.testing.assert_allclose(lrs["cosine_with_min_lr"][WARMUP:], lrs["authors_cosine"][WARMUP:], rtol=1e-12)


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_authors_cosine_continues_its_schedule_after_a_checkpoint(tmp_path) -> None:
    step, used = build_real_step(str(tmp_path / "run"))
    for update in range(5):
        step(tiny_batch(update))
    save_checkpoint(step.accelerator, str(tmp_path / "checkpoints"), 5, {}, {}, save_total_limit=1)
    saved_state = step.scheduler.scheduler.state_dict()
    resumed, resumed_used = build_real_step(str(tmp_path / "run"), seed=1)  # other initial weights, overwritten
    load_checkpoint(resumed.accelerator, str(tmp_path / "checkpoints" / "checkpoint-00000005"))
    assert resumed.scheduler.scheduler.state_dict() == saved_state
    for update in range(5, TOTAL):
        resumed(tiny_batch(update))
    reference = authors_schedule(PEAK, FLOOR, WARMUP, TOTAL)
    np.testing.assert_allclose([groups[0] for groups in used + resumed_used], reference, rtol=1e-12, atol=0)


def test_authors_cosine_with_one_warmup_update_starts_at_zero_as_linspace_does() -> None:
    schedule = TrainingSchedule(1, 4, learning_rate=PEAK, max_steps=3, warmup_steps=1, steps_per_epoch=None)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    scheduler = build_lr_scheduler(optimizer, schedule, FLOOR, "authors_cosine")
    observed = [scheduler.get_last_lr()[0], lr_after(scheduler, optimizer, 1), lr_after(scheduler, optimizer, 1)]
    np.testing.assert_allclose(observed, authors_schedule(PEAK, FLOOR, 1, 3), rtol=1e-12, atol=0)


def test_pretraining_arguments_refuse_an_unknown_schedule() -> None:
    with pytest.raises(UserError, match="--lr_scheduler_type linear: choose cosine_with_min_lr or authors_cosine"):
        PretrainingArguments(lr_scheduler_type="linear")
