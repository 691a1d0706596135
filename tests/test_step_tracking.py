"""Tests for caev2_hf/step_tracking.py: the device-side skip of non-finite updates and the log-step summaries."""

from types import SimpleNamespace

import pytest
import torch

from caev2_hf.pretraining.step_tracking import NonFiniteStreak, StepTracker


class SingleProcess:
    """The one Accelerator method the tracker calls, as a single process computes it."""

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        return tensor


def outputs(loss: float, visible: float = 0.0, masked: float = 0.0, cls: float = 0.0) -> SimpleNamespace:
    values = {"loss": loss, "visible_loss": visible, "masked_loss": masked, "cls_loss": cls}
    return SimpleNamespace(**{name: torch.tensor(value) for name, value in values.items()})


def test_skip_update_if_nonfinite_leaves_weights_and_moments_untouched() -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1, weight_decay=0.5, fused=True)
    tracker = StepTracker(torch.device("cpu"), effective_batch_size=4, max_consecutive_skipped_steps=5)
    weight.grad = torch.full((3,), float("nan"))
    tracker.skip_update_if_nonfinite(optimizer, torch.tensor(float("nan")))
    optimizer.step()
    assert torch.equal(weight.detach(), torch.ones(3)) and int(optimizer.state[weight]["step"]) == 0
    assert torch.equal(optimizer.state[weight]["exp_avg"], torch.zeros(3))
    weight.grad = torch.ones(3)
    tracker.skip_update_if_nonfinite(optimizer, torch.tensor(3**0.5))
    optimizer.step()
    # AdamW's first step: decay by lr * wd, then -lr * m_hat / (sqrt(v_hat) + eps) = -0.1 for a constant gradient.
    assert torch.allclose(weight.detach(), torch.full((3,), 1 * (1 - 0.1 * 0.5) - 0.1), atol=1e-6)
    assert int(optimizer.state[weight]["step"]) == 1


def test_summarize_averages_finite_batches_and_counts_skips() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))], fused=True)
    tracker = StepTracker(torch.device("cpu"), 4, max_consecutive_skipped_steps=5, skipped_steps=2, skipped_images=7)
    tracker.record_batch(outputs(0.5, visible=0.4, masked=0.7, cls=0.1), torch.tensor(1))
    tracker.skip_update_if_nonfinite(optimizer, torch.tensor(2.0))
    tracker.record_batch(outputs(float("nan")), torch.tensor(0))
    tracker.skip_update_if_nonfinite(optimizer, torch.tensor(float("inf")))
    tracker.record_batch(outputs(0.3, visible=0.2, masked=0.5, cls=0.3), torch.tensor(2))
    tracker.skip_update_if_nonfinite(optimizer, torch.tensor(4.0))
    metrics = tracker.summarize(SingleProcess())
    expected = {"loss": 0.4, "visible_loss": 0.3, "masked_loss": 0.6, "cls_loss": 0.2, "grad_norm": 3.0}
    assert {name: metrics[name] for name in expected} == pytest.approx(expected)
    assert (metrics["skipped_steps"], metrics["skipped_images"]) == (3, 10)
    assert metrics["images_per_second"] > 0
    assert tracker.totals(SingleProcess()) == {"skipped_steps": 3, "skipped_images": 10}


def test_summarize_stops_the_run_after_too_many_skips_in_a_row() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))], fused=True)
    tracker = StepTracker(torch.device("cpu"), 4, max_consecutive_skipped_steps=3)
    for grad_norm in (float("nan"), float("nan"), 1.0, float("nan"), float("nan")):
        tracker.skip_update_if_nonfinite(optimizer, torch.tensor(grad_norm))
    assert tracker.summarize(SingleProcess())["skipped_steps"] == 4  # longest run: 2
    tracker.skip_update_if_nonfinite(optimizer, torch.tensor(float("inf")))
    with pytest.raises(NonFiniteStreak, match="3 updates in a row, from update 4 on, had a non-finite loss"):
        tracker.summarize(SingleProcess())


def test_totals_include_images_skipped_since_the_last_summary() -> None:
    tracker = StepTracker(torch.device("cpu"), 4, max_consecutive_skipped_steps=3, skipped_images=5)
    tracker.record_batch(outputs(0.5), torch.tensor(2))
    assert tracker.totals(SingleProcess()) == {"skipped_steps": 0, "skipped_images": 7}


class ShardedNorm:
    """Stands in for the DTensor that FSDP2's clip_grad_norm_ returns: `full_tensor()` gives the plain norm."""

    def __init__(self, value: float) -> None:
        self.value = value

    def full_tensor(self) -> torch.Tensor:
        return torch.tensor(self.value)


def test_skip_update_if_nonfinite_reads_a_sharded_norm() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))], fused=True)
    tracker = StepTracker(torch.device("cpu"), 4, max_consecutive_skipped_steps=3)
    tracker.skip_update_if_nonfinite(optimizer, ShardedNorm(float("nan")))
    assert optimizer.found_inf.item() == 1.0
    tracker.skip_update_if_nonfinite(optimizer, ShardedNorm(2.0))
    assert optimizer.found_inf.item() == 0.0 and tracker.summarize(SingleProcess())["grad_norm"] == 2.0
