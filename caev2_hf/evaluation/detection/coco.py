# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""COCO-format detection data, boxes and instance masks (docs/detection.md#data): an image folder with an
`instances_*.json`, or a Hub-style dataset whose `objects` column follows `cppe-5`.

Both become a `CocoSplit`: the checked ground truth as a pycocotools `COCO` (what the evaluator scores against) and
one example per image, `{"image", "image_id", "width", "height", "annotations"}` with COCO annotations (`bbox` as
`[x, y, width, height]` in pixels, `category_id`, `area`, `iscrowd`, optional `segmentation` as polygons or RLE).
Bad input raises `CocoFormatError`, one line naming the file and the fix.
"""

import contextlib
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from transformers.utils import logging

from caev2_hf_cli.detection import DetectionDataArguments
from caev2_hf_cli.errors import UserError

from ...data.decoding import ImageLike, open_image, upright_size
from .demo import demo_coco_paths, write_demo_coco


logger = logging.get_logger(__name__)

BOX_TOLERANCE = 1.0  # pixels a box may pass an image edge by (rounding in exported files); clipped to the image


class CocoFormatError(UserError):
    """COCO-format input that cannot be used; the message names the file, the entry and the fix (a command shows
    it as one line, `error: ...`)."""


@dataclass
class CocoSplit:
    """One split: the ground truth as pycocotools sees it, and one example per image that can be read.

    Attributes:
        ground_truth: `COCO` holding the split's images, categories and every annotation (crowd regions included,
            which the evaluator ignores rather than counts as missed).
        examples: `{"image", "image_id", "width", "height", "annotations"}` per image, in the file's order.
        categories: `[{"id", "name"}]` sorted by id; label `i` of a model is `categories[i]`.
        num_missing_images: Images named in the annotations but absent on disk (skipped with their annotations).
    """

    ground_truth: COCO
    examples: "CocoExamples"
    categories: list[dict]
    num_missing_images: int = 0

    @property
    def id2label(self) -> dict[int, str]:
        return {index: category["name"] for index, category in enumerate(self.categories)}

    @property
    def label_to_category_id(self) -> list[int]:
        return [category["id"] for category in self.categories]


def build_ground_truth(dataset: dict) -> COCO:
    """A pycocotools `COCO` from an in-memory COCO dict, without its progress prints."""
    ground_truth = COCO()
    ground_truth.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
    return ground_truth


# ---- Reading and checking an annotation file


def read_annotation_file(path: str) -> dict:
    """The JSON mapping of `instances_*.json`, or a `CocoFormatError` saying why it cannot be read."""
    if not os.path.isfile(path):
        where = "a folder, not a file" if os.path.isdir(path) else "no such file"
        raise CocoFormatError(
            f"Annotation file {path}: {where}. Give the COCO instances JSON (e.g. "
            "annotations/instances_train2017.json)."
        )
    try:
        with open(path, encoding="utf-8") as file:
            dataset = json.load(file)
    except json.JSONDecodeError as error:
        raise CocoFormatError(
            f"Annotation file {path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}): "
            "repair or re-export it."
        ) from None
    except UnicodeDecodeError:
        raise CocoFormatError(f"Annotation file {path} is not UTF-8 text: give the COCO instances JSON.") from None
    if not isinstance(dataset, dict):
        raise CocoFormatError(
            f"Annotation file {path} holds a JSON {type(dataset).__name__}, not the COCO mapping with 'images', "
            "'annotations' and 'categories'."
        )
    return dataset


def check_coco_dataset(dataset: dict, source: str) -> dict:
    """Checks a COCO dict and returns it completed (annotation ids, areas, iscrowd); any problem is one
    `CocoFormatError` naming `source`, the entry and the fix."""
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(dataset.get(key), list)]
    if missing:
        raise CocoFormatError(
            f"{source} has no list {missing[0]!r}: a COCO instances file holds 'images', 'annotations' and "
            "'categories' lists."
        )
    categories = check_categories(dataset["categories"], source)
    images = check_images(dataset["images"], source)
    annotations = [
        check_annotation(annotation, index, images, categories, source)
        for index, annotation in enumerate(dataset["annotations"])
    ]
    number_annotations(annotations)
    return {
        "images": list(images.values()),
        "annotations": annotations,
        "categories": sorted(categories.values(), key=lambda category: category["id"]),
    }


def check_categories(categories: list, source: str) -> dict[int, dict]:
    checked = {}
    for category in categories:
        if not isinstance(category, dict) or not isinstance(category.get("id"), int) or "name" not in category:
            raise CocoFormatError(f"{source}: category {category!r} needs an integer 'id' and a 'name'.")
        if category["id"] in checked:
            raise CocoFormatError(f"{source}: category id {category['id']} appears twice; ids must be unique.")
        checked[category["id"]] = {"id": category["id"], "name": str(category["name"])}
    if not checked:
        raise CocoFormatError(f"{source} lists no categories: a detector needs at least one class.")
    return checked


def check_images(images: list, source: str) -> dict[int, dict]:
    checked = {}
    for image in images:
        fields = ("id", "file_name", "width", "height")
        if not isinstance(image, dict) or any(field not in image for field in fields):
            raise CocoFormatError(f"{source}: image entry {image!r} needs {', '.join(fields)}.")
        if not all(isinstance(image[side], int) and image[side] > 0 for side in ("width", "height")):
            raise CocoFormatError(
                f"{source}: image {image['file_name']!r} has width {image['width']!r} and height {image['height']!r}; "
                "both must be positive integers (the image's size in pixels)."
            )
        if image["id"] in checked:
            raise CocoFormatError(f"{source}: image id {image['id']!r} appears twice; ids must be unique.")
        checked[image["id"]] = image
    return checked


def check_annotation(annotation: dict, index: int, images: dict, categories: dict, source: str) -> dict:
    """One annotation checked against its image and the categories; returns a completed copy."""
    name = (
        f"annotation {annotation.get('id', f'#{index}')}" if isinstance(annotation, dict) else f"annotation #{index}"
    )
    if not isinstance(annotation, dict) or annotation.get("image_id") not in images:
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        raise CocoFormatError(f"{source}: {name} refers to image id {image_id!r}, which 'images' does not list.")
    image = images[annotation["image_id"]]
    where = f"{source}: {name} (image {image['file_name']!r}, {image['width']}x{image['height']} px)"
    if annotation.get("category_id") not in categories:
        raise CocoFormatError(
            f"{where} has category_id {annotation.get('category_id')!r}, which is not in 'categories' "
            f"(ids {sorted(categories)}): add the category or correct the id."
        )
    box = check_box(annotation.get("bbox"), image, where)
    completed = {**annotation, "bbox": box, "iscrowd": int(annotation.get("iscrowd", 0))}
    if completed.get("segmentation") in ([], None):  # box-only exports often write an empty list
        completed.pop("segmentation", None)
    else:
        check_segmentation(completed["segmentation"], image, where)
    if not isinstance(completed.get("area"), int | float):
        completed["area"] = annotation_area(completed, image)
    return completed


def check_box(box, image: dict, where: str) -> list[float]:
    """`[x, y, width, height]` inside the image (within `BOX_TOLERANCE` pixels, then clipped) and of positive size."""
    if not isinstance(box, list | tuple) or len(box) != 4 or not all(isinstance(value, int | float) for value in box):
        raise CocoFormatError(f"{where} has bbox {box!r}: give [x, y, width, height] in pixels.")
    x, y, width, height = (float(value) for value in box)
    if not all(math.isfinite(value) for value in (x, y, width, height)) or width <= 0 or height <= 0:
        raise CocoFormatError(
            f"{where} has bbox {list(box)} of zero or negative size (or not finite): width and height must be "
            "positive; fix the box or remove the annotation."
        )
    right, bottom = x + width, y + height
    tolerance = BOX_TOLERANCE
    if x < -tolerance or y < -tolerance or right > image["width"] + tolerance or bottom > image["height"] + tolerance:
        raise CocoFormatError(
            f"{where} has bbox {list(box)} (x, y, width, height) reaching outside the image: fix the box, the "
            "image's width/height, or remove the annotation."
        )
    x, y = max(x, 0.0), max(y, 0.0)
    return [x, y, min(right, image["width"]) - x, min(bottom, image["height"]) - y]


def check_segmentation(segmentation, image: dict, where: str) -> None:
    """Polygons (`[[x1, y1, x2, y2, ...], ...]`) or an RLE (`{"size": [height, width], "counts": ...}`)."""
    if isinstance(segmentation, dict):
        if list(segmentation.get("size", [])) != [image["height"], image["width"]] or "counts" not in segmentation:
            raise CocoFormatError(
                f"{where} has an RLE segmentation of size {segmentation.get('size')!r}: it must be "
                f"[height, width] = [{image['height']}, {image['width']}], with 'counts'."
            )
        return
    polygons_ok = isinstance(segmentation, list) and all(
        isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0 for polygon in segmentation
    )
    if not polygons_ok:
        raise CocoFormatError(
            f"{where} has a segmentation that is neither polygons ([[x1, y1, x2, y2, x3, y3, ...]], 3 points or "
            "more each) nor an RLE dict: fix or remove it."
        )


def segmentation_to_rle(segmentation, height: int, width: int) -> dict:
    """Polygons, an uncompressed or a compressed RLE -> one compressed RLE (pycocotools)."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def annotation_area(annotation: dict, image: dict) -> float:
    """COCO's area: of the mask when there is one, else of the box."""
    if "segmentation" in annotation:
        rle = segmentation_to_rle(annotation["segmentation"], image["height"], image["width"])
        return float(mask_utils.area(rle))
    return annotation["bbox"][2] * annotation["bbox"][3]


def annotation_masks(annotations: list[dict], height: int, width: int) -> np.ndarray:
    """`(len(annotations), height, width)` uint8 masks of annotations that carry a segmentation."""
    masks = [mask_utils.decode(segmentation_to_rle(item["segmentation"], height, width)) for item in annotations]
    return np.stack(masks) if masks else np.zeros((0, height, width), dtype=np.uint8)


def check_instance_masks(split: CocoSplit, source: str) -> None:
    """Every annotation of the split carries a segmentation, as instance segmentation trains on and scores masks."""
    for annotation in split.ground_truth.dataset["annotations"]:
        if "segmentation" not in annotation:
            image = split.ground_truth.imgs[annotation["image_id"]]
            raise CocoFormatError(
                f"{source}: annotation {annotation['id']} (image {image['file_name']!r}) has no segmentation: "
                "instance segmentation needs a mask (polygons or RLE) on every annotation; for boxes alone, use "
                "run_object_detection.py."
            )


def number_annotations(annotations: list[dict]) -> None:
    """Gives annotations without an `id` unused positive ids (pycocotools needs one each)."""
    taken = {annotation["id"] for annotation in annotations if "id" in annotation}
    next_id = max(taken, default=0) + 1
    for annotation in annotations:
        if "id" not in annotation:
            annotation["id"], next_id = next_id, next_id + 1


# ---- The two sources


def open_coco_folder(image_dir: str, annotation_file: str) -> CocoSplit:
    """An image folder with its `instances_*.json`. Images the file names but the folder lacks are counted, logged
    once and skipped with their annotations (in training and in scoring alike)."""
    if not os.path.isdir(image_dir):
        raise CocoFormatError(f"Image folder {image_dir}: no such folder. Give the folder the file_names refer to.")
    dataset = check_coco_dataset(read_annotation_file(annotation_file), annotation_file)
    present = [image for image in dataset["images"] if os.path.isfile(os.path.join(image_dir, image["file_name"]))]
    num_missing = len(dataset["images"]) - len(present)
    if not present:
        raise CocoFormatError(
            f"None of the {len(dataset['images'])} images named in {annotation_file} is in {image_dir}: check that "
            "the folder and the annotation file belong together."
        )
    if num_missing:
        absent = next(image for image in dataset["images"] if image not in present)
        logger.warning(
            f"{num_missing} of {len(dataset['images'])} images named in {annotation_file} are not in {image_dir} "
            f"(first: {absent['file_name']!r}); they are skipped with their annotations."
        )
        dataset = keep_images(dataset, present)
    paths = [os.path.join(image_dir, image["file_name"]) for image in dataset["images"]]
    return build_split(dataset, paths.__getitem__, num_missing)


def keep_images(dataset: dict, images: list[dict]) -> dict:
    kept = {image["id"] for image in images}
    annotations = [annotation for annotation in dataset["annotations"] if annotation["image_id"] in kept]
    return {**dataset, "images": images, "annotations": annotations}


def build_split(dataset: dict, load_image: Callable[[int], ImageLike], num_missing: int = 0) -> CocoSplit:
    """The split of a checked COCO dict whose image at position `i` of `dataset["images"]` is `load_image(i)`."""
    ground_truth = build_ground_truth(dataset)
    return CocoSplit(ground_truth, CocoExamples(dataset["images"], ground_truth, load_image), dataset["categories"],
                     num_missing)  # fmt: skip


class CocoExamples(Sequence):
    """The examples of a split; an image is fetched only when its example is read, so a Hub dataset's rows stay on
    disk and DataLoader workers receive paths, not pixels."""

    def __init__(self, images: list[dict], ground_truth: COCO, load_image: Callable[[int], ImageLike]) -> None:
        self.images, self.ground_truth, self.load_image = images, ground_truth, load_image

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index]
        return {
            "image": self.load_image(index),
            "image_id": image["id"],
            "width": image["width"],
            "height": image["height"],
            "annotations": self.ground_truth.imgToAnns.get(image["id"], []),
        }


class HubImages:
    """`load_image` of a Hub split: row `i`'s image, undecoded (`{"bytes", "path"}`); picklable for workers."""

    def __init__(self, dataset, column: str) -> None:
        from datasets import Image

        feature = dataset.features[column]
        self.dataset = dataset.cast_column(column, Image(decode=False)) if isinstance(feature, Image) else dataset
        self.column = column

    def __call__(self, index: int) -> ImageLike:
        return self.dataset[index][self.column]


def hub_category_names(dataset, objects_column: str = "objects") -> list[str] | None:
    """Class names of `objects.category` when it is a `ClassLabel` (as in cppe-5), else None."""
    category = dataset.features[objects_column].get("category") if objects_column in dataset.features else None
    feature = getattr(category, "feature", category)
    return list(feature.names) if hasattr(feature, "names") else None


def open_hub_detection(
    dataset, source: str, image_column: str = "image", objects_column: str = "objects"
) -> CocoSplit:
    """A `datasets.Dataset` in the cppe-5 layout: `image`, optional `image_id` / `width` / `height`, and `objects`
    with `bbox` ([x, y, width, height] in pixels), `category` (a `ClassLabel` index) and optional `id`, `area`,
    `iscrowd`, `segmentation`. Image sizes missing from the rows are read from the image headers."""
    for column in (image_column, objects_column):
        if column not in dataset.column_names:
            raise CocoFormatError(
                f"{source} has no column {column!r} (its columns: {dataset.column_names}): detection data needs an "
                "image column and an objects column in the cppe-5 layout."
            )
    images = HubImages(dataset, image_column)
    rows = dataset.select_columns([column for column in dataset.column_names if column != image_column])
    coco = {"images": [], "annotations": [], "categories": []}
    for index, row in enumerate(rows):
        image_id = int(row.get("image_id", index))
        width, height = row.get("width"), row.get("height")
        if width is None or height is None:
            width, height = upright_size(open_image(images(index)))  # as decoded: EXIF orientation applied
        coco["images"].append({"id": image_id, "file_name": f"row {index}", "width": width, "height": height})
        coco["annotations"] += objects_to_annotations(row[objects_column], image_id)
    names = hub_category_names(dataset, objects_column)
    if names is None:  # plain integer categories: named by their number
        names = [str(index) for index in range(1 + max((a["category_id"] for a in coco["annotations"]), default=0))]
    coco["categories"] = [{"id": index, "name": name} for index, name in enumerate(names)]
    return build_split(check_coco_dataset(coco, source), images)


def objects_to_annotations(objects: dict, image_id: int) -> list[dict]:
    """cppe-5's column-wise `objects` (`{"bbox": [...], "category": [...], ...}`) -> COCO annotations."""
    annotations = []
    for position, (box, category) in enumerate(zip(objects["bbox"], objects["category"], strict=True)):
        annotation = {"image_id": image_id, "bbox": list(box), "category_id": int(category)}
        for key in ("id", "area", "iscrowd", "segmentation"):
            values = objects.get(key)
            if values is not None and values[position] is not None:
                annotation[key] = values[position]
        annotations.append(annotation)
    return annotations


def load_hub_detection(
    dataset_name: str,
    config_name: str | None,
    split: str,
    revision: str | None = None,
    image_column: str = "image",
    objects_column: str = "objects",
) -> CocoSplit:
    """A Hub dataset's split in the cppe-5 layout (`open_hub_detection`), prepared in the local cache."""
    import datasets

    dataset = datasets.load_dataset(dataset_name, config_name, split=split, revision=revision)
    return open_hub_detection(dataset, f"{dataset_name} ({split})", image_column, objects_column)


def open_detection_splits(
    data_args: DetectionDataArguments, seed: int, write_demo: bool = True
) -> tuple[CocoSplit, CocoSplit]:
    """(training, held-out) splits of a detection command's data: COCO folders, a Hub dataset or the offline demo
    (written into `demo_dir` first, unless `write_demo` is false: one process of a node writes it, the others read
    what it wrote)."""
    if data_args.demo_data:
        if write_demo:
            written = write_demo_coco(
                data_args.demo_dir, data_args.demo_num_train_images, data_args.demo_num_validation_images,
                data_args.demo_image_size, seed,
            )  # fmt: skip
        else:
            written = demo_coco_paths(data_args.demo_dir)
        return open_coco_folder(*written["train"]), open_coco_folder(*written["validation"])
    if data_args.dataset_name is not None:
        return tuple(
            load_hub_detection(
                data_args.dataset_name,
                data_args.dataset_config_name,
                split,
                data_args.dataset_revision,
                data_args.image_column,
                data_args.objects_column,
            )  # fmt: skip
            for split in (data_args.train_split, data_args.validation_split)
        )
    return (
        open_coco_folder(data_args.train_image_dir, data_args.train_annotation_file),
        open_coco_folder(data_args.validation_image_dir, data_args.validation_annotation_file),
    )
