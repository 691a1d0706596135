# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Training-step bookkeeping without host syncs: running sums on the device, read only at log steps, and a guard
that skips an update whose loss or gradients are not finite (nanoGPT reads the loss only when it logs; MAE's
per-step `loss.item()` check stalls the GPU queue every step)."""

import time

import torch
from accelerate import Accelerator


LOSS_NAMES = ("loss", "visible_loss", "masked_loss", "cls_loss")


class NonFiniteStreak(RuntimeError):
    """`max_consecutive_skipped_steps` updates in a row were skipped; `first_skipped` is the first of them (the
    weights they all started from are those after update `first_skipped - 1`)."""

    def __init__(self, length: int, first_skipped: int, max_consecutive_skipped_steps: int) -> None:
        super().__init__(
            f"{length} updates in a row, from update {first_skipped} on, had a non-finite loss or gradient norm "
            f"(skipped: the weights did not change); max_consecutive_skipped_steps={max_consecutive_skipped_steps}."
        )
        self.length = length
        self.first_skipped = first_skipped


def unwrap_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's `AcceleratedOptimizer` wrapper (or the optimizer itself)."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


class StepTracker:
    """Sums of losses, grad norms and counters kept on the device between log steps.

    Only `summarize` and `totals` read device values (one host sync each); the training step calls `record_batch`
    and `skip_update_if_nonfinite`, which only queue device work.

    Args:
        device: where the sums live (the accelerator's device).
        effective_batch_size: images per update over all processes, for images/s.
        max_consecutive_skipped_steps: `summarize` raises `NonFiniteStreak` once this many updates in a row were
            skipped.
        skipped_steps: skipped updates before this run started (from a checkpoint).
        skipped_images: unreadable images before this run started, all processes together (from a checkpoint).
        start_step: updates before this run started (from a checkpoint), to name the updates of a streak.
    """

    def __init__(
        self,
        device: torch.device,
        effective_batch_size: int,
        max_consecutive_skipped_steps: int,
        skipped_steps: int = 0,
        skipped_images: int = 0,
        start_step: int = 0,
    ) -> None:
        self.effective_batch_size = effective_batch_size
        self.max_consecutive_skipped_steps = max_consecutive_skipped_steps
        self.skipped_steps = torch.tensor(float(skipped_steps), device=device)
        self.consecutive_skipped = torch.zeros((), device=device)
        self.longest_skip_run = torch.zeros((), device=device)
        self.update = start_step  # the update being counted, on the host
        self.skip_run_start = torch.zeros((), device=device)  # first update of the current run of skips
        self.longest_skip_run_start = torch.zeros((), device=device)
        self.total_skipped_images = skipped_images
        self._zero_window(device)

    def _zero_window(self, device: torch.device) -> None:
        self.window_losses = torch.zeros(len(LOSS_NAMES), device=device)
        self.window_finite_batches = torch.zeros((), device=device)
        self.window_grad_norm = torch.zeros((), device=device)
        self.window_applied_updates = torch.zeros((), device=device)
        self.window_skipped_images = torch.zeros((), dtype=torch.int64)  # on the CPU: the collator's count
        self.window_updates = 0
        self.window_start = time.perf_counter()

    def record_batch(self, outputs, num_skipped_images: torch.Tensor) -> None:
        """Adds one micro-batch's losses (when finite) and the images its loader skipped."""
        losses = torch.stack([getattr(outputs, name).detach().float() for name in LOSS_NAMES])
        is_finite = torch.isfinite(losses[0])
        self.window_losses += torch.where(is_finite, losses, 0.0)  # where, not a product: NaN * 0 is NaN
        self.window_finite_batches += is_finite
        self.window_skipped_images += num_skipped_images

    def skip_update_if_nonfinite(self, optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor) -> None:
        """Makes the coming `optimizer.step()` a no-op when the gradient norm is NaN or inf, decided on the device.

        A non-finite loss gives non-finite gradients, so the total norm catches both. The flag goes to the fused
        AdamW kernel through `found_inf`, the hook `GradScaler` uses: when it is 1 the kernel leaves weights, moments
        and step count untouched. Under fp16 the GradScaler sets the same flag itself.
        """
        if hasattr(grad_norm, "full_tensor"):  # FSDP2 gives a DTensor norm; reduce it on the device
            grad_norm = grad_norm.full_tensor()
        grad_norm = grad_norm.detach().float()
        is_skipped = ~torch.isfinite(grad_norm)
        unwrap_optimizer(optimizer).found_inf = is_skipped.float()
        self.window_grad_norm += torch.where(is_skipped, 0.0, grad_norm)
        self.window_applied_updates += ~is_skipped
        self.skipped_steps += is_skipped
        self.update += 1
        self.consecutive_skipped = (self.consecutive_skipped + 1) * is_skipped
        self.skip_run_start = torch.where(self.consecutive_skipped == 1, self.update, self.skip_run_start)
        is_longest = self.consecutive_skipped > self.longest_skip_run
        self.longest_skip_run_start = torch.where(is_longest, self.skip_run_start, self.longest_skip_run_start)
        self.longest_skip_run = torch.maximum(self.longest_skip_run, self.consecutive_skipped)
        self.window_updates += 1

    def is_skipping(self) -> bool:
        """Whether the last update was skipped (a host sync: for checkpoints, which must not hold weights that keep
        giving non-finite gradients)."""
        return bool(self.consecutive_skipped.item())

    def summarize(self, accelerator: Accelerator) -> dict[str, float]:
        """Window means over all processes, images/s and the counters; resets the window (host sync)."""
        window = torch.cat(
            [
                self.window_losses,
                self.window_finite_batches[None],
                self.window_skipped_images[None].to(self.window_losses.device, torch.float32),
            ]
        )
        window = accelerator.reduce(window, reduction="sum").tolist()
        num_finite, skipped_images = window[len(LOSS_NAMES)], int(window[len(LOSS_NAMES) + 1])
        grad_norm, applied, skipped_steps, longest, longest_start = torch.stack(
            [
                self.window_grad_norm,
                self.window_applied_updates,
                self.skipped_steps,
                self.longest_skip_run,
                self.longest_skip_run_start,
            ]
        ).tolist()
        elapsed = time.perf_counter() - self.window_start
        self.total_skipped_images += skipped_images
        metrics = {
            name: total / num_finite if num_finite else float("nan")
            for name, total in zip(LOSS_NAMES, window[: len(LOSS_NAMES)], strict=True)
        }
        metrics.update(
            grad_norm=grad_norm / applied if applied else float("nan"),
            images_per_second=self.window_updates * self.effective_batch_size / elapsed,
            skipped_images=self.total_skipped_images,
            skipped_steps=int(skipped_steps),
        )
        if longest >= self.max_consecutive_skipped_steps:
            raise NonFiniteStreak(int(longest), int(longest_start), self.max_consecutive_skipped_steps)
        self._zero_window(self.window_losses.device)
        return metrics

    def totals(self, accelerator: Accelerator) -> dict[str, int]:
        """Skipped updates and images so far, all processes together (for checkpoints; a host sync)."""
        window_images = accelerator.reduce(self.window_skipped_images.to(self.window_losses.device), reduction="sum")
        return {
            "skipped_steps": int(self.skipped_steps.item()),
            "skipped_images": self.total_skipped_images + int(window_images.item()),
        }
