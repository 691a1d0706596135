# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Labelled images for linear probing and fine-tuning: where they come from, their classes, and an in-order loader."""

import glob
import hashlib
import json
import os

import datasets
from torch.utils.data import DataLoader, default_collate

from ...cli import UserError
from ...data.loader import LabelledImageStream
from ...data.sources import open_image_dataset
from ..data_arguments import ImageDataArguments  # noqa: F401  the arguments of the data opened here


def describe_data_source(source: dict) -> dict:
    """What identifies the data: the opening arguments, plus path, size and mtime of every local file."""
    description = {key: value for key, value in source.items() if value is not None}
    patterns = [source["train_dir"]] if source.get("train_dir") else source.get("data_files") or []
    patterns = [patterns] if isinstance(patterns, str) else patterns
    paths = [os.path.abspath(path) for pattern in patterns for path in sorted(glob.glob(pattern))]
    files = [os.path.join(root, name) for path in paths for root, _, names in os.walk(path) for name in names]
    files = sorted(files + [path for path in paths if os.path.isfile(path)])
    if files:
        stats = [(path, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in files]
        description["files"] = hashlib.blake2b(json.dumps(stats).encode(), digest_size=16).hexdigest()
    return description


def open_labelled_dataset(**source) -> datasets.IterableDataset:
    """`open_image_dataset(**source)`, refusing data without labels (a probe needs them)."""
    dataset = open_image_dataset(**source)
    if "label" not in dataset.column_names:
        raise ValueError(
            f"The dataset {describe_data_source(source)} has no label column (columns: {dataset.column_names}): "
            "linear probing needs labelled images. Name the column with --label_column."
        )
    return dataset


def read_label_names(dataset: datasets.IterableDataset) -> list[str] | None:
    """The label column's class names, None when its labels are plain integers."""
    feature = (dataset.features or {}).get("label")
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def count_labels(dataset: datasets.IterableDataset, split: str = "train") -> tuple[int, int]:
    """(number of examples, largest label), from the dataset card's split size and class names when it has both
    (a Hub dataset: no pass over the data), else from one pass over the labels (a stream has no length)."""
    names, splits = read_label_names(dataset), dataset.info.splits
    if names and splits and split in splits and splits[split].num_examples:
        return splits[split].num_examples, len(names) - 1
    labels = [example["label"] for example in dataset.select_columns(["label"])]
    if not labels:
        raise ValueError("The dataset is empty.")
    return len(labels), max(labels)


def resolve_class_names(
    names: list[str] | None, validation_names: list[str] | None, max_train_label: int, max_validation_label: int
) -> list[str]:
    """The head's classes: the training data's ClassLabel names, else "0".."max label".

    Refuses a single class (every prediction would be right) and validation data whose classes differ from the
    training data's (its accuracy would be meaningless).
    """
    if names and validation_names and names != validation_names:
        raise UserError(
            f"The training data has {len(names)} classes ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}) "
            f"and the validation data {len(validation_names)} ({', '.join(validation_names[:5])}"
            f"{', ...' if len(validation_names) > 5 else ''}): give both the same class subfolders."
        )
    names = names or [str(label) for label in range(max_train_label + 1)]
    if len(names) < 2:
        raise UserError(
            f"The training data has one class ({names[0]}): a classifier needs at least 2, one subfolder per class."
        )
    if max_validation_label >= len(names):
        raise UserError(
            f"The validation data has label {max_validation_label}, but the training data has {len(names)} classes: "
            "give both the same classes."
        )
    return names


def open_labelled_datasets(
    train_source: dict, validation_source: dict
) -> tuple[datasets.IterableDataset, datasets.IterableDataset, int, list[str]]:
    """(train, validation, number of training examples, class names of the head) from two data sources."""
    train_dataset, validation_dataset = (
        open_labelled_dataset(**train_source),
        open_labelled_dataset(**validation_source),
    )
    num_examples, max_train_label = count_labels(train_dataset, train_source.get("split", "train"))
    max_validation_label = count_labels(validation_dataset, validation_source.get("split", "train"))[1]
    class_names = resolve_class_names(
        read_label_names(train_dataset), read_label_names(validation_dataset), max_train_label, max_validation_label
    )
    return train_dataset, validation_dataset, num_examples, class_names


def build_label_mappings(class_names: list[str]) -> dict[str, dict]:
    """A classifier config's `id2label` and `label2id` for the head's classes, in their order."""
    return {
        "id2label": dict(enumerate(class_names)),
        "label2id": {name: index for index, name in enumerate(class_names)},
    }


def build_eval_loader(dataset: datasets.IterableDataset, transform, batch_size: int, num_workers: int) -> DataLoader:
    """Every example once, in order, decoded and cropped to uint8 in the workers (a worker reads whole shards)."""
    stream = LabelledImageStream(dataset, transform)
    num_workers = min(num_workers, dataset.num_shards)
    return DataLoader(stream, batch_size=batch_size, num_workers=num_workers, collate_fn=default_collate)
