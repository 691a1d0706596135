# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Training and evaluating UperNet with the transformers `Trainer`, as the authors' ADE20K protocol does
(docs/segmentation.md): the poly schedule, sliding-window inference, and a Trainer that normalises the loss as
mmsegmentation 0.11 and scores by confusion matrices."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer

from .metrics import count_confusion


# ---- Schedule


def poly_schedule_factor(
    step: int, num_warmup_steps: int, num_training_steps: int, power: float = 1.0, warmup_ratio: float = 1e-6
) -> float:
    """mmcv's `poly` policy with `linear` warmup: `(1 - step / total) ** power`, times `r + (1 - r) step / warmup`
    during warmup (warmup scales the poly value, it does not replace it); min_lr 0 as in the recipe."""
    factor = max(0.0, 1.0 - step / num_training_steps) ** power
    if step < num_warmup_steps:
        factor *= warmup_ratio + (1.0 - warmup_ratio) * step / num_warmup_steps
    return factor


def build_poly_schedule(
    optimizer: torch.optim.Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    power: float = 1.0,
    warmup_ratio: float = 1e-6,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The recipe's schedule as a `LambdaLR`, which scales each group's own lr (layer decay is kept)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: poly_schedule_factor(step, num_warmup_steps, num_training_steps, power, warmup_ratio),
    )


# ---- Inference


def _padded_logits(model: nn.Module, window: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Logits of a window whose sides need not be multiples of the patch: padded (bottom, right), then cropped."""
    height, width = window.shape[-2:]
    pad_h, pad_w = (-height) % patch_size, (-width) % patch_size
    if pad_h or pad_w:
        window = F.pad(window, (0, pad_w, 0, pad_h))
    return model(pixel_values=window).logits[..., :height, :width].float()


def slide_inference(
    model: nn.Module, pixel_values: torch.Tensor, num_labels: int, crop_size: int, stride: int, patch_size: int
) -> torch.Tensor:
    """mmsegmentation's sliding window: `crop_size` windows every `stride` pixels (the last flush with the border),
    logits averaged where windows overlap. `(batch, C, H, W)` logits for `(batch, 3, H, W)` images."""
    batch_size, _, height, width = pixel_values.shape
    rows = max(height - crop_size + stride - 1, 0) // stride + 1
    cols = max(width - crop_size + stride - 1, 0) // stride + 1
    logits = pixel_values.new_zeros((batch_size, num_labels, height, width), dtype=torch.float32)
    counts = pixel_values.new_zeros((1, 1, height, width), dtype=torch.float32)
    for row in range(rows):
        for col in range(cols):
            bottom, right = min(row * stride + crop_size, height), min(col * stride + crop_size, width)
            top, left = max(bottom - crop_size, 0), max(right - crop_size, 0)
            window = pixel_values[..., top:bottom, left:right]
            logits[..., top:bottom, left:right] += _padded_logits(model, window, patch_size)
            counts[..., top:bottom, left:right] += 1
    return logits / counts


def predict_label_map(
    model: nn.Module,
    pixel_values: torch.Tensor,
    output_size: tuple[int, int],
    num_labels: int,
    crop_size: int,
    stride: int,
    patch_size: int,
    mode: str = "slide",
) -> torch.Tensor:
    """Class per pixel `(batch, *output_size)`: logits by sliding window (or the whole image), resized bilinearly to
    `output_size` (the original image's), then the argmax, as mmsegmentation scores."""
    if mode == "slide":
        logits = slide_inference(model, pixel_values, num_labels, crop_size, stride, patch_size)
    else:
        logits = _padded_logits(model, pixel_values, patch_size)
    if tuple(logits.shape[-2:]) != tuple(output_size):
        logits = F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)


# ---- The Trainer


class SegmentationTrainer(Trainer):
    """A Trainer with the authors' loss normalisation, and evaluation by sliding window into confusion matrices.

    - `loss_normalization="all_pixels"` (mmsegmentation 0.11, the authors' version): the summed per-pixel loss over
      every pixel of the batch, ignored ones counting 0; `"valid_pixels"`: transformers' UperNet mean over the pixels
      not ignored. The model's own loss (decode + 0.4 x auxiliary) is rescaled, so DDP sees a plain forward.
    - Evaluation returns one `(num_labels, num_labels)` confusion matrix per image (see `MeanIoUAccumulator`): a full
      ADE20K validation never holds logits or label maps for more than one batch.
    """

    def __init__(
        self,
        *args,
        num_labels: int,
        crop_size: int,
        eval_stride: int,
        eval_mode: str = "slide",
        loss_normalization: str = "all_pixels",
        ignore_index: int = 255,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.num_labels, self.crop_size, self.eval_stride, self.eval_mode = (
            num_labels,
            crop_size,
            eval_stride,
            eval_mode,
        )
        self.loss_normalization, self.ignore_index = loss_normalization, ignore_index
        # UperNet's forward takes **kwargs but returns a mean loss: the Trainer must divide it for accumulation.
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(pixel_values=inputs["pixel_values"], labels=inputs["labels"])
        loss = outputs.loss
        if self.loss_normalization == "all_pixels":
            labels = inputs["labels"]
            loss = loss * (labels != self.ignore_index).sum() / labels.numel()
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        patch_size = self.accelerator.unwrap_model(model).config.backbone_config.patch_size
        confusions = []
        with torch.no_grad(), self.autocast_smart_context_manager():
            for pixel_values, labels in zip(inputs["pixel_values"], inputs["labels"], strict=True):
                prediction = predict_label_map(
                    model, pixel_values[None], labels.shape, self.num_labels, self.crop_size, self.eval_stride,
                    patch_size, self.eval_mode,
                )[0]  # fmt: skip
                confusions.append(count_confusion(prediction, labels, self.num_labels, self.ignore_index))
        confusions = torch.stack(confusions)
        return None, confusions, torch.zeros(len(confusions), device=confusions.device)
