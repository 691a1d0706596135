# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""UperNet on a CAE v2 backbone (docs/segmentation.md): built from an encoder folder, a saved UperNet or a random
encoder, with the authors' classifier dropout and the image processor that `pipeline("image-segmentation")` needs."""

from collections.abc import Sequence

import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, SegformerImageProcessor, UperNetForSemanticSegmentation

from caev2_hf_cli.errors import UserError

from ...configuration_caev2 import CAEV2_PRESETS, CAEv2Config, CAEv2UperNetConfig
from ...modeling_caev2_backbone import CAEv2Backbone, CAEv2UperNetForSemanticSegmentation


NEW_BACKBONE_KEYS = ("fpn", "relative_position_bias_table")  # what an encoder checkpoint cannot hold


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
) -> tuple[CAEv2UperNetForSemanticSegmentation, str]:
    """UperNet on a CAE v2 backbone, and a line for the log saying where its weights come from. The model is
    `CAEv2UperNetForSemanticSegmentation`, whose saved folder loads with `trust_remote_code=True` without the package.

    `model_name_or_path` is a CAE v2 checkpoint of any head (its encoder fills the backbone: see
    `describe_encoder_loading`) or a saved UperNet folder (reloaded whole, e.g. to evaluate it). Without one,
    `random_encoder_config` gives a randomly initialised encoder.
    """
    label2id = {name: index for index, name in id2label.items()}
    if model_name_or_path is not None:
        source_config = AutoConfig.from_pretrained(model_name_or_path)
        if source_config.model_type == "upernet":
            if source_config.backbone_config.model_type != CAEv2Config.model_type:
                raise UserError(
                    f"The UperNet at {model_name_or_path} has a {source_config.backbone_config.model_type!r} "
                    "backbone, not CAE v2: give a CAE v2 checkpoint or a UperNet folder this script saved."
                )
            if source_config.num_labels != num_labels:
                raise UserError(
                    f"The UperNet at {model_name_or_path} has {source_config.num_labels} classes but the data has "
                    f"{num_labels}: start from its encoder folder instead, or fix num_labels."
                )
            model = CAEv2UperNetForSemanticSegmentation.from_pretrained(model_name_or_path)
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
    upernet_config = CAEv2UperNetConfig(
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
    model = CAEv2UperNetForSemanticSegmentation(upernet_config)
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


def build_segmentation_image_processor(
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
