# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Arguments of `run_instance_segmentation.py` (beside the data arguments it shares with `run_object_detection.py`
and transformers' `TrainingArguments`), checked on creation so a mistake ends in one line naming the field and the
fix (a `UserError`). The defaults are the authors' Mask R-CNN 1x recipe (docs/detection.md#mask-r-cnn)."""

from dataclasses import dataclass, field

from .checks import check_model_path, check_positive
from .errors import UserError


# caev2_hf.evaluation.detection.maskrcnn's BOX_LOSSES and TRAIN_MIN_SIZES (tests/test_run_instance_segmentation.py
# checks they agree): refused or defaulted here, before the model code is imported.
BOX_LOSS_NAMES = ("giou", "smooth_l1")
AUTHORS_MIN_SIZES = tuple(range(480, 801, 32))


@dataclass
class MaskRCNNModelArguments:
    model: str = field(
        metadata={
            "help": "CAE v2 encoder (folder or Hub id: run_pretrain's final/, a converted official checkpoint) under "
            "a new Mask R-CNN; or a Mask R-CNN folder this script wrote, to train further (its own settings apply)."
        },
    )
    drop_path_rate: float = field(default=0.1, metadata={"help": "Stochastic depth (the authors: 0.1 ViT-S, 0.2 B)."})
    relative_position_bias: bool = field(
        default=False, metadata={"help": "Per-block relative position bias, zero at start (off for the authors)."}
    )
    out_indices: list[int] | None = field(
        default=None, metadata={"help": "The 4 blocks (1-based) the neck reads; default L/3, L/2, 2L/3, L."}
    )
    box_loss: str = field(default="giou", metadata={"help": "giou (the authors', x10) or smooth_l1 (torchvision's)."})
    fpn_channels: int = field(default=256, metadata={"help": "Width of the FPN and the heads (256; less for demos)."})
    box_batch_size_per_image: int = field(
        default=512, metadata={"help": "RoIs sampled per training image for the box and mask heads (512)."}
    )
    min_size: list[int] = field(
        default_factory=lambda: list(AUTHORS_MIN_SIZES),
        metadata={"help": "Shorter sides drawn per training image; the last is the evaluation size (480 ... 800)."},
    )
    max_size: int = field(default=1333, metadata={"help": "Cap on the longer side, training and evaluation."})
    layer_decay: float = field(default=0.75, metadata={"help": "lr x layer_decay per encoder block from the top."})
    lr_drop_epochs: list[int] = field(
        default_factory=lambda: [9, 11],
        metadata={"help": "Epochs (0-based) at whose start the lr is multiplied by lr_drop_factor (1x: 9 and 11)."},
    )
    lr_drop_factor: float = field(default=0.1, metadata={"help": "The lr's factor at each of lr_drop_epochs."})
    warmup_start_factor: float = field(
        default=0.001, metadata={"help": "lr factor at step 0, rising linearly to 1 over --warmup_steps (mmcv's)."}
    )
    torch_num_threads: int | None = field(
        default=None, metadata={"help": "CPU threads of torch's ops (default: torch's choice; the CPU demo sets 1)."}
    )

    def __post_init__(self) -> None:
        if self.box_loss not in BOX_LOSS_NAMES:
            raise UserError(f"--box_loss {self.box_loss!r}: choose one of {', '.join(BOX_LOSS_NAMES)}.")
        check_positive(
            fpn_channels=self.fpn_channels, box_batch_size_per_image=self.box_batch_size_per_image,
            max_size=self.max_size,
        )  # fmt: skip
        if not self.min_size or min(self.min_size) < 32 or max(self.min_size) > self.max_size:
            raise UserError(
                f"--min_size {self.min_size}: give shorter sides of 32 px or more, none above --max_size "
                f"{self.max_size} (the authors: 480 512 ... 800 with 1333)."
            )
        for name in ("layer_decay", "lr_drop_factor", "warmup_start_factor"):
            if not 0 < getattr(self, name) <= 1:
                raise UserError(f"--{name} {getattr(self, name)} must be in (0, 1].")
        if not 0 <= self.drop_path_rate < 1:
            raise UserError(f"--drop_path_rate {self.drop_path_rate} must be in [0, 1) (the authors: 0.1 or 0.2).")
        if any(epoch < 1 for epoch in self.lr_drop_epochs) or self.lr_drop_epochs != sorted(self.lr_drop_epochs):
            raise UserError(
                f"--lr_drop_epochs {self.lr_drop_epochs}: give increasing epochs of 1 or more (e.g. 9 11)."
            )
        if self.torch_num_threads is not None and self.torch_num_threads < 1:
            raise UserError(f"--torch_num_threads {self.torch_num_threads}: give 1 or more, or leave it unset.")

    def check(self) -> None:
        check_model_path(self.model)


@dataclass
class MaskRCNNAugmentationArguments:
    """The authors' training augmentation before the model's own multi-scale resize (`--min_size`)."""

    horizontal_flip_probability: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip."})
    detr_crop_probability: float = field(
        default=0.5, metadata={"help": "Probability of DETR's crop: a resize to a shorter side, then a random crop."}
    )
    detr_crop_resize: list[int] = field(
        default_factory=lambda: [400, 500, 600], metadata={"help": "Shorter sides before the crop (one drawn)."}
    )
    detr_crop_size: list[int] = field(
        default_factory=lambda: [384, 600], metadata={"help": "Range of the crop's height and width, each drawn."}
    )

    def __post_init__(self) -> None:
        for name in ("horizontal_flip_probability", "detr_crop_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"--{name} {getattr(self, name)} must be in [0, 1].")
        if not self.detr_crop_resize or min(self.detr_crop_resize) < 1:
            raise UserError(
                f"--detr_crop_resize {self.detr_crop_resize}: give shorter sides in px (e.g. 400 500 600)."
            )
        low_high = self.detr_crop_size
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
            raise UserError(f"--detr_crop_size {low_high}: give the smallest and largest side in px (e.g. 384 600).")
