"""Offline demo images: crops of the two photos shipped with scikit-learn, as an image folder or webdataset shards,
and the photos themselves for the synthetic demo tasks."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator

import numpy as np
from PIL import Image


def load_sample_photos() -> dict[str, np.ndarray]:
    """The two photos shipped with scikit-learn (`china`, `flower`: 427 x 640 RGB arrays), the offline demos'
    only source of real pixels; no download."""
    try:
        from sklearn.datasets import load_sample_images  # optional dependency, only for the offline demos
    except ImportError as error:
        raise ImportError(
            "The offline demos cut their images from the two photos shipped with scikit-learn: "
            "`pip install scikit-learn` (or `pip install -e '.[dev]'`)."
        ) from error
    sample = load_sample_images()
    names = [os.path.splitext(os.path.basename(name))[0] for name in sample.filenames]
    return dict(zip(names, sample.images, strict=True))


def random_square_crop(photos: list[np.ndarray], image_size: int, rng: np.random.Generator) -> Image.Image:
    """A square crop of a random photo, of random side (at least `image_size`), resized to `image_size`: a textured
    background for the synthetic demo tasks."""
    photo = photos[int(rng.integers(len(photos)))]
    side = int(rng.integers(image_size, min(photo.shape[:2]) + 1))
    top, left = (int(rng.integers(0, extent - side + 1)) for extent in photo.shape[:2])
    crop = Image.fromarray(photo[top : top + side, left : left + side])
    return crop.resize((image_size, image_size), Image.Resampling.BILINEAR)


def _demo_crops(num_images: int, image_size: int, seed: int) -> Iterator[tuple[Image.Image, int, str]]:
    """Random crops and flips of the two photos shipped with scikit-learn: (image, label, class name)."""
    photos = load_sample_photos()
    class_names = list(photos)
    rng = np.random.default_rng(seed)
    for index in range(num_images):
        label = index % len(photos)
        photo = photos[class_names[label]]
        crop_height, crop_width = (int(rng.integers(side // 4, side + 1)) for side in photo.shape[:2])
        top = int(rng.integers(0, photo.shape[0] - crop_height + 1))
        left = int(rng.integers(0, photo.shape[1] - crop_width + 1))
        crop = Image.fromarray(photo[top : top + crop_height, left : left + crop_width])
        scale = image_size / min(crop.size)  # shorter side = image_size, aspect kept
        crop = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield crop, label, class_names[label]


def write_demo_image_folder(output_dir: str, num_images: int = 32, image_size: int = 64, seed: int = 0) -> str:
    """Writes JPEG crops of real photos as an image folder (one subfolder per photo = class); no download."""
    for index, (image, _, class_name) in enumerate(_demo_crops(num_images, image_size, seed)):
        os.makedirs(os.path.join(output_dir, class_name), exist_ok=True)
        image.save(os.path.join(output_dir, class_name, f"{index:05d}.jpg"), quality=90)
    return output_dir


def write_demo_tar_shards(
    output_dir: str, num_shards: int = 4, images_per_shard: int = 8, image_size: int = 64, seed: int = 0
) -> list[str]:
    """Writes webdataset shards (`{key}.jpg` + `{key}.cls` members) of real-photo crops; returns the paths."""
    os.makedirs(output_dir, exist_ok=True)
    crops = _demo_crops(num_shards * images_per_shard, image_size, seed)
    paths = [os.path.join(output_dir, f"shard-{shard:05d}.tar") for shard in range(num_shards)]
    for shard, path in enumerate(paths):
        with tarfile.open(path, "w") as archive:
            for index in range(images_per_shard):
                image, label, _ = next(crops)
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=90)
                key = f"{shard:05d}_{index:05d}"
                for suffix, payload in (("jpg", buffer.getvalue()), ("cls", str(label).encode())):
                    member = tarfile.TarInfo(f"{key}.{suffix}")  # mtime 0: the same bytes on every run
                    member.size = len(payload)
                    archive.addfile(member, io.BytesIO(payload))
    return paths
