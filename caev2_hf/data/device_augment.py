"""The per-pixel part of the pretraining augmentation, batched on the accelerator: flip, colour jitter, normalisation.

Loader workers send uint8 crops plus each image's parameters (`transforms.PretrainCrop`); here they become float
pixels on the device, in the batch's own tensors. The jitter ops are torchvision's (`adjust_brightness`,
`adjust_contrast`, `adjust_saturation`: a blend with black, with the mean grey level, with the grey image), applied in
each image's own random order, so the result equals torchvision's per-image transform on the same parameters
(tests/test_device_augment.py). torchvision's functionals take one factor per call, hence this batched form.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch


GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
AUGMENTATION_KEYS = ("flip", "jitter_factors", "jitter_order")


@functools.lru_cache(maxsize=8)
def _channel_statistics(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Built once per device: `torch.tensor(..., device="cuda")` at every step is a blocking copy (a host sync)."""
    as_column = lambda values: torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1)  # noqa: E731
    return as_column(mean), as_column(std)


@functools.lru_cache(maxsize=8)
def _grey_weights(device: torch.device) -> torch.Tensor:
    return torch.tensor(GREY_WEIGHTS, dtype=torch.float32, device=device).view(1, 3, 1, 1)


def normalize_pixel_values(
    pixel_values: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(x / 255 - mean) / std on the tensor's own device, computed in float32 and returned in `dtype`.

    Call it after the uint8 batch is on the accelerator: the copy is 4x smaller and the arithmetic runs there.
    """
    mean, std = _channel_statistics(tuple(mean), tuple(std), pixel_values.device)
    return ((pixel_values.float() / 255.0 - mean) / std).to(dtype)


def augment_on_device(
    pixel_values: torch.Tensor,
    flip: torch.Tensor | None = None,
    jitter_factors: torch.Tensor | None = None,
    jitter_order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Flips and colour-jitters a batch with per-image parameters; returns float32 in [0, 1] (no host sync).

    Args:
        pixel_values: uint8 or float (batch, 3, H, W); uint8 is scaled to [0, 1].
        flip: bool (batch,), mirror left-right where True.
        jitter_factors: float (batch, 3), brightness, contrast and saturation factors (1 = unchanged).
        jitter_order: int (batch, 3), op codes 0 brightness, 1 contrast, 2 saturation, in the order to apply them.
    """
    images = pixel_values.float() / 255.0 if not pixel_values.is_floating_point() else pixel_values.float()
    if flip is not None:
        images = torch.where(flip.view(-1, 1, 1, 1).to(images.device, torch.bool), images.flip(-1), images)
    if jitter_factors is None:
        return images
    factors = jitter_factors.to(images.device, torch.float32)
    order = jitter_order.to(images.device, torch.int64)
    weights = _grey_weights(images.device)
    for slot in range(order.shape[1]):
        op = order[:, slot]
        factor = factors.gather(1, op[:, None]).view(-1, 1, 1, 1)
        grey = (images * weights).sum(dim=1, keepdim=True)  # (batch, 1, H, W)
        mean_grey = grey.mean(dim=(1, 2, 3), keepdim=True)
        op = op.view(-1, 1, 1, 1)
        # what each image blends with: black (brightness), its mean grey (contrast), its grey image (saturation)
        other = torch.where(op == 2, grey, mean_grey * (op == 1))
        images = torch.lerp(other, images, factor).clamp_(0.0, 1.0)  # torchvision's _blend: f * x + (1 - f) * other
    return images


def augment_and_normalize(
    pixel_values: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    flip: torch.Tensor | None = None,
    jitter_factors: torch.Tensor | None = None,
    jitter_order: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """`augment_on_device`, then the student's normalisation; without parameters, `normalize_pixel_values` alone."""
    if flip is None and jitter_factors is None:
        return normalize_pixel_values(pixel_values, mean, std, dtype)
    images = augment_on_device(pixel_values, flip, jitter_factors, jitter_order)
    mean, std = _channel_statistics(tuple(mean), tuple(std), images.device)
    return ((images - mean) / std).to(dtype)
