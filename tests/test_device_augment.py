"""Tests for caev2_hf/data/device_augment.py: the batched flip + colour jitter equals torchvision's per-image transform on
the same parameters (run on CPU here; the same code runs on the accelerator)."""

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from caev2_hf.data.device_augment import augment_and_normalize, augment_on_device, normalize_pixel_values
from caev2_hf.data.transforms import PretrainCrop


ADJUST = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)  # op codes 0, 1, 2


def reference(image: torch.Tensor, flip: bool, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """torchvision's functionals, one image at a time, in the image's own order (what ColorJitter does)."""
    image = F.to_dtype(image, torch.float32, scale=True)
    if flip:
        image = F.horizontal_flip(image)
    for op in order.tolist():
        image = ADJUST[op](image, float(factors[op]))
    return image


def random_parameters(batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    flip = torch.rand(batch_size, generator=generator) < 0.5
    factors = 0.6 + 0.8 * torch.rand(batch_size, 3, generator=generator)
    order = torch.stack([torch.randperm(3, generator=generator) for _ in range(batch_size)])
    return flip, factors, order


def test_augment_on_device_equals_torchvision_per_image() -> None:
    pixels = torch.randint(0, 256, (8, 3, 12, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels[0] = 250  # bright: brightness > 1 clips
    flip, factors, order = random_parameters(8, seed=1)
    factors[0, 0] = 1.4
    augmented = augment_on_device(pixels, flip, factors, order)
    expected = torch.stack([reference(*args) for args in zip(pixels, flip, factors, order, strict=True)])
    assert augmented.dtype == torch.float32 and augmented.shape == pixels.shape
    assert (augmented - expected).abs().max() <= 1 / 255  # the bound; in fact float rounding only:
    torch.testing.assert_close(augmented, expected, atol=1e-5, rtol=0)
    # clipped as torchvision clips
    assert augmented[0].max() == pytest.approx(1.0, abs=1e-4) and augmented.max() <= 1.0
    assert not torch.allclose(augmented, pixels.float() / 255, atol=0.01)  # the parameters did something


def test_augment_on_device_depends_on_the_order_of_the_ops() -> None:
    pixels = torch.randint(0, 256, (1, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    factors = torch.tensor([[1.4, 0.6, 1.3]])
    first, second = (
        augment_on_device(pixels, None, factors, torch.tensor([order])) for order in ([0, 1, 2], [2, 1, 0])
    )
    assert (first - second).abs().max() > 0.01  # brightness then contrast differs from contrast then brightness


def test_augment_with_neutral_parameters_is_the_identity_and_flip_mirrors() -> None:
    pixels = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    neutral = augment_on_device(pixels, torch.tensor([False, True]), torch.ones(2, 3), torch.arange(3).repeat(2, 1))
    torch.testing.assert_close(neutral[0], pixels[0].float() / 255, atol=1e-6, rtol=0)
    torch.testing.assert_close(neutral[1], pixels[1].flip(-1).float() / 255, atol=1e-6, rtol=0)


def test_augment_and_normalize_without_parameters_only_normalizes() -> None:
    pixels = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    assert torch.equal(augment_and_normalize(pixels, mean, std), normalize_pixel_values(pixels, mean, std))
    flip, factors, order = random_parameters(2, seed=5)
    expected = (augment_on_device(pixels, flip, factors, order) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(
        std
    ).view(3, 1, 1)
    torch.testing.assert_close(augment_and_normalize(pixels, mean, std, flip, factors, order), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_worker_crop_plus_device_augmentation_equals_the_cpu_reference_on_the_same_parameters(seed: int) -> None:
    """PretrainCrop draws the parameters in the worker; the device applies them; torchvision's functionals applied to
    the same crop with the same parameters on the CPU give the same image."""
    image = F.to_pil_image(
        torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    )
    torch.manual_seed(seed)
    crop = PretrainCrop(image_size=16)(image)
    factors, order = crop["jitter_factors"], crop["jitter_order"]
    assert sorted(order.tolist()) == [0, 1, 2] and ((0.6 <= factors) & (factors <= 1.4)).all()
    augmented = augment_on_device(crop["pixel_values"][None], torch.tensor([crop["flip"]]), factors[None], order[None])
    expected = reference(crop["pixel_values"], crop["flip"], factors, order)
    assert (augmented[0] - expected).abs().max() <= 1 / 255


def test_prepare_inputs_augments_on_the_device_and_passes_only_model_inputs() -> None:
    from accelerate import Accelerator

    from caev2_hf.pretraining.step import PretrainingStep

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    step = PretrainingStep(Accelerator(cpu=True), None, None, None, None, None, mean, std)
    pixels = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    flip, factors, order = random_parameters(3, seed=7)
    batch = {"pixel_values": pixels, "bool_masked_pos": torch.zeros(3, 4, dtype=torch.bool), "flip": flip,
             "jitter_factors": factors, "jitter_order": order, "num_skipped_images": torch.tensor(0)}  # fmt: skip
    inputs = step.prepare_inputs(batch)
    assert sorted(inputs) == ["bool_masked_pos", "pixel_values"]
    torch.testing.assert_close(inputs["pixel_values"], augment_and_normalize(pixels, mean, std, flip, factors, order))
    assert not torch.allclose(inputs["pixel_values"], normalize_pixel_values(pixels, mean, std), atol=0.05)
