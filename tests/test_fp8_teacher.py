"""The optional FP8 teacher: row-wise FP8 quantisation, the FP8 Linear against a hand computation, the unchanged
state dict, the fidelity gate, and the targets of a CLIP ViT-B/16 teacher on real-photo crops.

`torch._scaled_mm` runs on the CPU too, so these tests exercise the same kernel call as a Hopper GPU."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny_config
from sklearn.datasets import load_sample_images
from torch import nn

from caev2_hf import CAEv2Config, CAEv2ForPreTraining
from caev2_hf.pretraining.fp8_teacher import (
    FP8_MAX,
    Fp8Linear,
    convert_linears_to_fp8,
    enable_fp8_teacher,
    quantize_rows,
)


def test_quantize_rows_scales_each_row_to_the_fp8_range():
    matrix = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [300.0, 10.0, -900.0]])
    values, scales = quantize_rows(matrix)
    assert scales.flatten().tolist() == pytest.approx([2.0 / FP8_MAX, 1e-12 / FP8_MAX, 900.0 / FP8_MAX])
    assert values.float().abs().amax(dim=1).tolist() == [FP8_MAX, 0.0, FP8_MAX]  # each row's largest -> 448
    # e4m3 keeps 3 mantissa bits: a relative rounding error of at most 1/16 of each value
    restored = values.float() * scales
    assert torch.all((restored - matrix).abs() <= matrix.abs() / 16 + 1e-9)


def test_fp8_linear_equals_the_dequantised_product():
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(32, 48).requires_grad_(False)
    inputs = torch.randn(2, 5, 32, generator=generator)
    x_values, x_scales = quantize_rows(inputs.reshape(-1, 32))
    w_values, w_scales = quantize_rows(linear.weight)
    expected = (x_values.float() * x_scales) @ (w_values.float() * w_scales).t() + linear.bias
    output = Fp8Linear(linear)(inputs)
    assert output.shape == (2, 5, 48) and output.dtype == torch.float32
    torch.testing.assert_close(output.reshape(-1, 48), expected, rtol=1e-2, atol=1e-2)  # bf16 output rounding
    # ... and close to the exact product, within FP8's precision
    exact = linear(inputs)
    assert F.cosine_similarity(output.flatten(), exact.flatten(), dim=0) > 0.999


def test_conversion_keeps_the_state_dict_and_skips_what_fp8_cannot_multiply(tiny_config):
    model = CAEv2ForPreTraining(build_tiny_config(teacher_config={**tiny_config.teacher_config.to_dict(),
                                                                   "intermediate_size": 40}))  # fmt: skip
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    replaced = convert_linears_to_fp8(model.teacher)
    kinds = {type(module).__name__ for _, module in model.teacher.named_modules() if isinstance(module, nn.Linear)}
    assert kinds == {"Linear", "Fp8Linear"}
    names = sorted({name for _, name, _ in replaced})
    assert names == ["k_proj", "out_proj", "q_proj", "v_proj"]  # fc1/fc2 (40 wide) and the projection stay
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)


def test_conversion_refuses_trainable_layers():
    with pytest.raises(ValueError, match="trainable"):
        convert_linears_to_fp8(nn.Sequential(nn.Linear(16, 16)))


def test_the_fidelity_gate_restores_the_teacher_when_targets_drift(tiny_config, pixel_values):
    teacher = CAEv2ForPreTraining(tiny_config).teacher
    reference = teacher(pixel_values)
    mean_cosine = enable_fp8_teacher(teacher, pixel_values, min_mean_cosine=1.0)  # an unreachable bar
    assert 0.9 < mean_cosine < 1.0
    assert not any(isinstance(module, Fp8Linear) for module in teacher.modules())
    torch.testing.assert_close(teacher(pixel_values), reference, rtol=0, atol=0)
    assert enable_fp8_teacher(teacher, pixel_values, min_mean_cosine=0.9) == pytest.approx(mean_cosine)
    assert any(isinstance(module, Fp8Linear) for module in teacher.modules())


def real_photo_crops(config: CAEv2Config, count: int) -> torch.Tensor:
    """`count` 224-px crops of scikit-learn's two sample photos, student-normalised."""
    photos = load_sample_images().images
    corners = [(0, 0), (150, 300), (200, 100), (50, 400)]
    crops = [
        np.ascontiguousarray(photo[top : top + 224, left : left + 224]) for photo in photos for top, left in corners
    ]
    pixels = torch.from_numpy(np.stack(crops[:count])).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(config.image_mean).view(1, 3, 1, 1), torch.tensor(config.image_std).view(1, 3, 1, 1)
    return (pixels - mean) / std


def test_clip_b16_targets_on_real_photos_agree_with_the_bf16_teacher():
    """The issue's bar, a mean cosine of 0.999 to the bf16 teacher's targets, on the default CLIP ViT-B/16
    architecture. Its weights here are random (no download in tests): the run re-measures the bar on its first
    batch with the real weights (`enable_fp8_teacher`)."""
    torch.manual_seed(0)
    config = CAEv2Config.from_preset("tiny", use_random_teacher=True)
    teacher = CAEv2ForPreTraining(config).teacher.to(torch.bfloat16)
    pixel_values = real_photo_crops(config, 2)
    reference = teacher(pixel_values)
    mean_cosine = enable_fp8_teacher(teacher, pixel_values)
    assert any(isinstance(module, Fp8Linear) for module in teacher.modules())
    assert mean_cosine >= 0.999
    cosine = F.cosine_similarity(teacher(pixel_values), reference, dim=-1)
    assert cosine.mean().item() == pytest.approx(mean_cosine, abs=1e-6)
