# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Arguments of `run_linear_probe.py` and `run_finetune.py`: where the labelled images come from
(`ImageDataArguments`, shared by both), the probe's and fine-tuning's own settings, and the checks made on them
before a model is loaded. Read by `caev2_hf_cli.parsing.parse_arguments`; `caev2_hf.evaluation` opens the data and
runs the jobs these arguments describe.
"""

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .checks import check_decay, check_image_folder, check_positive, check_rate
from .errors import UserError
from .parsing import ALTERNATIVES, PART_OF


@dataclass
class ProbeModelArguments:
    """Which encoder `run_linear_probe.py` probes, and whether its card gets the result."""

    model: str = field(
        metadata={"help": "Hub id or folder: a CAE v2 checkpoint of any head, or any transformers vision encoder."}
    )
    update_model_card: bool = field(
        default=False, metadata={"help": "Add top-1 / top-5 to the model-index of README.md in the --model folder."}
    )


@dataclass
class ProbeArguments:
    """How the linear probe trains its head (both protocols) and where it writes its results."""

    output_dir: str = field(metadata={"help": "Where results.json and the probed classifier are written."})
    protocol: Literal["official", "fast"] = field(
        default="official", metadata={"help": "official: 90 augmented epochs; fast: a grid over cached features."}
    )
    batch_size: int = field(default=8192, metadata={"help": "Global batch (16384 for Tiny, 8192 Small/Base)."})
    base_learning_rate: float = field(default=0.1, metadata={"help": "official: lr = this x batch_size / 256."})
    epochs: int = field(default=90, metadata={"help": "Training epochs (both protocols)."})
    warmup_epochs: int = field(default=10, metadata={"help": "Linear warmup epochs before the cosine decay."})
    fast_base_learning_rates: list[float] = field(
        default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0],
        metadata={"help": "fast: one head per base learning rate, trained at once."},
    )
    holdout_fraction: float = field(default=0.1, metadata={"help": "fast: share of train that selects the head."})
    cache_dir: str = field(
        default=os.path.join("~", ".cache", "caev2_hf", "probe_features"),
        metadata={"help": "fast: feature cache, keyed by model weights, data and transform."},
    )
    encoder_batch_size: int = field(default=512, metadata={"help": "Images per encoder forward (memory bound)."})
    num_workers: int = field(default=8, metadata={"help": "Data loader workers (at most one per shard)."})
    seed: int = field(default=0, metadata={"help": "Seed of the head init, shuffling and crops."})

    def __post_init__(self) -> None:
        """Refuses values no run can use, at parse time: before any model or data is opened."""
        check_positive(batch_size=self.batch_size, epochs=self.epochs, encoder_batch_size=self.encoder_batch_size)
        check_positive(base_learning_rate=self.base_learning_rate)
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise UserError(
                f"--warmup_epochs {self.warmup_epochs}: must lie between 0 (no warmup) and --epochs {self.epochs}; "
                "for a short run, lower --warmup_epochs too."
            )
        if not self.fast_base_learning_rates or min(self.fast_base_learning_rates) <= 0:
            raise UserError(
                f"--fast_base_learning_rates {self.fast_base_learning_rates}: give one or more values > 0."
            )
        if not 0 < self.holdout_fraction < 1:
            raise UserError(f"--holdout_fraction {self.holdout_fraction}: must lie strictly between 0 and 1.")
        if self.num_workers < 0:
            raise UserError(f"--num_workers {self.num_workers}: must be 0 (load in the main process) or more.")

    def learning_rate(self, base_learning_rate: float) -> float:
        """The linear scaling rule of the recipe: base lr x global batch / 256."""
        return base_learning_rate * self.batch_size / 256


@dataclass
class FineTuningModelArguments:
    """Which CAE v2 checkpoint `run_finetune.py` fine-tunes, and the model side of the recipe."""

    model: str = field(metadata={"help": "Hub id or folder of a CAE v2 checkpoint (any head) to fine-tune."})
    layer_decay: float = field(default=0.75, metadata={"help": "lr scale decay per block from the head down."})
    drop_path_rate: float = field(default=0.1, metadata={"help": "Stochastic depth at the last block."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Replace a checkpoint head whose class count differs from the dataset's."}
    )

    def __post_init__(self) -> None:
        check_decay(layer_decay=self.layer_decay)
        check_rate(drop_path_rate=self.drop_path_rate)


@dataclass
class AugmentationArguments:
    """The fine-tuning recipe's data side: random crops, RandAugment, random erasing, mixup / cutmix and label
    smoothing."""

    crop_min_scale: float = field(
        default=0.08,
        metadata={
            "help": "RandomResizedCrop's smallest area fraction (the recipe's 0.08, for ImageNet-sized photos). "
            "Images much smaller than the model's input need more, e.g. 0.5: 0.08 of an 8x8 image is 2x2 pixels."
        },
    )
    rand_augment_magnitude: int = field(default=9, metadata={"help": "RandAugment magnitude out of 10; 0 = off."})
    random_erasing: float = field(default=0.25, metadata={"help": "Random erasing probability."})
    mixup: float = field(default=0.8, metadata={"help": "Mixup alpha (0 = off)."})
    cutmix: float = field(default=1.0, metadata={"help": "CutMix alpha (0 = off)."})
    mixup_switch_probability: float = field(
        default=0.5, metadata={"help": "With both mixup and cutmix on: the chance that a batch gets cutmix."}
    )
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing (inside the mixup targets)."})

    def __post_init__(self) -> None:
        """Refuses values outside their range at parse time, before the model is loaded."""
        if not 0 < self.crop_min_scale <= 1:
            raise UserError(f"--crop_min_scale {self.crop_min_scale}: an area fraction, must lie in (0, 1].")
        if not 0 <= self.rand_augment_magnitude <= 10:
            raise UserError(f"--rand_augment_magnitude {self.rand_augment_magnitude}: must lie in [0, 10].")
        for name in ("random_erasing", "mixup_switch_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"--{name} {getattr(self, name)}: a probability, must lie in [0, 1].")
        if min(self.mixup, self.cutmix) < 0:
            raise UserError(f"--mixup {self.mixup} / --cutmix {self.cutmix}: Beta alphas, must be >= 0 (0 = off).")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"--label_smoothing {self.label_smoothing}: must lie in [0, 1).")


# Folder names that say which split a folder holds rather than which dataset: the dataset is named by their parent.
SPLIT_FOLDER_NAMES = {
    "train",
    "training",
    "val",
    "valid",
    "validation",
    "test",
    "testing",
    "eval",
    "evaluation",
    "dev",
}
IMAGES_VERIFIED = 20  # at most this many images of a folder are opened (headers only) before a run starts
BOTH_SPLITS = ("train", "validation")  # the source groups a Hub dataset stands for


@dataclass
class ImageDataArguments:
    """Where labelled images come from: a Hub dataset (streamed), image folders, or .tar / .parquet shards.

    Each split has one source: a source on the command line replaces the config file's for its split (the Hub
    dataset stands for both), with the file's settings of the replaced source (`dataset_config_name`,
    `dataset_display_name`)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id, e.g. ILSVRC/imagenet-1k.", ALTERNATIVES: BOTH_SPLITS}
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Configuration of the Hub dataset.", PART_OF: BOTH_SPLITS}
    )
    train_split: str = field(default="train", metadata={"help": "Training split of the Hub dataset."})
    validation_split: str = field(default="validation", metadata={"help": "Validation split of the Hub dataset."})
    train_dir: str | None = field(
        default=None,
        metadata={
            "help": "Training image folder, one subfolder per class (at any depth below it: cat/2020/1.jpg).",
            ALTERNATIVES: "train",
        },
    )
    validation_dir: str | None = field(
        default=None, metadata={"help": "Validation image folder, likewise.", ALTERNATIVES: "validation"}
    )
    train_files: list[str] | None = field(
        default=None, metadata={"help": "Training .tar or .parquet shards.", ALTERNATIVES: "train"}
    )
    validation_files: list[str] | None = field(
        default=None, metadata={"help": "Validation shards, likewise.", ALTERNATIVES: "validation"}
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column, when not a usual name."})
    label_column: str | None = field(default=None, metadata={"help": "Label column, when not a usual name."})
    streaming: bool = field(
        default=True,
        metadata={"help": "false: prepare local data in the Arrow cache first; its 64 shards feed many workers/GPUs."},
    )
    dataset_display_name: str | None = field(
        default=None,
        metadata={
            "help": "The dataset's name in results.json and model cards; by default the Hub id, else the name of "
            "the folder that holds the split folders (data/flowers for data/flowers/train and data/flowers/val).",
            PART_OF: BOTH_SPLITS,
        },
    )

    def data_sources(self) -> tuple[dict, dict]:
        """Keyword arguments of `open_image_dataset` for the training and the validation data."""
        columns = {"image_column": self.image_column, "label_column": self.label_column, "streaming": self.streaming}
        if self.dataset_name:
            hub = {"dataset_name": self.dataset_name, "dataset_config_name": self.dataset_config_name, **columns}
            return {**hub, "split": self.train_split}, {**hub, "split": self.validation_split}
        train = {"train_dir": self.train_dir, "data_files": self.train_files, **columns}
        return train, {"train_dir": self.validation_dir, "data_files": self.validation_files, **columns}

    @property
    def dataset_id(self) -> str:
        """The dataset's name in a model card: `dataset_display_name`, the Hub id, else the local data's own name
        (a split folder such as `val/` is named by its parent, the dataset; shards by their folder)."""
        if self.dataset_display_name or self.dataset_name:
            return self.dataset_display_name or self.dataset_name
        paths = [self.train_dir, self.validation_dir, *(self.train_files or []), *(self.validation_files or [])]
        paths = [os.path.abspath(path) for path in paths if path]
        folders = [path if os.path.isdir(path) else os.path.dirname(path) for path in paths]
        if not folders:
            return "local"
        common = Path(os.path.commonpath(folders))
        while common.name.lower() in SPLIT_FOLDER_NAMES and common.parent != common:
            common = common.parent
        return common.name or "local"

    def check(self, verify_images: int = IMAGES_VERIFIED) -> None:
        """One source for each split, and local data that exists and holds readable images in class folders.

        Reads file names and up to `verify_images` image headers per folder (milliseconds); raises `UserError`.
        """
        local = {
            "--train_dir": self.train_dir,
            "--validation_dir": self.validation_dir,
            "--train_files": self.train_files,
            "--validation_files": self.validation_files,
        }
        if self.dataset_name:
            given = [flag for flag, value in local.items() if value]
            if given:
                raise UserError(
                    f"Give a Hub dataset (--dataset_name {self.dataset_name}) or local data ({', '.join(given)}), "
                    "not both."
                )
            return
        for split in ("train", "validation"):
            folder, files = getattr(self, f"{split}_dir"), getattr(self, f"{split}_files")
            if folder and files:
                raise UserError(f"Give --{split}_dir or --{split}_files, not both.")
            if not (folder or files):
                raise UserError(
                    f"No {split} data: give --{split}_dir (an image folder, one subfolder per class), --{split}_files "
                    "(.tar/.parquet shards), or --dataset_name for a Hub dataset."
                )
            if folder:
                check_image_folder(folder, f"--{split}_dir", verify=verify_images)
                check_class_folders(folder, f"--{split}_dir")
            for pattern in files or []:
                if not glob.glob(pattern):
                    raise UserError(f"--{split}_files {pattern}: no such file. Check the path or the glob pattern.")


def check_class_folders(folder: str, flag: str) -> None:
    """Labels come from one subfolder per class: images lying in the folder itself have none."""
    loose = sorted(name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name)))
    if loose and not any(os.path.isdir(os.path.join(folder, name)) for name in os.listdir(folder)):
        raise UserError(
            f"{flag} {folder} holds files but no class subfolders (e.g. {loose[0]}): a label comes from the subfolder "
            f"an image is in, so put the images in one subfolder per class ({folder}/cat/1.jpg, {folder}/dog/2.jpg)."
        )
