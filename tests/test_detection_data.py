"""COCO-format detection data (folders and Hub-style datasets), its checks, the COCO metrics with known answers, and
the offline demo's files."""

import copy
import json
import logging
import os

import datasets
import numpy as np
import pytest
import torch

from caev2_hf.evaluation.detection.coco import (
    CocoFormatError,
    annotation_masks,
    build_ground_truth,
    check_coco_dataset,
    open_coco_folder,
    open_hub_detection,
)
from caev2_hf.evaluation.detection.demo import DEMO_CATEGORIES, write_demo_coco
from caev2_hf.evaluation.detection.metrics import CocoEvaluator, detections_to_coco, evaluate_coco, masks_to_rles


@pytest.fixture(scope="module")
def demo_coco(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """8 training and 4 validation images of 64 px, written once for the module."""
    return write_demo_coco(str(tmp_path_factory.mktemp("demo_coco")), 8, 4, image_size=64, seed=0)


def copy_demo(demo_coco, tmp_path, edit=None) -> tuple[str, str]:
    """The demo's training split copied to `tmp_path`, its annotation dict passed through `edit` first."""
    image_dir, annotation_file = demo_coco["train"]
    with open(annotation_file) as file:
        content = json.load(file)
    if edit is not None:
        edit(content)
    target_dir = tmp_path / "images"
    target_dir.mkdir(parents=True)
    for name in os.listdir(image_dir):
        os.link(os.path.join(image_dir, name), target_dir / name)
    (tmp_path / "instances.json").write_text(json.dumps(content))
    return str(target_dir), str(tmp_path / "instances.json")


def error_of(image_dir: str, annotation_file: str) -> str:
    with pytest.raises(CocoFormatError) as error:
        open_coco_folder(image_dir, annotation_file)
    assert "\n" not in str(error.value)
    return str(error.value)


# ---- The demo and a folder


def test_demo_writes_a_coco_folder_with_boxes_and_polygon_masks(demo_coco):
    split = open_coco_folder(*demo_coco["train"])
    assert len(split.examples) == 8 and split.num_missing_images == 0
    assert split.id2label == dict(enumerate(DEMO_CATEGORIES)) and split.label_to_category_id == [1, 2, 3]
    example = split.examples[0]
    assert example["image"] == os.path.join(demo_coco["train"][0], "00000.jpg")
    assert (example["width"], example["height"]) == (64, 64) and 1 <= len(example["annotations"]) <= 3
    for example in split.examples:
        masks = annotation_masks(example["annotations"], 64, 64)
        for annotation, mask in zip(example["annotations"], masks, strict=True):
            x, y, width, height = annotation["bbox"]
            rows, cols = np.nonzero(mask)
            # The polygon's mask fills its box: rasterised edges are within a pixel of the box's.
            assert abs(cols.min() - x) <= 1 and abs(cols.max() + 1 - (x + width)) <= 1
            assert abs(rows.min() - y) <= 1 and abs(rows.max() + 1 - (y + height)) <= 1
            assert annotation["area"] == mask.sum() > 0.3 * width * height


def test_demo_is_deterministic_and_holds_out_its_validation_images(demo_coco, tmp_path):
    again = write_demo_coco(str(tmp_path / "again"), 8, 4, image_size=64, seed=0)
    for split in ("train", "validation"):
        (image_dir, annotation_file), (other_dir, other_file) = demo_coco[split], again[split]
        assert open(annotation_file).read() == open(other_file).read()
        for name in os.listdir(image_dir):
            assert open(os.path.join(image_dir, name), "rb").read() == open(os.path.join(other_dir, name), "rb").read()
    train = open(os.path.join(demo_coco["train"][0], "00000.jpg"), "rb").read()
    validation = open(os.path.join(demo_coco["validation"][0], "00000.jpg"), "rb").read()
    assert train != validation
    other_seed = write_demo_coco(str(tmp_path / "seed1"), 2, 1, image_size=64, seed=1)
    assert open(other_seed["train"][1]).read() != open(demo_coco["train"][1]).read()


def test_images_absent_from_the_folder_are_counted_logged_once_and_skipped(demo_coco, tmp_path, caplog):
    image_dir, annotation_file = copy_demo(demo_coco, tmp_path)
    full = open_coco_folder(image_dir, annotation_file)
    gone = {full.examples[1]["image_id"], full.examples[4]["image_id"]}
    os.remove(os.path.join(image_dir, "00001.jpg"))
    os.remove(os.path.join(image_dir, "00004.jpg"))
    with caplog.at_level(logging.WARNING):
        split = open_coco_folder(image_dir, annotation_file)
    assert split.num_missing_images == 2 and len(split.examples) == 6
    assert [record.getMessage() for record in caplog.records if "not in" in record.getMessage()] == [
        f"2 of 8 images named in {annotation_file} are not in {image_dir} (first: '00001.jpg'); they are skipped "
        "with their annotations."
    ]
    kept_annotations = [a for a in full.ground_truth.dataset["annotations"] if a["image_id"] not in gone]
    assert split.ground_truth.dataset["annotations"] == kept_annotations
    assert gone.isdisjoint(example["image_id"] for example in split.examples)
    for name in os.listdir(image_dir):
        os.remove(os.path.join(image_dir, name))
    assert "None of the 8 images named in" in error_of(image_dir, annotation_file)


# ---- Bad input: one line naming the file and the fix


def test_a_missing_or_malformed_annotation_file_is_named(demo_coco, tmp_path):
    image_dir = demo_coco["train"][0]
    message = error_of(image_dir, str(tmp_path / "instances_train.json"))
    assert message.startswith(f"Annotation file {tmp_path / 'instances_train.json'}: no such file.")
    assert "a folder, not a file" in error_of(image_dir, str(tmp_path))
    (tmp_path / "broken.json").write_text('{"images": [], "annotations": [\n  {"id": 1,}\n]}')
    message = error_of(image_dir, str(tmp_path / "broken.json"))
    assert "broken.json is not valid JSON" in message and "line 2, column 12" in message
    (tmp_path / "list.json").write_text("[]")
    assert "holds a JSON list, not the COCO mapping" in error_of(image_dir, str(tmp_path / "list.json"))
    (tmp_path / "partial.json").write_text('{"images": [], "annotations": []}')
    assert "has no list 'categories'" in error_of(image_dir, str(tmp_path / "partial.json"))
    assert "Image folder" in error_of(str(tmp_path / "nowhere"), demo_coco["train"][1])


def edit_first_annotation(**fields):
    def edit(content):
        content["annotations"][0].update(fields)

    return edit


def test_a_box_outside_its_image_or_of_zero_size_is_named(demo_coco, tmp_path):
    paths = copy_demo(demo_coco, tmp_path / "outside", edit_first_annotation(bbox=[40, 10, 30, 20]))
    message = error_of(*paths)
    assert message.endswith(
        "annotation 1 (image '00000.jpg', 64x64 px) has bbox [40, 10, 30, 20] (x, y, width, height) reaching "
        "outside the image: fix the box, the image's width/height, or remove the annotation."
    )
    paths = copy_demo(demo_coco, tmp_path / "empty", edit_first_annotation(bbox=[10, 10, 0, 5]))
    assert "has bbox [10, 10, 0, 5] of zero or negative size" in error_of(*paths)
    paths = copy_demo(demo_coco, tmp_path / "short", edit_first_annotation(bbox=[10, 10, 5]))
    assert "has bbox [10, 10, 5]: give [x, y, width, height] in pixels" in error_of(*paths)
    # Half a pixel past the edge (rounding in exported files) is clipped, not refused.
    split = open_coco_folder(
        *copy_demo(demo_coco, tmp_path / "rounding", edit_first_annotation(bbox=[40, -0.5, 24.5, 20]))
    )
    assert split.ground_truth.anns[1]["bbox"] == [40.0, 0.0, 24.0, 19.5]


def test_a_category_or_image_the_file_does_not_list_is_named(demo_coco, tmp_path):
    paths = copy_demo(demo_coco, tmp_path / "category", edit_first_annotation(category_id=7))
    assert "has category_id 7, which is not in 'categories' (ids [1, 2, 3])" in error_of(*paths)
    paths = copy_demo(demo_coco, tmp_path / "image", edit_first_annotation(image_id=99))
    assert "annotation 1 refers to image id 99, which 'images' does not list" in error_of(*paths)


def test_masks_from_polygons_and_rles_and_areas_computed_when_absent():
    polygon = [[2, 1, 6, 1, 6, 4, 2, 4]]  # a 4 x 3 rectangle
    rle = masks_to_rles(annotation_masks([{"segmentation": polygon}], 8, 10))[0]
    uncompressed = {"size": [8, 10], "counts": [17, 3, 5, 3, 5, 3, 5, 3, 36]}  # column-major runs of the same mask
    dataset = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 8}],
        "categories": [{"id": 1, "name": "box"}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [2, 1, 4, 3], "segmentation": polygon},
            {"image_id": 1, "category_id": 1, "bbox": [2, 1, 4, 3], "segmentation": rle},
            {"image_id": 1, "category_id": 1, "bbox": [2, 1, 4, 3], "segmentation": uncompressed},
            {"image_id": 1, "category_id": 1, "bbox": [2, 1, 4, 3], "segmentation": []},  # box-only exporters
        ],
    }
    checked = check_coco_dataset(dataset, "test.json")
    assert [annotation["area"] for annotation in checked["annotations"]] == [12.0, 12.0, 12.0, 12.0]
    assert [annotation["id"] for annotation in checked["annotations"]] == [1, 2, 3, 4]
    assert "segmentation" not in checked["annotations"][3]
    masks = annotation_masks(checked["annotations"][:3], 8, 10)
    expected = np.zeros((8, 10), dtype=np.uint8)
    expected[1:4, 2:6] = 1
    for mask in masks:
        np.testing.assert_array_equal(mask, expected)
    dataset["annotations"][1]["segmentation"] = {"size": [10, 8], "counts": rle["counts"]}
    with pytest.raises(CocoFormatError, match=r"RLE segmentation of size \[10, 8\]: it must be \[height, width\]"):
        check_coco_dataset(dataset, "test.json")


# ---- Hub datasets in the cppe-5 layout


def cppe5_dataset(demo_coco, with_sizes: bool = True) -> datasets.Dataset:
    """The demo's training split as a Hub dataset with cppe-5's columns (category = ClassLabel index)."""
    split = open_coco_folder(*demo_coco["train"])
    rows = {"image_id": [], "image": [], "width": [], "height": [], "objects": []}
    for example in split.examples:
        annotations = example["annotations"]
        rows["image_id"].append(example["image_id"])
        rows["image"].append(example["image"])
        rows["width"].append(example["width"])
        rows["height"].append(example["height"])
        rows["objects"].append(
            {
                "id": [annotation["id"] for annotation in annotations],
                "area": [int(annotation["area"]) for annotation in annotations],
                "bbox": [annotation["bbox"] for annotation in annotations],
                "category": [annotation["category_id"] - 1 for annotation in annotations],
            }
        )
    features = datasets.Features(
        {
            "image_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "objects": datasets.Sequence(
                {
                    "id": datasets.Value("int64"),
                    "area": datasets.Value("int64"),
                    "bbox": datasets.Sequence(datasets.Value("float32"), length=4),
                    "category": datasets.ClassLabel(names=list(DEMO_CATEGORIES)),
                }
            ),
        }
    )
    dataset = datasets.Dataset.from_dict(rows, features=features)
    return dataset if with_sizes else dataset.remove_columns(["width", "height"])


def test_a_hub_dataset_in_the_cppe5_layout_gives_the_same_split(demo_coco):
    folder = open_coco_folder(*demo_coco["train"])
    for with_sizes in (True, False):  # without the size columns, the image headers give the sizes
        split = open_hub_detection(cppe5_dataset(demo_coco, with_sizes), "cppe5-like")
        assert split.id2label == dict(enumerate(DEMO_CATEGORIES)) and split.label_to_category_id == [0, 1, 2]
        assert len(split.examples) == len(folder.examples)
        for hub_example, folder_example in zip(split.examples, folder.examples, strict=True):
            assert hub_example["image"]["path"] == folder_example["image"]  # undecoded: read in the workers
            assert (hub_example["width"], hub_example["height"]) == (64, 64)
            boxes = [annotation["bbox"] for annotation in hub_example["annotations"]]
            assert boxes == [annotation["bbox"] for annotation in folder_example["annotations"]]
            categories = [annotation["category_id"] + 1 for annotation in hub_example["annotations"]]
            assert categories == [annotation["category_id"] for annotation in folder_example["annotations"]]


def test_a_hub_dataset_with_bad_rows_is_named(demo_coco):
    dataset = cppe5_dataset(demo_coco)
    with pytest.raises(CocoFormatError, match=r"cppe5-like has no column 'objects' \(its columns: "):
        open_hub_detection(dataset.remove_columns("objects"), "cppe5-like")

    def push_out(row):
        row["objects"]["bbox"][0] = [60.0, 0.0, 10.0, 10.0]
        return row

    with pytest.raises(CocoFormatError, match=r"cppe5-like: annotation \d+ \(image 'row 0', 64x64 px\) has bbox"):
        open_hub_detection(dataset.map(push_out), "cppe5-like")


# ---- COCO metrics with known answers


def three_sizes_ground_truth() -> dict:
    """One small (30 x 30), one medium (60 x 60) and one large (150 x 150) object in each of two 640 px images."""
    images = [{"id": image_id, "file_name": f"{image_id}.jpg", "width": 640, "height": 640} for image_id in (1, 2)]
    annotations = []
    for image_id in (1, 2):
        for side, category in ((30, 1), (60, 2), (150, 1)):
            box = [10.0 + side, 300.0 - side, float(side), float(side)]
            polygon = [[box[0], box[1], box[0] + side, box[1], box[0] + side, box[1] + side, box[0], box[1] + side]]
            annotations.append(
                {"image_id": image_id, "category_id": category, "bbox": box, "segmentation": polygon, "iscrowd": 0}
            )
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return check_coco_dataset({"images": images, "annotations": annotations, "categories": categories}, "gt")


def as_predictions(annotations: list[dict], shift: float = 0.0, with_masks: bool = False) -> list[dict]:
    """Each annotation predicted with score 0.9, moved right by `shift` times its width."""
    predictions = []
    for annotation in annotations:
        x, y, width, height = annotation["bbox"]
        box = [x + shift * width, y, width, height]
        prediction = {"image_id": annotation["image_id"], "category_id": annotation["category_id"], "score": 0.9}
        prediction["bbox"] = box
        if with_masks:
            mask = np.zeros((1, 640, 640), dtype=np.uint8)
            top, left = round(box[1]), round(box[0])
            mask[0, top : top + round(height), left : left + round(width)] = 1
            prediction["segmentation"] = masks_to_rles(mask)[0]
        predictions.append(prediction)
    return predictions


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_metrics_have_their_known_values(iou_type):
    """Perfect predictions score 1; boxes (and masks) moved by 7/30 of their width, a whole number of pixels, overlap
    at IoU 23/37 = 0.62, so they count at the thresholds 0.50, 0.55 and 0.60 only: mAP 3/10, AP50 1, AP75 0; no
    prediction scores 0."""
    ground_truth = build_ground_truth(three_sizes_ground_truth())
    annotations = ground_truth.dataset["annotations"]
    with_masks = iou_type == "segm"
    scores = evaluate_coco(ground_truth, as_predictions(annotations, with_masks=with_masks), iou_type)
    assert scores == pytest.approx(dict.fromkeys(scores, 1.0))
    shifted = evaluate_coco(ground_truth, as_predictions(annotations, 7 / 30, with_masks), iou_type)
    expected = {"map": 0.3, "map_50": 1.0, "map_75": 0.0, "map_small": 0.3, "map_medium": 0.3, "map_large": 0.3}
    assert shifted == pytest.approx(expected, abs=1e-6)
    assert evaluate_coco(ground_truth, [], iou_type) == dict.fromkeys(scores, 0.0)


def test_empty_size_ranges_report_minus_one_and_bad_predictions_are_refused():
    dataset = three_sizes_ground_truth()
    dataset["annotations"] = [a for a in dataset["annotations"] if a["bbox"][2] == 150]  # large objects only
    ground_truth = build_ground_truth(dataset)
    scores = evaluate_coco(ground_truth, as_predictions(dataset["annotations"]))
    assert scores == {
        "map": 1.0,
        "map_50": 1.0,
        "map_75": 1.0,
        "map_small": -1.0,
        "map_medium": -1.0,
        "map_large": 1.0,
    }
    with pytest.raises(ValueError, match=r"categories \[5\] that the ground truth does not hold"):
        evaluate_coco(ground_truth, [{**as_predictions(dataset["annotations"])[0], "category_id": 5}])
    without_masks = copy.deepcopy(dataset)
    for annotation in without_masks["annotations"]:
        del annotation["segmentation"]
    with pytest.raises(ValueError, match="Mask AP needs a segmentation"):
        evaluate_coco(build_ground_truth(without_masks), [], "segm")


def test_the_evaluator_gathers_batches_and_starts_afresh():
    ground_truth = build_ground_truth(three_sizes_ground_truth())
    predictions = as_predictions(ground_truth.dataset["annotations"], 7 / 30, with_masks=True)
    evaluator = CocoEvaluator(ground_truth, ("bbox", "segm"))
    evaluator.add(predictions[:4])
    evaluator.add(predictions[4:])
    metrics = evaluator.compute()
    assert metrics["map"] == pytest.approx(0.3) and metrics["segm_map"] == pytest.approx(0.3)
    assert sorted(metrics) == sorted([*metrics][:6] + [f"segm_{name}" for name in [*metrics][:6]])
    assert evaluator.compute()["map"] == 0.0  # nothing gathered since


def test_detections_become_coco_results_in_category_ids():
    results = detections_to_coco(
        7, torch.tensor([0.9, 0.2]), torch.tensor([1, 0]), torch.tensor([[1.0, 2.0, 11.0, 7.0], [0, 0, 4, 4]]), [3, 5]
    )
    assert results == [
        {"image_id": 7, "category_id": 5, "bbox": [1.0, 2.0, 10.0, 5.0], "score": pytest.approx(0.9)},
        {"image_id": 7, "category_id": 3, "bbox": [0.0, 0.0, 4.0, 4.0], "score": pytest.approx(0.2)},
    ]
