# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""The offline detection demo: coloured shapes pasted onto crops of real photos, written as a COCO folder with boxes
and polygon masks (docs/detection.md#the-offline-demo). No download; the same files for the same seed."""

import colorsys
import math
import os
from functools import partial

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from ...data.demo import load_sample_photos, random_square_crop
from ...files import write_atomically, write_json


DEMO_CATEGORIES = ("ellipse", "rectangle", "triangle")
DEMO_SPLITS = ("train", "validation")
ELLIPSE_POINTS = 32  # an ellipse is drawn and annotated as the same 32-gon
MAX_PLACEMENT_TRIES = 50


def shape_polygon(kind: str, box: tuple[float, float, float, float], rng: np.random.Generator) -> list[float]:
    """`[x1, y1, x2, y2, ...]` of a shape filling the box `(x, y, width, height)`."""
    x, y, width, height = box
    if kind == "rectangle":
        points = [(x, y), (x + width, y), (x + width, y + height), (x, y + height)]
    elif kind == "ellipse":
        angles = [2 * math.pi * step / ELLIPSE_POINTS for step in range(ELLIPSE_POINTS)]
        centre_x, centre_y = x + width / 2, y + height / 2
        points = [(centre_x + width / 2 * math.cos(a), centre_y + height / 2 * math.sin(a)) for a in angles]
    else:  # a triangle with its apex somewhere on the top edge
        points = [(x + width * rng.uniform(0, 1), y), (x + width, y + height), (x, y + height)]
    return [round(coordinate, 2) for point in points for coordinate in point]


def shape_colour(label: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """A colour from the class's band of hues (thirds of the wheel, +-40 degrees), which the photos also contain, so
    telling a shape from the background takes its outline and flatness too (as in the segmentation demo)."""
    hue = (label / len(DEMO_CATEGORIES) + rng.uniform(-1, 1) / 9) % 1
    red, green, blue = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1), rng.uniform(0.5, 1))
    return round(255 * red), round(255 * green), round(255 * blue)


def place_boxes(image_size: int, count: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """Up to `count` non-overlapping boxes, each side between a fifth and a half of the image."""
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(MAX_PLACEMENT_TRIES):
        if len(boxes) == count:
            break
        width, height = (int(rng.integers(image_size // 5, image_size // 2 + 1)) for _ in range(2))
        x, y = int(rng.integers(0, image_size - width + 1)), int(rng.integers(0, image_size - height + 1))
        apart = all(x >= bx + bw or bx >= x + width or y >= by + bh or by >= y + height for bx, by, bw, bh in boxes)
        if apart:
            boxes.append((x, y, width, height))
    return boxes


def make_demo_image(
    image_id: int, image_size: int, photos: list, rng: np.random.Generator
) -> tuple[Image.Image, list]:
    """One image with 1-3 shapes and their COCO annotations (box, polygon, mask area, category id = class + 1)."""
    image = random_square_crop(photos, image_size, rng)
    draw, annotations = ImageDraw.Draw(image), []
    for box in place_boxes(image_size, int(rng.integers(1, 4)), rng):
        label = int(rng.integers(len(DEMO_CATEGORIES)))
        polygon = shape_polygon(DEMO_CATEGORIES[label], box, rng)
        draw.polygon(polygon, fill=shape_colour(label, rng))
        xs, ys = polygon[0::2], polygon[1::2]
        rle = mask_utils.frPyObjects([polygon], image_size, image_size)[0]
        annotations.append(
            {
                "image_id": image_id,
                "category_id": label + 1,
                "bbox": [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)],
                "segmentation": [polygon],
                "area": float(mask_utils.area(rle)),
                "iscrowd": 0,
            }
        )
    return image, annotations


def demo_coco_paths(output_dir: str) -> dict[str, tuple[str, str]]:
    """`{split: (image folder, annotation file)}` of the demo data `write_demo_coco` writes into `output_dir`."""
    return {
        split: (os.path.join(output_dir, split), os.path.join(output_dir, "annotations", f"instances_{split}.json"))
        for split in DEMO_SPLITS
    }


def write_demo_coco(
    output_dir: str, num_train_images: int = 64, num_validation_images: int = 16, image_size: int = 128, seed: int = 0
) -> dict[str, tuple[str, str]]:
    """Writes `output_dir/{train,validation}/*.jpg` and `output_dir/annotations/instances_{split}.json`.

    Returns `{split: (image folder, annotation file)}`. The validation images come from a seed of their own, so
    they are held out.
    """
    photos = list(load_sample_photos().values())
    counts = {"train": num_train_images, "validation": num_validation_images}
    seeds = {"train": seed, "validation": seed + 1_000_003}
    written = demo_coco_paths(output_dir)
    os.makedirs(os.path.join(output_dir, "annotations"), exist_ok=True)
    for split, (image_dir, annotation_file) in written.items():
        rng = np.random.default_rng(seeds[split])
        os.makedirs(image_dir, exist_ok=True)
        images, annotations = [], []
        for index in range(counts[split]):
            image, image_annotations = make_demo_image(index + 1, image_size, photos, rng)
            file_name = f"{index:05d}.jpg"
            write_atomically(os.path.join(image_dir, file_name), partial(image.save, format="JPEG", quality=95))
            images.append({"id": index + 1, "file_name": file_name, "width": image_size, "height": image_size})
            annotations += image_annotations
        for number, annotation in enumerate(annotations, start=1):
            annotation["id"] = number
        categories = [{"id": label + 1, "name": name} for label, name in enumerate(DEMO_CATEGORIES)]
        write_json(annotation_file, {"images": images, "annotations": annotations, "categories": categories})
    return written
