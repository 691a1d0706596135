# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Semantic segmentation with UperNet on a CAE v2 backbone through the transformers `Trainer`: the authors' ADE20K
protocol (docs/segmentation.md). Model building from an encoder folder, layer-decay AdamW, the poly schedule,
sliding-window evaluation and mIoU."""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    SegformerImageProcessor,
    Trainer,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)
from transformers.utils import logging

from caev2_hf_cli.errors import UserError

from ..configuration_caev2 import CAEV2_PRESETS, CAEv2Config
from ..modeling_caev2_backbone import CAEv2Backbone
from ..optim import build_parameter_groups
from .segmentation_metrics import count_confusion


logger = logging.get_logger(__name__)

NEW_BACKBONE_KEYS = ("fpn", "relative_position_bias_table")  # what an encoder checkpoint cannot hold


# ---- The model


def build_random_encoder_config(preset: str, overrides: dict | None) -> CAEv2Config:
    """A randomly initialised encoder's config (the demo without its pretraining output)."""
    if preset not in CAEV2_PRESETS:
        raise UserError(f"model_preset={preset!r}: choose one of {sorted(CAEV2_PRESETS)}.")
    try:
        return CAEv2Config.from_preset(preset, **(overrides or {}))
    except ValueError as error:
        raise UserError(f"--config_overrides: {error}") from error


def describe_encoder_loading(source: str, backbone: CAEv2Backbone, loading_info: dict) -> str:
    """One log line saying that every encoder tensor loaded and which modules start fresh; refuses a checkpoint that
    leaves an encoder tensor missing or brings tensors the backbone does not know."""
    missing = sorted(loading_info.get("missing_keys", ()))
    unexpected = sorted(loading_info.get("unexpected_keys", ()))
    mismatched = sorted(loading_info.get("mismatched_keys", ()))
    encoder_missing = [key for key in missing if not any(part in key for part in NEW_BACKBONE_KEYS)]
    if encoder_missing or unexpected or mismatched:
        problems = {"missing": encoder_missing, "unexpected": unexpected, "mismatched": mismatched}
        found = "; ".join(f"{kind}: {keys[:4]}" for kind, keys in problems.items() if keys)
        raise UserError(
            f"{source} does not fill the CAE v2 encoder ({found}): give a CAE v2 checkpoint (a pretraining final/ "
            "folder, a converted official checkpoint, or a Hub id of one)."
        )
    state = backbone.state_dict()
    loaded = [key for key in state if key not in set(missing)]
    neck = [key for key in missing if key.startswith("fpn")]
    tables = [key for key in missing if "relative_position_bias_table" in key]
    return (
        f"Encoder weights from {source}: all {len(loaded)} encoder tensors loaded (patch embedding, [CLS], "
        f"{backbone.config.num_hidden_layers} blocks), none missing or unexpected. New, trained from scratch: "
        "the neck "
        f"({len(neck)} tensors), {len(tables)} relative position bias tables and the UperNet heads. Not used: the "
        "final LayerNorm and any pretraining-only modules (regressor, head)."
    )


def load_segmentation_model(
    model_name_or_path: str | None,
    num_labels: int,
    id2label: dict[int, str],
    crop_size: int,
    drop_path_rate: float = 0.1,
    out_indices: Sequence[int] | None = None,
    decoder_channels: int | None = None,
    auxiliary_channels: int = 256,
    auxiliary_loss_weight: float = 0.4,
    relative_position_bias: bool = True,
    position_table: str = "interpolate",
    ignore_index: int = 255,
    random_encoder_config: CAEv2Config | None = None,
) -> tuple[UperNetForSemanticSegmentation, str]:
    """UperNet on a CAE v2 backbone, and a line for the log saying where its weights come from.

    `model_name_or_path` is a CAE v2 checkpoint of any head (its encoder fills the backbone: see
    `describe_encoder_loading`) or a saved UperNet folder (reloaded whole, e.g. to evaluate it). Without one,
    `random_encoder_config` gives a randomly initialised encoder.
    """
    label2id = {name: index for index, name in id2label.items()}
    if model_name_or_path is not None:
        source_config = AutoConfig.from_pretrained(model_name_or_path)
        if source_config.model_type == "upernet":
            if source_config.num_labels != num_labels:
                raise UserError(
                    f"The UperNet at {model_name_or_path} has {source_config.num_labels} classes but the data has "
                    f"{num_labels}: start from its encoder folder instead, or fix num_labels."
                )
            model = UperNetForSemanticSegmentation.from_pretrained(model_name_or_path)
            return model, f"Whole UperNet model (backbone, neck and heads) reloaded from {model_name_or_path}."
        if source_config.model_type != CAEv2Config.model_type:
            raise UserError(
                f"{model_name_or_path} holds a {source_config.model_type!r} model, not CAE v2: give a CAE v2 "
                "checkpoint (e.g. a pretraining final/ folder) or a saved UperNet folder."
            )
    backbone_fields = {
        "drop_path_rate": drop_path_rate,
        "backbone_image_size": crop_size,
        "backbone_relative_position_bias": relative_position_bias,
        "backbone_position_table": position_table,
        "backbone_add_fpn": True,
    }
    if out_indices is not None:
        backbone_fields["out_indices"] = list(out_indices)
    if model_name_or_path is not None:
        backbone_config = CAEv2Config.from_pretrained(model_name_or_path, **backbone_fields)
    else:
        stages = ("out_features", "stage_names")  # follow out_indices, which --out_indices may replace
        fields = {key: value for key, value in random_encoder_config.to_dict().items() if key not in stages}
        backbone_config = CAEv2Config(**{**fields, **backbone_fields})
    if crop_size % backbone_config.patch_size:
        raise UserError(
            f"crop_size={crop_size} is not a multiple of the patch size {backbone_config.patch_size}: use e.g. "
            f"{crop_size // backbone_config.patch_size * backbone_config.patch_size}."
        )
    upernet_config = UperNetConfig(
        backbone_config=backbone_config,
        hidden_size=decoder_channels or backbone_config.hidden_size,
        use_auxiliary_head=True,
        auxiliary_loss_weight=auxiliary_loss_weight,
        auxiliary_channels=auxiliary_channels,
        loss_ignore_index=ignore_index,
        num_labels=num_labels,
        id2label=id2label,
        label2id=label2id,
    )
    model = UperNetForSemanticSegmentation(upernet_config)
    if model_name_or_path is None:
        return model, (
            "Encoder: RANDOMLY INITIALISED (no pretrained encoder given or found); the mIoU measures the pipeline, "
            "not CAE v2 pretraining."
        )
    backbone, loading_info = CAEv2Backbone.from_pretrained(
        model_name_or_path, config=backbone_config, output_loading_info=True
    )
    message = describe_encoder_loading(model_name_or_path, backbone, loading_info)
    model.backbone = backbone
    model.config.backbone_config = backbone.config
    return model, message


def add_classifier_dropout(model: UperNetForSemanticSegmentation, probability: float) -> None:
    """Dropout2d before both classifiers in training, as mmsegmentation's decode heads (`dropout_ratio=0.1`);
    transformers' UperNet has none. A forward pre-hook: the saved model is unchanged."""
    if probability <= 0:
        return

    def dropout(module: nn.Module, args: tuple) -> tuple:
        return (F.dropout2d(args[0], probability, module.training),)

    for head in (model.decode_head, model.auxiliary_head):
        if head is not None:
            head.classifier.register_forward_pre_hook(dropout)


def build_image_processor(
    model: UperNetForSemanticSegmentation, crop_size: int, reduce_labels: bool
) -> SegformerImageProcessor:
    """What `pipeline("image-segmentation")` needs beside the model: resize to the crop, normalise with the encoder's
    statistics; its `post_process_semantic_segmentation` resizes the logits back to the image."""
    backbone_config = model.config.backbone_config
    return SegformerImageProcessor(
        do_resize=True,
        size={"height": crop_size, "width": crop_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(backbone_config.image_mean),
        image_std=list(backbone_config.image_std),
        do_reduce_labels=reduce_labels,
    )


# ---- Optimisation


def build_segmentation_optimizer(
    model: UperNetForSemanticSegmentation,
    learning_rate: float,
    weight_decay: float,
    layer_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW with the authors' `LayerDecayOptimizerConstructor` groups: lr x `layer_decay ** (L + 1 - depth)` with
    depth 0 for the embeddings, i + 1 for block i (its relative position bias included), L + 1 for the neck and the
    heads; weight decay on every tensor of 2 or more dimensions ([CLS] and the bias tables included: the authors'
    exemption list never matches their prefixed names), none on biases and norms."""
    num_layers = model.config.backbone_config.num_hidden_layers
    heads = nn.ModuleDict({name: child for name, child in model.named_children() if name != "backbone"})
    groups: dict[tuple[float, float], dict] = {}
    for prefix, module, decay in (("backbone.", model.backbone, layer_decay), ("", heads, None)):
        for group in build_parameter_groups(module, weight_decay, decay, num_layers if decay else None):
            merged = groups.setdefault(
                (group["weight_decay"], group["lr_scale"]),
                {"params": [], "names": [], "weight_decay": group["weight_decay"], "lr_scale": group["lr_scale"]},
            )
            merged["params"] += group["params"]
            merged["names"] += [prefix + name for name in group["names"]]
    for group in groups.values():
        group["lr"] = learning_rate * group["lr_scale"]
    return torch.optim.AdamW(list(groups.values()), lr=learning_rate, betas=betas, eps=eps)


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


def compute_training_steps(num_examples: int, num_train_epochs: float, batch_size_per_step: int) -> int:
    """Optimizer steps for `num_train_epochs` (the recipe counts iterations: 160k at batch 16)."""
    return max(1, math.floor(num_train_epochs * num_examples / batch_size_per_step))
