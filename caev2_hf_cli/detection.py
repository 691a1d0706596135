# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Arguments of `run_object_detection.py` (beside transformers' `TrainingArguments`) and of
`python -m caev2_hf.evaluation.detection.lwdetr`, checked on creation so a mistake ends in one line naming the field
and the fix (a `UserError`)."""

import os
from dataclasses import dataclass, field

from .checks import check_decay, check_model_path, check_positive, parse_json_mapping
from .errors import UserError
from .parsing import ALTERNATIVES, MERGED_MAPPING, PART_OF


LWDETR_SIZE_NAMES = ("tiny", "small", "medium", "large", "xlarge")  # caev2_hf.evaluation.detection.lwdetr's sizes
SOURCE = "data source"


def check_lwdetr_size(size: str) -> None:
    if size not in LWDETR_SIZE_NAMES:
        raise UserError(f"--lwdetr_size {size!r}: choose one of {', '.join(LWDETR_SIZE_NAMES)}.")


def check_demo_encoder(model: str, demo_data: bool) -> None:
    """The demos start from the demo pretraining's encoder: when it is missing, say which command makes it."""
    if demo_data and not os.path.isdir(model) and model.startswith("demo_output"):
        raise UserError(
            f"--model {model}: no such folder. The demo starts from the demo encoder: run python run_pretrain.py "
            "--config configs/demo.yaml first (15-21 CPU s), or give another CAE v2 encoder."
        )


@dataclass
class DetectionModelArguments:
    model: str = field(
        metadata={
            "help": "CAE v2 encoder (folder or Hub id: run_pretrain's final/, a converted official checkpoint, any "
            "CAE v2 head), whose blocks become LW-DETR's ViT; or an LW-DETR folder this script wrote, to train on."
        },
    )
    lwdetr_size: str = field(
        default="small",
        metadata={"help": "tiny, small (ViT-Tiny encoders), medium, large (ViT-Small), xlarge (ViT-Base)."},
    )
    image_size: int = field(
        default=640, metadata={"help": "Square side of evaluation and inference (training: 0.7x to 1.4x of it)."}
    )
    backbone_overrides: dict | str | None = field(
        default=None,
        metadata={
            "help": "LwDetrViTConfig fields replacing the size's (a mapping in YAML, JSON on the command line), e.g. "
            "a small encoder's hidden_size / num_attention_heads / patch_size.",
            MERGED_MAPPING: True,
        },
    )
    config_overrides: dict | str | None = field(
        default=None,
        metadata={
            "help": "LwDetrConfig fields replacing the size's: num_queries, group_detr, d_model, ...",
            MERGED_MAPPING: True,
        },
    )
    encoder_learning_rate: float = field(
        default=6e-4, metadata={"help": "Peak lr of the ViT's top block (the authors' --lr_encoder)."}
    )
    layer_decay: float = field(default=0.8, metadata={"help": "lr x layer_decay per ViT block from the top down."})
    component_decay: float = field(
        default=1.0, metadata={"help": "Decoder lr x this, ViT lr x its square (the authors' --lr_component_decay)."}
    )
    ema_decay: float = field(
        default=0.9997, metadata={"help": "Weight average per optimizer step, evaluated and saved; 0 turns it off."}
    )
    top_k: int = field(default=100, metadata={"help": "Detections per image scored (COCO counts at most 100)."})
    torch_num_threads: int | None = field(
        default=None, metadata={"help": "CPU threads of torch's ops (default: torch's choice; the CPU demo sets 1)."}
    )

    def __post_init__(self) -> None:
        check_lwdetr_size(self.lwdetr_size)
        self.backbone_overrides = parse_json_mapping(
            self.backbone_overrides, "backbone_overrides", '{"patch_size": 8}'
        )
        self.config_overrides = parse_json_mapping(self.config_overrides, "config_overrides", '{"num_queries": 100}')
        check_positive(image_size=self.image_size, encoder_learning_rate=self.encoder_learning_rate, top_k=self.top_k)
        check_decay(layer_decay=self.layer_decay, component_decay=self.component_decay)
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"--ema_decay {self.ema_decay} must be in [0, 1): 0 turns it off, the authors use 0.9997.")
        if self.torch_num_threads is not None and self.torch_num_threads < 1:
            raise UserError(f"--torch_num_threads {self.torch_num_threads}: give 1 or more, or leave it unset.")

    def check(self) -> None:
        check_model_path(self.model)


@dataclass
class DetectionDataArguments:
    train_image_dir: str | None = field(
        default=None, metadata={"help": "COCO-format data: the training images.", ALTERNATIVES: SOURCE}
    )
    train_annotation_file: str | None = field(
        default=None, metadata={"help": "Their instances JSON (boxes, categories; masks optional).", PART_OF: SOURCE}
    )
    validation_image_dir: str | None = field(default=None, metadata={"help": "The held-out images.", PART_OF: SOURCE})
    validation_annotation_file: str | None = field(
        default=None, metadata={"help": "Their instances JSON.", PART_OF: SOURCE}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset with objects in the cppe-5 layout.", ALTERNATIVES: SOURCE}
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Configuration of the Hub dataset.", PART_OF: SOURCE}
    )
    dataset_revision: str | None = field(
        default=None, metadata={"help": "Revision of the Hub dataset.", PART_OF: SOURCE}
    )
    train_split: str = field(default="train", metadata={"help": "Training split of the Hub dataset."})
    validation_split: str = field(default="test", metadata={"help": "Held-out split of the Hub dataset."})
    image_column: str = field(default="image", metadata={"help": "Image column of the Hub dataset."})
    objects_column: str = field(default="objects", metadata={"help": "Objects column (bbox, category) of it."})
    demo_data: bool = field(
        default=False, metadata={"help": "Write and use the offline demo (shapes on photos).", ALTERNATIVES: SOURCE}
    )
    demo_dir: str = field(default="demo_data/detection", metadata={"help": "Where the demo writes its COCO folder."})
    demo_num_train_images: int = field(default=256, metadata={"help": "Demo training images."})
    demo_num_validation_images: int = field(default=32, metadata={"help": "Demo held-out images."})
    demo_image_size: int = field(default=128, metadata={"help": "Side of the demo images."})
    random_baseline: bool = field(
        default=False,
        metadata={"help": "Also score boxes (and masks: the boxes) drawn at random, a baseline that cannot learn."},
    )
    eval_result_name: str | None = field(
        default=None, metadata={"help": "Dataset name for the mAP in the output's model card (default: the source)."}
    )

    def __post_init__(self) -> None:
        sources = {
            "train_image_dir": self.train_image_dir is not None,
            "dataset_name": self.dataset_name is not None,
            "demo_data": self.demo_data,
        }
        if sum(sources.values()) != 1:
            raise UserError(
                f"Give exactly one data source, not {[name for name, given in sources.items() if given] or 'none'}: "
                "--train_image_dir with the other *_dir / *_file paths (COCO format), --dataset_name (Hub, cppe-5 "
                "layout), or --demo_data true."
            )
        if self.train_image_dir is not None:
            local = ("train_annotation_file", "validation_image_dir", "validation_annotation_file")
            missing = [name for name in local if getattr(self, name) is None]
            if missing:
                raise UserError(
                    f"COCO-format data needs --{missing[0]} too (images and instances JSON of both splits)."
                )
        check_positive(
            demo_num_train_images=self.demo_num_train_images,
            demo_num_validation_images=self.demo_num_validation_images,
            demo_image_size=self.demo_image_size,
        )

    def check(self) -> None:
        """The local paths exist (their content is checked when read)."""
        for name in ("train_image_dir", "validation_image_dir"):
            path = getattr(self, name)
            if path is not None and not os.path.isdir(path):
                raise UserError(
                    f"--{name} {path}: no such folder. Give the folder the annotations' file_names are in."
                )
        for name in ("train_annotation_file", "validation_annotation_file"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise UserError(f"--{name} {path}: no such file. Give the COCO instances JSON of that split.")

    @property
    def source_name(self) -> str:
        """What the data is called in results and the card."""
        if self.demo_data:
            return "the offline demo (shapes on photos)"
        if self.dataset_name is not None:
            return self.dataset_name
        return os.path.basename(os.path.normpath(self.train_image_dir))


@dataclass
class LwDetrBuildArguments:
    encoder: str = field(metadata={"help": "CAE v2 encoder folder or Hub id."})
    output_dir: str = field(metadata={"help": "Folder to write the LW-DETR model and its image processor to."})
    class_names: list[str] = field(metadata={"help": "The detector's classes, in label order."})
    lwdetr_size: str = field(default="small", metadata={"help": "tiny, small, medium, large or xlarge."})
    image_size: int = field(default=640, metadata={"help": "Square side of inference."})

    def __post_init__(self) -> None:
        check_lwdetr_size(self.lwdetr_size)
        check_positive(image_size=self.image_size)
        check_model_path(self.encoder, "--encoder")
        if os.path.isfile(os.path.join(self.output_dir, "config.json")):
            raise UserError(f"--output_dir {self.output_dir} already holds a model: choose another folder.")
