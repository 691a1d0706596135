# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Arguments of `run_semantic_segmentation.py` (beside transformers' `TrainingArguments`), checked on creation so a
mistake ends in one line naming the field and the fix (a `UserError`)."""

import os
from dataclasses import dataclass, field

from .checks import check_decay, check_model_path, check_positive, check_preset, check_rate, parse_json_mapping
from .errors import UserError
from .parsing import ALTERNATIVES, MERGED_MAPPING, PART_OF


LOSS_NORMALIZATIONS = ("all_pixels", "valid_pixels")
EVAL_MODES = ("slide", "whole")
POSITION_TABLES = ("interpolate", "exact")
DEMO_CLASS_NAMES = ("background", "disk", "square", "triangle")


@dataclass
class SegmentationModelArguments:
    model: str | None = field(
        default=None,
        metadata={
            "help": "CAE v2 checkpoint (Hub id or folder, any head: a pretraining final/ folder, a converted official "
            "checkpoint) whose encoder becomes the backbone, or a saved UperNet folder to continue or evaluate."
        },
    )
    random_encoder_if_missing: bool = field(
        default=False,
        metadata={
            "help": "If --model is not an existing folder, use a randomly initialised encoder of --model_preset / "
            "--config_overrides instead of failing (the offline demo)."
        },
    )
    model_preset: str = field(default="tiny", metadata={"help": "Random encoder's preset: tiny, small, base, large."})
    config_overrides: dict | str | None = field(
        default=None,
        metadata={
            "help": "Random encoder's CAEv2Config fields (a mapping in YAML, JSON on the command line, where its keys "
            "replace those of the config file's mapping and keep the others).",
            MERGED_MAPPING: True,
        },
    )
    layer_decay: float = field(default=0.65, metadata={"help": "lr x layer_decay per block from the heads down."})
    drop_path_rate: float = field(default=0.1, metadata={"help": "Stochastic depth at the last block."})
    out_indices: list[int] | None = field(
        default=None,
        metadata={"help": "Backbone stages for the neck (1-based blocks); default blocks L/3, L/2, 2L/3, L."},
    )
    decoder_channels: int | None = field(
        default=None, metadata={"help": "UperNet's channels; default the encoder width (the authors: 768 / 1024)."}
    )
    auxiliary_channels: int = field(default=256, metadata={"help": "Channels of the auxiliary FCN head."})
    auxiliary_loss_weight: float = field(default=0.4, metadata={"help": "Weight of the auxiliary head's loss."})
    classifier_dropout: float = field(default=0.1, metadata={"help": "Dropout2d before both classifiers (mmseg)."})
    loss_normalization: str = field(
        default="all_pixels",
        metadata={"help": "all_pixels: loss summed over valid pixels / all pixels (the authors); valid_pixels."},
    )
    relative_position_bias: bool = field(
        default=True, metadata={"help": "Per-block relative position bias in the backbone (the authors)."}
    )
    position_table: str = field(
        default="interpolate",
        metadata={"help": "interpolate: pretraining sin-cos table resized bicubically (the authors); exact."},
    )
    torch_num_threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads of torch's ops (default: torch's choice). The CPU demo sets 1: its ops are too small "
            "to share, and on a busy machine a second thread mostly waits."
        },
    )

    def __post_init__(self) -> None:
        check_preset(self.model_preset, "--model_preset")
        self.config_overrides = parse_json_mapping(self.config_overrides, "config_overrides", '{"hidden_size": 96}')
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise UserError(f"--loss_normalization {self.loss_normalization!r}: choose one of {LOSS_NORMALIZATIONS}.")
        if self.model is None and not self.random_encoder_if_missing:
            raise UserError(
                "No --model: give a CAE v2 encoder (e.g. outputs/caev2-vit-base/final or a Hub id), or set "
                "--random_encoder_if_missing true to train on a random encoder."
            )
        check_decay(layer_decay=self.layer_decay)
        check_rate(drop_path_rate=self.drop_path_rate, classifier_dropout=self.classifier_dropout)
        check_positive(
            decoder_channels=self.decoder_channels,
            auxiliary_channels=self.auxiliary_channels,
            torch_num_threads=self.torch_num_threads,
        )
        if self.auxiliary_loss_weight < 0:
            raise UserError(
                f"--auxiliary_loss_weight {self.auxiliary_loss_weight}: must be 0 (no auxiliary head) or more."
            )
        if self.out_indices is not None and (not self.out_indices or min(self.out_indices) < 1):
            raise UserError(f"--out_indices {self.out_indices}: give block numbers counted from 1, e.g. 4 6 8 12.")
        if self.position_table not in POSITION_TABLES:
            raise UserError(f"--position_table {self.position_table!r}: choose one of {POSITION_TABLES}.")

    def check(self) -> None:
        """The model folder exists (a Hub id passes; a missing folder is allowed with random_encoder_if_missing)."""
        if self.resolve_model() is not None:
            check_model_path(self.model)

    def resolve_model(self) -> str | None:
        """`model`, or None when it is a missing local path and a random encoder is allowed."""
        if self.random_encoder_if_missing and (self.model is None or not os.path.isdir(self.model)):
            return None
        return self.model


@dataclass
class SegmentationDataArguments:
    """Images and masks: a Hub dataset, local folders or the offline demo. One source: a source on the command line
    replaces the config file's, with the file's settings of that source (configuration, revision, the other
    folders)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset with image + annotation columns.", ALTERNATIVES: "source"}
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Configuration of the Hub dataset.", PART_OF: "source"}
    )
    dataset_revision: str | None = field(
        default=None,
        metadata={
            "help": "Hub revision; refs/convert/parquet for script datasets (scene_parse_150).",
            PART_OF: "source",
        },
    )
    train_split: str = field(default="train", metadata={"help": "Training split of the Hub dataset."})
    validation_split: str = field(default="validation", metadata={"help": "Validation split of the Hub dataset."})
    image_column: str = field(default="image", metadata={"help": "Image column of the Hub dataset."})
    annotation_column: str = field(default="annotation", metadata={"help": "Mask column of the Hub dataset."})
    train_image_dir: str | None = field(
        default=None, metadata={"help": "Local training images.", ALTERNATIVES: "source"}
    )
    train_annotation_dir: str | None = field(
        default=None, metadata={"help": "Their masks (same file stems, PNG).", PART_OF: "source"}
    )
    validation_image_dir: str | None = field(
        default=None, metadata={"help": "Local validation images.", PART_OF: "source"}
    )
    validation_annotation_dir: str | None = field(default=None, metadata={"help": "Their masks.", PART_OF: "source"})
    demo_data: bool = field(
        default=False,
        metadata={"help": "Generate the offline demo task (shapes on photos).", ALTERNATIVES: "source"},
    )
    demo_num_train_images: int = field(default=512, metadata={"help": "Demo training images."})
    demo_num_validation_images: int = field(default=64, metadata={"help": "Demo held-out images."})
    demo_image_size: int = field(default=64, metadata={"help": "Side of the demo images."})
    num_labels: int | None = field(default=None, metadata={"help": "Number of classes (150 for ADE20K)."})
    class_names: list[str] | None = field(default=None, metadata={"help": "Class names, in label order."})
    reduce_labels: bool = field(
        default=False, metadata={"help": "Mask 0 = ignored, c -> c - 1 (ADE20K, mmseg's reduce_zero_label)."}
    )
    ignore_index: int = field(default=255, metadata={"help": "Mask value left out of loss and mIoU."})
    crop_size: int = field(default=512, metadata={"help": "Training crop and sliding-window side."})
    resize_scale: list[int] = field(
        default_factory=lambda: [2048, 512], metadata={"help": "(long, short) rescale bound, train and test."}
    )
    ratio_range: list[float] = field(
        default_factory=lambda: [0.5, 2.0], metadata={"help": "Random factor on resize_scale in training."}
    )
    cat_max_ratio: float = field(default=0.75, metadata={"help": "Redraw crops that one class fills beyond this."})
    photometric_distortion: bool = field(default=True, metadata={"help": "mmseg's PhotoMetricDistortion."})
    eval_mode: str = field(default="slide", metadata={"help": "slide (windows of crop_size) or whole."})
    eval_stride: int = field(default=341, metadata={"help": "Sliding-window stride."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N images only."})
    eval_result_name: str | None = field(
        default=None, metadata={"help": "Model-index entry the mIoU fills in the output's card (ade20k_miou)."}
    )

    def __post_init__(self) -> None:
        sources = {
            "dataset_name": self.dataset_name is not None,
            "train_image_dir": self.train_image_dir is not None,
            "demo_data": self.demo_data,
        }
        if sum(sources.values()) != 1:
            raise UserError(
                f"Give exactly one data source, not {[name for name, given in sources.items() if given] or 'none'}: "
                "--dataset_name (Hub), --train_image_dir with the other *_dir paths (local), or --demo_data true."
            )
        if self.train_image_dir is not None:
            missing = [
                name
                for name in ("train_annotation_dir", "validation_image_dir", "validation_annotation_dir")
                if getattr(self, name) is None
            ]
            if missing:
                raise UserError(f"Local data needs --{missing[0]} too (image and mask folders for both splits).")
        if self.demo_data:
            self.num_labels = self.num_labels or len(DEMO_CLASS_NAMES)
            self.class_names = self.class_names or list(DEMO_CLASS_NAMES)
        if self.num_labels is None:
            self.num_labels = len(self.class_names) if self.class_names else None
        if self.num_labels is None or self.num_labels < 2:
            raise UserError(f"--num_labels {self.num_labels}: give the number of classes, at least 2 (ADE20K: 150).")
        if self.class_names is not None and len(self.class_names) != self.num_labels:
            raise UserError(f"--class_names has {len(self.class_names)} names for --num_labels {self.num_labels}.")
        if self.eval_mode not in EVAL_MODES:
            raise UserError(f"--eval_mode {self.eval_mode!r}: choose one of {EVAL_MODES}.")
        check_positive(
            crop_size=self.crop_size,
            demo_num_train_images=self.demo_num_train_images,
            demo_num_validation_images=self.demo_num_validation_images,
            demo_image_size=self.demo_image_size,
            max_eval_samples=self.max_eval_samples,
        )
        if not 0 < self.cat_max_ratio <= 1:
            raise UserError(f"--cat_max_ratio {self.cat_max_ratio}: a share of the crop, must lie in (0, 1] (1: off).")
        if not 0 < self.eval_stride <= self.crop_size:
            raise UserError(
                f"--eval_stride {self.eval_stride} must be in (0, crop_size={self.crop_size}] or windows leave gaps."
            )
        if (
            len(self.resize_scale) != 2
            or min(self.resize_scale) < 1
            or len(self.ratio_range) != 2
            or not 0 < self.ratio_range[0] <= self.ratio_range[1]
        ):
            raise UserError(
                f"--resize_scale {self.resize_scale} / --ratio_range {self.ratio_range}: give two sizes (long short) "
                "and two factors low <= high, e.g. --resize_scale 2048 512 --ratio_range 0.5 2.0."
            )
        if self.ignore_index < self.num_labels:
            raise UserError(
                f"--ignore_index {self.ignore_index} is a class index (num_labels={self.num_labels}): use 255."
            )

    def check(self) -> None:
        """Local folders exist (their pairing is checked when they are read)."""
        for name in ("train_image_dir", "train_annotation_dir", "validation_image_dir", "validation_annotation_dir"):
            folder = getattr(self, name)
            if folder is not None and not os.path.isdir(folder):
                raise UserError(f"--{name} {folder}: no such folder. Check the path.")

    @property
    def id2label(self) -> dict[int, str]:
        names = self.class_names or [str(index) for index in range(self.num_labels)]
        return dict(enumerate(names))
