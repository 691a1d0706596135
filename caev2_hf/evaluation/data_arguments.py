# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Where labelled images come from (`ImageDataArguments`, shared by `run_linear_probe.py` and `run_finetune.py`) and
the checks a script runs on them before it loads a model.

Only the standard library and `caev2_hf.cli` are imported here, so a script's `--help` and a bad path answer in about
a second; `labelled_data` opens the data these arguments describe.
"""

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import UserError, check_image_folder


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


@dataclass
class ImageDataArguments:
    """Where labelled images come from: a Hub dataset (streamed), image folders, or .tar / .parquet shards."""

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id, e.g. ILSVRC/imagenet-1k."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    train_split: str = field(default="train", metadata={"help": "Training split of the Hub dataset."})
    validation_split: str = field(default="validation", metadata={"help": "Validation split of the Hub dataset."})
    train_dir: str | None = field(
        default=None,
        metadata={"help": "Training image folder, one subfolder per class (at any depth below it: cat/2020/1.jpg)."},
    )
    validation_dir: str | None = field(default=None, metadata={"help": "Validation image folder, likewise."})
    train_files: list[str] | None = field(default=None, metadata={"help": "Training .tar or .parquet shards."})
    validation_files: list[str] | None = field(default=None, metadata={"help": "Validation shards, likewise."})
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
            "the folder that holds the split folders (data/flowers for data/flowers/train and data/flowers/val)."
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
