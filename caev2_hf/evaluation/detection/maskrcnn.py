# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Mask R-CNN on a CAE v2 encoder from pip-installable parts: torchvision's detector (RoIAlign and NMS ship compiled
in its wheel) around `CAEv2Backbone`, with the authors' mmdetection settings where torchvision can take them
(docs/detection.md#mask-r-cnn). The model and the 1x step schedule; its layer-decay AdamW is
`caev2_hf.optim.build_layer_decay_optimizer`, whose layer rule reads torchvision's `backbone.body.` names."""

import json
import os
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection._utils import BoxCoder  # the coder of every torchvision detector, not exported
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, generalized_box_iou_loss, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME, cached_file, logging

from ...configuration_caev2 import CAEv2Config
from ...files import write_json
from ...modeling_caev2_backbone import CAEv2Backbone


logger = logging.get_logger(__name__)

FEATURE_STRIDES = (4, 8, 16, 32)  # the backbone neck's maps; the FPN adds a max-pooled stride 64 ("pool")
FEATURE_NAMES = ("0", "1", "2", "3")  # the FPN's names for them, which the RoI poolers read
BOX_LOSSES = ("giou", "smooth_l1")
# The authors' 1x multi-scale training: shorter side drawn from 480, 512, ..., 800, longer side at most 1333;
# evaluation at 800 (torchvision's transform evaluates at the last `min_size`).
TRAIN_MIN_SIZES = tuple(range(480, 801, 32))
MAX_SIZE = 1333
NEW_ENCODER_KEYS = ("fpn", "relative_position_bias_table")  # backbone tensors no encoder checkpoint holds


# ---- The backbone with its feature pyramid


class CAEv2FeaturePyramid(nn.Module):
    """`CAEv2Backbone`'s four neck maps (strides 4, 8, 16, 32) through torchvision's FPN, plus the stride-64 level
    that subsamples the coarsest output: the authors' `VisionTransformer(with_fpn=True)` followed by mmdet's
    `FPN(out_channels=256, num_outs=5)`. Named as torchvision's `BackboneWithFPN` (`body`, `fpn`)."""

    def __init__(self, encoder: CAEv2Backbone, out_channels: int = 256) -> None:
        super().__init__()
        self.body = encoder
        hidden_size = encoder.config.hidden_size
        self.fpn = FeaturePyramidNetwork([hidden_size] * 4, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, pixel_values: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feature_maps = self.body(pixel_values, return_dict=True).feature_maps
        pyramid = self.fpn(OrderedDict(zip(FEATURE_NAMES, feature_maps, strict=True)))
        # float32 maps: torchvision's anchors take their dtype, and bf16 rounds coordinates near 1000 px to 4 px
        return OrderedDict((name, feature.float()) for name, feature in pyramid.items())


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """mmdet's `SingleRoIExtractor` with mmcv's RoIAlign: a box of side `s = sqrt(w h)` is pooled from the level
    `floor(log2(s / 56))` (clamped to the pyramid), with pixel centres at +0.5 (`aligned=True`, mmcv's default,
    which torchvision's `MultiScaleRoIAlign` cannot select) and adaptive sampling (`sampling_ratio=0`). The level
    rule is torchvision's; the strides are the backbone's, known in advance."""

    def __init__(
        self,
        output_size: int,
        strides: Sequence[int] = FEATURE_STRIDES,
        sampling_ratio: int = 0,
        aligned: bool = True,
        finest_scale: int = 56,
    ) -> None:
        super().__init__(list(FEATURE_NAMES[: len(strides)]), output_size, sampling_ratio)
        self.strides = tuple(strides)
        self.aligned = aligned
        self.finest_scale = finest_scale

    def level_of(self, boxes: torch.Tensor) -> torch.Tensor:
        """Pyramid level index of each `(x1, y1, x2, y2)` box."""
        side = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        return torch.floor(torch.log2(side / self.finest_scale + 1e-6)).clamp(0, len(self.strides) - 1).long()

    def forward(
        self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        features = [x[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([box.new_full((len(box), 1), i), box], dim=1) for i, box in enumerate(boxes)])
        levels = self.level_of(rois[:, 1:])
        pooled = features[0].new_zeros(len(rois), features[0].shape[1], *self.output_size)
        for level, (feature, stride) in enumerate(zip(features, self.strides, strict=True)):
            index = torch.where(levels == level)[0]
            pooled[index] = roi_align(
                feature, rois[index], self.output_size, 1.0 / stride, self.sampling_ratio, self.aligned
            ).to(pooled.dtype)
        return pooled


# ---- The heads


class Float32BoxCoder(BoxCoder):
    """torchvision's box coder, decoding in float32: under bf16 autocast the deltas come in bf16, and torchvision
    would cast the reference boxes down to them, rounding coordinates near 1000 px to multiples of 4."""

    def decode_single(self, rel_codes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return super().decode_single(rel_codes.float(), boxes.float())


class CAEv2RoIHeads(RoIHeads):
    """torchvision's box and mask heads, trained with the authors' box loss when `box_loss="giou"`: `10 (1 - GIoU)`
    between the decoded box of each positive RoI's class and its ground-truth box, summed over positives and divided
    by all sampled RoIs (mmdet's `GIoULoss(loss_weight=10)` with `reg_decoded_bbox=True`). `"smooth_l1"` keeps
    torchvision's loss on the encoded deltas. Sampling, the class and mask losses, and inference are torchvision's.
    """

    def __init__(self, *args, box_loss: str = "giou", giou_loss_weight: float = 10.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.box_loss = box_loss
        self.giou_loss_weight = giou_loss_weight

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if not self.training or self.box_loss == "smooth_l1":
            return super().forward(features, proposals, image_shapes, targets)
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        losses = {
            "loss_classifier": F.cross_entropy(class_logits, torch.cat(labels)),
            "loss_box_reg": self.giou_box_loss(box_regression, proposals, labels, regression_targets),
            "loss_mask": self.mask_loss(features, proposals, image_shapes, targets, labels, matched_idxs),
        }
        return [], losses

    def giou_box_loss(
        self,
        box_regression: torch.Tensor,
        proposals: list[torch.Tensor],
        labels: list[torch.Tensor],
        regression_targets: list[torch.Tensor],
    ) -> torch.Tensor:
        """The GIoU loss of the sampled RoIs; the matched ground-truth boxes are decoded back from torchvision's
        regression targets (exact up to rounding), which also covers images without objects."""
        labels, proposals = torch.cat(labels), torch.cat(proposals)
        positive = torch.where(labels > 0)[0]
        deltas = box_regression.reshape(len(labels), -1, 4)[positive, labels[positive]]
        predicted = self.box_coder.decode_single(deltas, proposals[positive])
        matched = self.box_coder.decode_single(torch.cat(regression_targets)[positive], proposals[positive])
        loss = generalized_box_iou_loss(predicted, matched, reduction="sum")
        return self.giou_loss_weight * loss / labels.numel()

    def mask_loss(self, features, proposals, image_shapes, targets, labels, matched_idxs) -> torch.Tensor:
        """torchvision's mask loss on the positive RoIs, as its own `forward` computes it."""
        positives = [torch.where(image_labels > 0)[0] for image_labels in labels]
        mask_proposals = [boxes[index] for boxes, index in zip(proposals, positives, strict=True)]
        mask_features = self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes))
        return maskrcnn_loss(
            self.mask_predictor(mask_features),
            mask_proposals,
            [target["masks"] for target in targets],
            [target["labels"] for target in targets],
            [matched[index] for matched, index in zip(matched_idxs, positives, strict=True)],
        )


# ---- The detector


class CAEv2MaskRCNN(MaskRCNN):
    r"""
    torchvision's `MaskRCNN` on a CAE v2 encoder: `CAEv2Backbone` (its 4-scale neck) -> FPN with a stride-64 level ->
    RPN (anchors 32 to 512, ratios 0.5, 1, 2) -> RoI heads (box head of 4 convolutions with BatchNorm and one
    1024-wide layer, mask head of 4 convolutions), as the authors' `mask_rcnn_vit_fpn` with their
    `giou_4conv1f` box head; `fpn_channels` (256) sets the FPN and head widths and `box_batch_size_per_image`
    (512) the RoIs sampled per training image, both smaller only for tests and demos. Build it with
    `build_mask_rcnn`; save it with `write_mask_rcnn_config` beside its weights, reload it with `load_mask_rcnn`.

    `forward(images, targets=None)` is torchvision's: a list of `(3, H, W)` float images in [0, 1] of any sizes
    (resized so the shorter side is a `min_size`, normalised with the encoder's mean and std, padded to a multiple of
    32 into one batch) and, in training, one dict per image with `boxes` (`(N, 4)` float, absolute `x1, y1, x2, y2`),
    `labels` (`(N,)` int64 in `1..num_classes - 1`; 0 is the background) and `masks` (`(N, H, W)` uint8). Training
    returns the five losses; evaluation returns per image `boxes`, `labels`, `scores` and `masks` (`(N, 1, H, W)`
    probabilities at the image's own size).
    """

    def __init__(
        self,
        encoder: CAEv2Backbone,
        num_classes: int,
        min_size: Sequence[int] = TRAIN_MIN_SIZES,
        max_size: int = MAX_SIZE,
        box_loss: str = "giou",
        fpn_channels: int = 256,
        box_batch_size_per_image: int = 512,
    ) -> None:
        check_detector_settings(num_classes, min_size, max_size, box_loss, encoder.config.out_indices)
        width = fpn_channels
        heads = {
            "box_roi_pool": AlignedMultiScaleRoIAlign(7),
            "box_head": FastRCNNConvFCHead((width, 7, 7), [width] * 4, [1024], norm_layer=nn.BatchNorm2d),
            "box_predictor": FastRCNNPredictor(1024, num_classes),
            "mask_roi_pool": AlignedMultiScaleRoIAlign(14),
            "mask_head": MaskRCNNHeads(width, [width] * 4, 1),
            "mask_predictor": MaskRCNNPredictor(width, width, num_classes),
        }
        super().__init__(
            CAEv2FeaturePyramid(encoder, width),
            min_size=tuple(min_size),
            max_size=max_size,
            image_mean=list(encoder.config.image_mean),
            image_std=list(encoder.config.image_std),
            size_divisible=max(FEATURE_STRIDES[-1], encoder.config.patch_size),
            rpn_anchor_generator=AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5),
            **heads,
        )
        # The same heads in RoI heads that can train with the GIoU loss; the authors' sampling and test settings.
        self.roi_heads = CAEv2RoIHeads(
            **heads,
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            batch_size_per_image=box_batch_size_per_image,
            positive_fraction=0.25,
            bbox_reg_weights=None,  # (10, 10, 5, 5); the coder is replaced below
            score_thresh=0.05,
            nms_thresh=0.5,
            detections_per_img=100,
            box_loss=box_loss,
        )
        self.rpn.box_coder = Float32BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.roi_heads.box_coder = Float32BoxCoder((10.0, 10.0, 5.0, 5.0))  # mmdet's target_stds (0.1, 0.1, 0.2, 0.2)
        # What `write_mask_rcnn_config` saves and `load_mask_rcnn` rebuilds the detector from, beside the encoder's.
        self.settings = {
            "num_classes": num_classes, "min_size": list(min_size), "max_size": max_size, "box_loss": box_loss,
            "fpn_channels": fpn_channels, "box_batch_size_per_image": box_batch_size_per_image,
        }  # fmt: skip

    @property
    def encoder(self) -> CAEv2Backbone:
        return self.backbone.body


def check_detector_settings(
    num_classes: int, min_size: Sequence[int], max_size: int, box_loss: str, out_indices: Sequence[int] | None
) -> None:
    """Refuse a detector geometry that cannot work, in one line that names the value and the fix."""
    smallest = FEATURE_STRIDES[-1]
    if num_classes < 2:
        raise ValueError(
            f"num_classes={num_classes} counts the background class 0 too: give the object classes + 1 (81 for COCO)."
        )
    if not min_size or min(min_size) < smallest:
        raise ValueError(
            f"min_size={list(min_size)}: every shorter side must be at least {smallest} px (the coarsest neck "
            f"stride), e.g. the authors' {list(TRAIN_MIN_SIZES)}."
        )
    if max_size < max(min_size):
        raise ValueError(f"max_size={max_size} is below the largest min_size {max(min_size)}: raise it (e.g. 1333).")
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"box_loss={box_loss!r}: choose one of {BOX_LOSSES} (the authors: 'giou').")
    if out_indices is not None and len(out_indices) != len(FEATURE_STRIDES):
        raise ValueError(
            f"out_indices={list(out_indices)}: the neck needs 4 encoder stages, e.g. [4, 6, 8, 12] for 12 "
            "blocks (the authors' 0-based 3, 5, 7, 11)."
        )


# ---- Building from an encoder folder


def load_encoder(
    encoder: str | os.PathLike | CAEv2Config,
    drop_path_rate: float,
    relative_position_bias: bool,
    out_indices: Sequence[int] | None,
    image_size: int,
) -> tuple[CAEv2Backbone, str]:
    """The detection backbone and a line for the log saying where its weights come from.

    `encoder` is a folder (or Hub id) of any CAE v2 checkpoint, whose encoder must fill the backbone exactly (the
    neck and any relative position bias tables start fresh; the final LayerNorm and pretraining modules are left
    out), or a `CAEv2Config` for a randomly initialised encoder.
    """
    if isinstance(encoder, CAEv2Config):
        config_dict = encoder.to_dict()
    else:
        config_dict, _ = CAEv2Config.get_config_dict(encoder)
        if config_dict.get("model_type") != CAEv2Config.model_type:
            raise ValueError(
                f"{encoder} holds a {config_dict.get('model_type')!r} model, not CAE v2: give a CAE v2 checkpoint "
                "folder (e.g. a pretraining final/)."
            )
    stages = ("out_features", "out_indices", "stage_names")  # derived again from out_indices
    config = CAEv2Config.from_dict(
        {key: value for key, value in config_dict.items() if key not in stages},
        drop_path_rate=drop_path_rate,
        backbone_relative_position_bias=relative_position_bias,
        backbone_position_table="interpolate",
        backbone_add_fpn=True,
        out_indices=list(out_indices) if out_indices is not None else None,
    )
    # The bias tables' window (offsets read exactly inside it, from a resized table beyond): the largest side trained.
    config.backbone_image_size = image_size // config.patch_size * config.patch_size
    if isinstance(encoder, CAEv2Config):
        return CAEv2Backbone(config), "Encoder: RANDOMLY INITIALISED (a config, no checkpoint, was given)."
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # transformers' table of the new neck tensors: the line below says it, and checks
    try:
        backbone, info = CAEv2Backbone.from_pretrained(encoder, config=config, output_loading_info=True)
    finally:
        logging.set_verbosity(verbosity)
    return backbone, describe_encoder_loading(str(encoder), backbone, info)


def describe_encoder_loading(source: str, backbone: CAEv2Backbone, info: dict) -> str:
    """Refuse a checkpoint that leaves an encoder tensor unfilled or brings unknown ones; otherwise say what loaded."""
    missing = sorted(info.get("missing_keys", ()))
    new = [key for key in missing if any(part in key for part in NEW_ENCODER_KEYS)]
    problems = {
        "missing": [key for key in missing if key not in new],
        "unexpected": sorted(info.get("unexpected_keys", ())),
        "mismatched": sorted(str(key) for key in info.get("mismatched_keys", ())),
    }
    if any(problems.values()):
        found = "; ".join(f"{kind}: {keys[:4]}" for kind, keys in problems.items() if keys)
        raise ValueError(
            f"{source} does not fill the CAE v2 encoder ({found}): give a CAE v2 checkpoint folder (a pretraining "
            "final/, a converted official checkpoint) or its Hub id."
        )
    loaded = len(backbone.state_dict()) - len(new)
    tables = sum("relative_position_bias_table" in key for key in new)
    fresh = [f"the neck ({len(new) - tables} tensors)"] + [f"{tables} relative position bias tables"] * bool(tables)
    return (
        f"Encoder weights from {source}: all {loaded} encoder tensors loaded (patch embedding, [CLS], "
        f"{backbone.config.num_hidden_layers} blocks). New, trained from scratch: {', '.join(fresh)}, the FPN, RPN "
        "and RoI heads. Not used: the final LayerNorm and any pretraining-only modules."
    )


def build_mask_rcnn(
    encoder: str | os.PathLike | CAEv2Config,
    num_classes: int,
    min_size: Sequence[int] = TRAIN_MIN_SIZES,
    max_size: int = MAX_SIZE,
    drop_path_rate: float = 0.1,
    relative_position_bias: bool = False,
    out_indices: Sequence[int] | None = None,
    box_loss: str = "giou",
    fpn_channels: int = 256,
    box_batch_size_per_image: int = 512,
) -> CAEv2MaskRCNN:
    """Mask R-CNN on a CAE v2 encoder (a checkpoint folder or Hub id, or a `CAEv2Config` for a random one).

    Args:
        encoder: Folder or Hub id of any CAE v2 checkpoint (its encoder fills the backbone; logged), or a config.
        num_classes: Object classes + 1, torchvision's count (81 for COCO's 80); labels run from 1, 0 is background.
        min_size: Shorter sides drawn per training image; evaluation uses the last (the authors: 480 to 800 by 32).
        max_size: Cap on the longer side (1333).
        drop_path_rate: Stochastic depth at the last block, linear from 0 (the authors: 0.1 ViT-S, 0.2 ViT-B).
        relative_position_bias: Per-block relative position bias, zero at init (off in the authors' detection).
        out_indices: The 4 encoder stages the neck reads (1-based blocks; default blocks L/3, L/2, 2L/3, L).
        box_loss: `"giou"` (the authors') or `"smooth_l1"` (torchvision's).
        fpn_channels: Width of the FPN and of the box and mask heads' convolutions (256; smaller for tests).
        box_batch_size_per_image: RoIs sampled per training image for the box and mask heads (the authors: 512).
    """
    check_detector_settings(num_classes, min_size, max_size, box_loss, out_indices)
    backbone, message = load_encoder(encoder, drop_path_rate, relative_position_bias, out_indices, max(min_size))
    logger.info(message)
    return CAEv2MaskRCNN(backbone, num_classes, min_size, max_size, box_loss, fpn_channels, box_batch_size_per_image)


# ---- A trained detector's folder

MASK_RCNN_KEY = "mask_rcnn"  # the detector's settings and class names in its config.json


def write_mask_rcnn_config(model: CAEv2MaskRCNN, folder: str | os.PathLike, class_names: Sequence[str]) -> str:
    """`config.json` of a detector folder, whose `model.safetensors` holds the detector's state dict: the encoder's
    `CAEv2Config` as the backbone was built, plus the detector's settings and its class names (model label `i + 1`
    is `class_names[i]`) under `mask_rcnn`. Written whole or not at all."""
    content = {
        **model.encoder.config.to_dict(),
        "architectures": [type(model).__name__],
        MASK_RCNN_KEY: {**model.settings, "class_names": list(class_names)},
    }
    return write_json(os.path.join(folder, CONFIG_NAME), content, indent=2, sort_keys=True)


def is_mask_rcnn_folder(path: str | os.PathLike) -> bool:
    config = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(config):
        return False
    with open(config, encoding="utf-8") as file:
        return MASK_RCNN_KEY in json.load(file)


def load_mask_rcnn(folder: str | os.PathLike) -> tuple[CAEv2MaskRCNN, list[str]]:
    """The detector of a folder `write_mask_rcnn_config` described (a local folder or a Hub id), in evaluation mode,
    and its class names. Every tensor must load."""
    with open(cached_file(str(folder), CONFIG_NAME), encoding="utf-8") as file:
        content = json.load(file)
    settings = content.pop(MASK_RCNN_KEY, None)
    if settings is None:
        raise ValueError(
            f"{folder} holds no Mask R-CNN (its config.json has no '{MASK_RCNN_KEY}' entry): give a folder that "
            "run_instance_segmentation.py wrote."
        )
    class_names = settings.pop("class_names")
    model = CAEv2MaskRCNN(CAEv2Backbone(CAEv2Config.from_dict(content)), **settings)
    model.load_state_dict(load_file(cached_file(str(folder), SAFE_WEIGHTS_NAME)))
    return model.eval(), class_names


# ---- The 1x schedule


def build_step_schedule(
    optimizer: torch.optim.Optimizer,
    num_warmup_steps: int,
    milestones: Sequence[int],
    gamma: float = 0.1,
    warmup_ratio: float = 0.001,
) -> torch.optim.lr_scheduler.LRScheduler:
    """mmcv's `step` policy with `linear` warmup, per optimizer step: each group's lr times `gamma` at each milestone
    and, during the first `num_warmup_steps`, also times `r + (1 - r) step / warmup` (the two multiply, as in mmcv).
    Milestones are optimizer steps: the authors' are the starts of epochs 9 and 11 (0-based) of 12."""
    decay = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma)
    if not num_warmup_steps:
        return decay
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, warmup_ratio, 1.0, num_warmup_steps)
    return torch.optim.lr_scheduler.ChainedScheduler([warmup, decay], optimizer)
