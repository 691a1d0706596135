# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""What the training-step benchmarks (segmentation, detection) share: timing a step after its warm-up, what the
device and versions were, and the JSON file."""

import json
import os
import platform
import time
from collections.abc import Callable

import torch
import transformers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], torch.Tensor], warmup_steps: int, steps: int, device: torch.device) -> dict:
    """Runs `step` (returning its detached loss) `warmup_steps` times, then times `steps` more: the mean step in ms,
    the warm-up's seconds, the peak GPU memory of the timed steps, the last loss."""
    start = time.perf_counter()
    for _ in range(warmup_steps):
        loss = step()
    synchronize(device)
    warmup_seconds = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {
        "step_ms": 1000 * elapsed / steps,
        "warmup_seconds": warmup_seconds,
        "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "final_loss": float(loss),
        "loss_is_finite": bool(torch.isfinite(loss)),
    }


def describe_environment(device: torch.device) -> dict:
    return {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def write_json(path: str | None, result: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as file:
            json.dump(result, file, indent=2)
