"""Unit tests for caev2_hf.evaluation.classification.labelled_data: what identifies a data source, and how its labels
are counted."""

from pathlib import Path

import datasets
import pytest

from caev2_hf.cli import UserError
from caev2_hf.evaluation.classification.labelled_data import (
    build_label_mappings,
    count_labels,
    describe_data_source,
    resolve_class_names,
)


def test_data_description_changes_when_a_file_changes(tmp_path: Path):
    for name in ("a", "b"):
        (tmp_path / "cls" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "cls" / f"{name}.png").write_bytes(b"12345")
    source = {"train_dir": str(tmp_path), "data_files": None, "image_column": None}
    before = describe_data_source(source)
    assert before == describe_data_source(dict(source))
    (tmp_path / "cls" / "b.png").write_bytes(b"123456")
    assert describe_data_source(source)["files"] != before["files"]
    assert {key for key in before} == {"train_dir", "files"}


def test_label_count_comes_from_the_dataset_card_when_it_has_split_sizes():
    features = datasets.Features({"label": datasets.ClassLabel(names=["a", "b", "c"])})
    dataset = datasets.Dataset.from_dict({"label": [0, 1, 1, 0]}, features=features).to_iterable_dataset()
    assert count_labels(dataset, "train") == (4, 1)  # no split sizes: one pass over the labels
    dataset.info.splits = datasets.SplitDict({"train": datasets.SplitInfo("train", num_examples=1000)})
    assert count_labels(dataset, "train") == (1000, 2)  # a Hub dataset's card: no pass over the data


def test_label_mappings_follow_the_class_order():
    assert build_label_mappings(["cat", "dog"]) == {"id2label": {0: "cat", 1: "dog"}, "label2id": {"cat": 0, "dog": 1}}


def test_a_single_class_is_refused() -> None:
    with pytest.raises(UserError, match=r"The training data has one class \(china\): a classifier needs at least 2"):
        resolve_class_names(["china"], ["china"], 0, 0)
    assert resolve_class_names(None, None, 2, 1) == ["0", "1", "2"]
