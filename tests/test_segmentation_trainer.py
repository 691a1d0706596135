"""Unit tests for caev2_hf.evaluation.segmentation.trainer: mmcv's poly schedule, sliding-window inference and the
Trainer's loss normalisation."""

import pytest
import torch
from conftest import build_tiny_upernet
from transformers import TrainingArguments

from caev2_hf.evaluation.segmentation.trainer import (
    SegmentationTrainer,
    poly_schedule_factor,
    predict_label_map,
    slide_inference,
)


def test_poly_schedule_with_linear_warmup_as_mmcv():
    # 1000 steps, 100 of warmup, power 1, warmup ratio 1e-6: warmup scales the poly value.
    assert poly_schedule_factor(0, 100, 1000) == pytest.approx(1e-6)
    assert poly_schedule_factor(50, 100, 1000) == pytest.approx((1 - 0.05) * (1e-6 + (1 - 1e-6) * 0.5))
    assert poly_schedule_factor(100, 100, 1000) == pytest.approx(0.9)
    assert poly_schedule_factor(550, 100, 1000) == pytest.approx(0.45)
    assert poly_schedule_factor(1000, 100, 1000) == 0.0
    assert poly_schedule_factor(500, 0, 1000, power=0.9) == pytest.approx(0.5**0.9)


def test_sliding_window_equals_whole_image_when_the_window_covers_it():
    torch.manual_seed(0)
    model = build_tiny_upernet().eval()
    pixel_values = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        whole = model(pixel_values).logits
        torch.testing.assert_close(slide_inference(model, pixel_values, 3, 48, 32, 8), whole)
        torch.testing.assert_close(slide_inference(model, pixel_values, 3, 64, 40, 8), whole)


class PixelwiseModel(torch.nn.Module):
    """Logits computed pixel by pixel: any tiling must give the whole image's result."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.nn.Conv2d(3, 4, kernel_size=1)

    def forward(self, pixel_values):
        return type("Output", (), {"logits": self.mix(pixel_values)})()


def test_overlapping_windows_average_to_the_whole_image_result():
    torch.manual_seed(0)
    model, pixel_values = PixelwiseModel(), torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        expected = model(pixel_values).logits
        # windows of 32 every 21 px: overlaps counted 1 to 4 times, and 50/70 are not multiples of the patch (8)
        torch.testing.assert_close(slide_inference(model, pixel_values, 4, 32, 21, 8), expected)
        labels = predict_label_map(model, pixel_values, (25, 35), 4, 32, 21, 8)
    assert labels.shape == (1, 25, 35)


def test_all_pixels_loss_is_the_valid_pixel_loss_times_the_valid_fraction(tmp_path):
    torch.manual_seed(0)
    model = build_tiny_upernet()
    labels = torch.randint(0, 3, (2, 32, 32))
    labels[:, :8] = 255  # a quarter ignored
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32), "labels": labels}
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainers = {
        mode: SegmentationTrainer(
            model=model, args=args, num_labels=3, crop_size=32, eval_stride=21, loss_normalization=mode
        )
        for mode in ("all_pixels", "valid_pixels")
    }
    model.eval()  # no dropout, BatchNorm in eval: both losses see the same logits
    with torch.no_grad():
        valid = trainers["valid_pixels"].compute_loss(model, inputs)
        every = trainers["all_pixels"].compute_loss(model, inputs)
    assert every == pytest.approx(0.75 * float(valid))
