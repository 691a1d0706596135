# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Semantic segmentation data: image + mask pairs from the Hub, local folders or the offline demo, and the authors'
ADE20K augmentation (mmsegmentation's pipeline: random rescale, crop, flip, photometric distortion, pad).

An example is `{"image": ImageLike, "annotation": ImageLike}`; a mask is one channel of class indices.
"""

import colorsys
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from caev2_hf_cli.errors import UserError
from caev2_hf_cli.segmentation import DEMO_CLASS_NAMES

from ...data.decoding import ImageLike, decode_rgb_image, open_image, upright


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


# ---- Opening data


def open_hub_segmentation(
    dataset_name: str,
    dataset_config_name: str | None,
    split: str,
    image_column: str,
    annotation_column: str,
    revision: str | None = None,
):
    """A Hub split (map-style, prepared in the local cache) as rows with `image` and `annotation`, undecoded."""
    import datasets

    dataset = datasets.load_dataset(dataset_name, dataset_config_name, split=split, revision=revision)
    missing = [column for column in (image_column, annotation_column) if column not in dataset.column_names]
    if missing:
        raise UserError(
            f"{dataset_name} ({split}) has no column {missing[0]!r}; its columns are {dataset.column_names}: set "
            "--image_column / --annotation_column."
        )
    dataset = dataset.select_columns([image_column, annotation_column])
    for column in (image_column, annotation_column):  # decode in the workers, where a broken file can be reported
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    renames = {old: new for old, new in ((image_column, "image"), (annotation_column, "annotation")) if old != new}
    return dataset.rename_columns(renames) if renames else dataset


def pair_image_and_mask_folders(image_dir: str, annotation_dir: str) -> list[dict[str, str]]:
    """Rows pairing `image_dir/NAME.jpg` with `annotation_dir/NAME.png` by file stem (ADEChallengeData2016 layout)."""
    for kind, folder in (("image", image_dir), ("annotation", annotation_dir)):
        if not os.path.isdir(folder):
            raise UserError(f"The {kind} folder {folder!r} does not exist: check the --*_{kind}_dir paths.")

    def by_stem(folder: str) -> dict[str, str]:
        names = sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_SUFFIXES))
        return {os.path.splitext(name)[0]: os.path.join(folder, name) for name in names}

    images, masks = by_stem(image_dir), by_stem(annotation_dir)
    if not images:
        raise UserError(f"No image files ({', '.join(IMAGE_SUFFIXES)}) in {image_dir!r}.")
    unpaired = sorted(set(images) - set(masks))
    if unpaired:
        raise UserError(
            f"{len(unpaired)} image(s) in {image_dir!r} have no mask of the same name in {annotation_dir!r} (first: "
            f"{unpaired[0]!r}): every image needs NAME.png (or another image suffix) beside it."
        )
    return [{"image": path, "annotation": masks[stem]} for stem, path in images.items()]


def read_mask(annotation: ImageLike) -> np.ndarray:
    """A mask as a 2-D int64 array of class indices, upright as its image (`decode_image`); refuses colour masks (they
    would need a palette mapping)."""
    mask = upright(open_image(annotation))
    if mask.mode not in ("L", "P", "I", "I;16", "1"):
        raise UserError(
            f"A mask has mode {mask.mode}: masks must hold one channel of class indices (PNG mode L or P), "
            "not colours."
        )
    return np.asarray(mask, dtype=np.int64)


def reduce_zero_label(mask: np.ndarray, ignore_index: int) -> np.ndarray:
    """ADE20K's 0 ("other") -> ignore_index, class c -> c - 1 (mmsegmentation's `reduce_zero_label`)."""
    reduced = np.where(mask == 0, ignore_index, mask - 1)
    return np.where(mask == ignore_index, ignore_index, reduced)


# ---- The offline demo task


def _demo_photos() -> list[np.ndarray]:
    try:
        from sklearn.datasets import load_sample_images  # optional dependency, only for the offline demo
    except ImportError as error:
        raise ImportError(
            "The segmentation demo cuts its backgrounds from the two photos shipped with scikit-learn: "
            "`pip install scikit-learn` (or `pip install -e '.[dev]'`)."
        ) from error
    return load_sample_images().images


def make_demo_segmentation(num_images: int, image_size: int, seed: int) -> list[dict[str, Image.Image]]:
    """Coloured shapes (disk, square, triangle: classes 1-3) on textured backgrounds (class 0) cut from real photos.

    Each class has its own band of hues (red, green, blue, +-40 degrees, random saturation and brightness), which
    the photos also contain, so telling a shape from the background takes its flatness and outline too. Shapes may
    overlap (the last one drawn wins). Deterministic for a seed; made in memory, no download.
    """
    photos, rng = _demo_photos(), np.random.default_rng(seed)
    examples = []
    for _ in range(num_images):
        photo = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(image_size, min(photo.shape[:2]) + 1))
        top, left = (int(rng.integers(0, extent - side + 1)) for extent in photo.shape[:2])
        image = Image.fromarray(photo[top : top + side, left : left + side]).resize(
            (image_size, image_size), Image.Resampling.BILINEAR
        )
        mask = Image.new("L", (image_size, image_size), 0)
        draw_image, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
        for _ in range(int(rng.integers(1, 4))):
            label = int(rng.integers(1, len(DEMO_CLASS_NAMES)))
            size = int(rng.integers(image_size // 4, image_size // 2 + 1))
            x, y = (int(rng.integers(0, image_size - size + 1)) for _ in range(2))
            hue = ((label - 1) / 3 + rng.uniform(-1, 1) / 9) % 1
            colour = tuple(
                round(255 * value) for value in colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1), rng.uniform(0.5, 1))
            )
            box = [x, y, x + size - 1, y + size - 1]
            for draw, fill in ((draw_image, colour), (draw_mask, label)):
                if label == 1:
                    draw.ellipse(box, fill=fill)
                elif label == 2:
                    draw.rectangle(box, fill=fill)
                else:
                    draw.polygon([(x + size // 2, y), (x, y + size - 1), (x + size - 1, y + size - 1)], fill=fill)
        examples.append({"image": image, "annotation": mask})
    return examples


# ---- Augmentation (mmsegmentation's ADE20K pipeline)


def rescale_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """Size keeping the aspect ratio with long side <= max(scale) and short side <= min(scale) (`mmcv.imrescale`)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_pair(image: Image.Image, mask: np.ndarray, size: tuple[int, int]) -> tuple[Image.Image, np.ndarray]:
    """Image bilinear, mask nearest, to `(height, width)`."""
    if (image.height, image.width) == size:
        return image, mask
    image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    mask_image = Image.fromarray(mask.astype(np.int32), mode="I").resize((size[1], size[0]), Image.Resampling.NEAREST)
    return image, np.asarray(mask_image, dtype=np.int64)


def random_crop_box(
    mask: np.ndarray, crop_size: int, cat_max_ratio: float, ignore_index: int, generator: torch.Generator | None
) -> tuple[int, int]:
    """Top-left corner of a crop; up to 10 draws until no class covers more than `cat_max_ratio` of it (mmseg)."""
    margin_h, margin_w = max(mask.shape[0] - crop_size, 0), max(mask.shape[1] - crop_size, 0)

    def draw() -> tuple[int, int]:
        return (
            int(torch.randint(margin_h + 1, (1,), generator=generator)),
            int(torch.randint(margin_w + 1, (1,), generator=generator)),
        )

    top, left = draw()
    if cat_max_ratio >= 1:
        return top, left
    for _ in range(10):
        labels, counts = np.unique(mask[top : top + crop_size, left : left + crop_size], return_counts=True)
        counts = counts[labels != ignore_index]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
        top, left = draw()
    return top, left


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """`(3, H, W)` RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of a turn)."""
    maximum, argmax = rgb.max(dim=0)
    delta = maximum - rgb.min(dim=0).values
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    red, green, blue = rgb
    hue = torch.stack([(green - blue) / safe % 6, (blue - red) / safe + 2, (red - green) / safe + 4])
    hue = torch.where(delta > 0, hue.gather(0, argmax[None])[0] / 6, torch.zeros_like(delta))
    saturation = torch.where(maximum > 0, delta / torch.where(maximum > 0, maximum, torch.ones_like(maximum)), 0.0)
    return torch.stack([hue, saturation, maximum])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = hsv
    """The inverse of `rgb_to_hsv`: f(n) = V - V S max(0, min(k, 4 - k, 1)) with k = (n + 6 H) mod 6, n = 5, 3, 1."""

    def channel(n: int) -> torch.Tensor:
        k = (n + hue * 6) % 6
        return value - value * saturation * (2 - (k - 2).abs()).clamp(0, 1)

    return torch.stack([channel(5), channel(3), channel(1)])


def photometric_distortion(
    image: torch.Tensor,
    generator: torch.Generator | None = None,
    brightness_delta: float = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: float = 18,
) -> torch.Tensor:
    """mmsegmentation's `PhotoMetricDistortion` on a `(3, H, W)` float image in [0, 255]: each step with probability
    1/2, brightness (+delta), contrast (x alpha, before or after the colour steps), saturation (x alpha in HSV), hue
    (+delta of 180 per turn, OpenCV's uint8 hue), clamped to [0, 255] after each step."""

    def coin() -> bool:
        return bool(torch.randint(2, (1,), generator=generator))

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    if coin():
        image = (image + uniform(-brightness_delta, brightness_delta)).clamp(0, 255)
    contrast_first = coin()
    if contrast_first and coin():
        image = (image * uniform(*contrast_range)).clamp(0, 255)
    if coin():
        hsv = rgb_to_hsv(image / 255)
        hsv[1] = (hsv[1] * uniform(*saturation_range)).clamp(0, 1)
        image = hsv_to_rgb(hsv) * 255
    if coin():
        hsv = rgb_to_hsv(image / 255)
        shift = int(torch.randint(-int(hue_delta), int(hue_delta) + 1, (1,), generator=generator))
        hsv[0] = (hsv[0] + shift / 180) % 1
        image = hsv_to_rgb(hsv) * 255
    if not contrast_first and coin():
        image = (image * uniform(*contrast_range)).clamp(0, 255)
    return image


class SegmentationTrainTransform:
    """The authors' ADE20K training pipeline on one pair -> `{"pixel_values" (3, crop, crop), "labels" (crop, crop)}`.

    Rescale (aspect kept) into `scale x ratio`, ratio uniform in `ratio_range`; random crop (class-balanced, see
    `random_crop_box`); horizontal flip; photometric distortion; normalise; pad to the crop with 0 (image, after
    normalisation) and `ignore_index` (mask). Randomness from torch's generator, so DataLoader workers differ.
    """

    def __init__(
        self,
        crop_size: int,
        scale: Sequence[int],
        ratio_range: Sequence[float],
        image_mean: Sequence[float],
        image_std: Sequence[float],
        cat_max_ratio: float = 0.75,
        hflip: bool = True,
        photometric: bool = True,
        reduce_labels: bool = False,
        ignore_index: int = 255,
    ) -> None:
        self.crop_size, self.scale, self.ratio_range = crop_size, tuple(scale), tuple(ratio_range)
        self.mean = torch.tensor(image_mean).view(3, 1, 1) * 255
        self.std = torch.tensor(image_std).view(3, 1, 1) * 255
        self.cat_max_ratio, self.hflip, self.photometric = cat_max_ratio, hflip, photometric
        self.reduce_labels, self.ignore_index = reduce_labels, ignore_index

    def __call__(self, example: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        image, mask = load_pair(example, self.reduce_labels, self.ignore_index)
        low, high = self.ratio_range
        ratio = low + (high - low) * float(torch.rand((), generator=generator))
        scale = [int(side * ratio) for side in self.scale]
        image, mask = resize_pair(image, mask, rescale_size(image.height, image.width, scale))
        top, left = random_crop_box(mask, self.crop_size, self.cat_max_ratio, self.ignore_index, generator)
        crop = slice(top, top + self.crop_size), slice(left, left + self.crop_size)
        pixels = torch.from_numpy(np.asarray(image)[crop].copy()).permute(2, 0, 1).float()
        labels = torch.from_numpy(mask[crop].copy())
        if self.hflip and bool(torch.randint(2, (1,), generator=generator)):
            pixels, labels = pixels.flip(-1), labels.flip(-1)
        if self.photometric:
            pixels = photometric_distortion(pixels, generator)
        pixels = (pixels - self.mean) / self.std
        pad = (0, self.crop_size - pixels.shape[-1], 0, self.crop_size - pixels.shape[-2])
        return {"pixel_values": F.pad(pixels, pad, value=0.0), "labels": F.pad(labels, pad, value=self.ignore_index)}


class SegmentationEvalTransform:
    """Test view: the image rescaled (aspect kept) into `scale` and normalised; the mask at the original size, as
    mmsegmentation scores predictions resized back to it."""

    def __init__(
        self,
        scale: Sequence[int],
        image_mean: Sequence[float],
        image_std: Sequence[float],
        reduce_labels: bool = False,
        ignore_index: int = 255,
    ) -> None:
        self.scale = tuple(scale)
        self.mean = torch.tensor(image_mean).view(3, 1, 1) * 255
        self.std = torch.tensor(image_std).view(3, 1, 1) * 255
        self.reduce_labels, self.ignore_index = reduce_labels, ignore_index

    def __call__(self, example: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        image, mask = load_pair(example, self.reduce_labels, self.ignore_index)
        size = rescale_size(image.height, image.width, self.scale)
        if (image.height, image.width) != size:
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()
        return {"pixel_values": (pixels - self.mean) / self.std, "labels": torch.from_numpy(mask)}


def load_pair(example: dict, reduce_labels: bool, ignore_index: int) -> tuple[Image.Image, np.ndarray]:
    """Decoded RGB image and int64 mask of one example, checked to have the same size."""
    image, reason = decode_rgb_image(example["image"])
    if image is None:
        raise UserError(f"An image could not be read ({reason}): remove it or its pair from the data.")
    mask = read_mask(example["annotation"])
    if mask.shape != (image.height, image.width):
        raise UserError(
            f"A mask of {mask.shape[1]}x{mask.shape[0]} px belongs to an image of {image.width}x{image.height} px: "
            "masks must have their image's size."
            + (
                " Its sides are the mask's, swapped: an image with an EXIF orientation is decoded upright (as "
                "datasets and transformers decode it), so its mask must be drawn on the upright image."
                if mask.shape == (image.width, image.height)
                else ""
            )
        )
    return image, reduce_zero_label(mask, ignore_index) if reduce_labels else mask


class SegmentationDataset(torch.utils.data.Dataset):
    """Map-style dataset applying a transform to rows (`datasets.Dataset`, list of dicts) of image + annotation."""

    def __init__(self, rows, transform) -> None:
        self.rows, self.transform = rows, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.transform(self.rows[index])


def collate_segmentation_batch(examples: list[dict]) -> dict:
    """Stacks training crops; evaluation images of different sizes stay lists. `image_sizes` (the masks' sizes) comes
    first, so the Trainer counts images, not channels, when the rest are lists."""
    batch = {"image_sizes": torch.tensor([list(example["labels"].shape) for example in examples])}
    for key in ("pixel_values", "labels"):
        tensors = [example[key] for example in examples]
        same_shape = all(tensor.shape == tensors[0].shape for tensor in tensors)
        batch[key] = torch.stack(tensors) if same_shape else tensors
    return batch


def open_segmentation_splits(data_args, seed: int = 0) -> tuple[Sequence[dict], Sequence[dict]]:
    """(training rows, validation rows) from `SegmentationDataArguments`: Hub, local folders or the demo task."""
    if data_args.demo_data:
        size = data_args.demo_image_size
        splits = [
            make_demo_segmentation(data_args.demo_num_train_images, size, seed),
            make_demo_segmentation(data_args.demo_num_validation_images, size, seed + 1_000_003),  # held out
        ]
    elif data_args.dataset_name is not None:
        splits = [
            open_hub_segmentation(
                data_args.dataset_name,
                data_args.dataset_config_name,
                split,
                data_args.image_column,
                data_args.annotation_column,
                data_args.dataset_revision,
            )  # fmt: skip
            for split in (data_args.train_split, data_args.validation_split)
        ]
    else:
        splits = [
            pair_image_and_mask_folders(data_args.train_image_dir, data_args.train_annotation_dir),
            pair_image_and_mask_folders(data_args.validation_image_dir, data_args.validation_annotation_dir),
        ]
    train_rows, eval_rows = splits
    if data_args.max_eval_samples is not None:
        eval_rows = (
            eval_rows[: data_args.max_eval_samples]
            if isinstance(eval_rows, list)
            else eval_rows.select(range(min(data_args.max_eval_samples, len(eval_rows))))
        )
    return train_rows, eval_rows
