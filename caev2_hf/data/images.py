"""The pretraining data path (docs/design.md#data-path): open a stream, decode, crop to uint8, batch in workers, normalise on device.

Host work stays cheap: one decode, one crop-and-resize, colour jitter on the small uint8 crop, no float tensors.
Bad images are converted (CMYK, grayscale, alpha, palette) or skipped and counted, never fatal and never silent.
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from huggingface_hub.errors import GatedRepoError
from PIL import Image
from torchvision.transforms import v2
from transformers.utils import logging


if TYPE_CHECKING:  # `datasets` is imported where a stream is opened: decoding and transforms work without it
    import datasets

logger = logging.get_logger(__name__)

IMAGE_COLUMN_CANDIDATES = ("image", "img", "jpg", "jpeg", "png", "webp")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "cls", "class")
MIN_IMAGE_SIDE = 8  # smaller images carry no usable content after a 224 px resize
MAX_LOGGED_SKIPS = 5  # per loader worker: enough to diagnose, not enough to flood the log

ImageLike = Image.Image | bytes | str | dict  # what `datasets` yields: a PIL image, bytes, a path, {"bytes", "path"}


def _load_from_hub(
    dataset_name: str, dataset_config_name: str | None, split: str, streaming: bool
) -> datasets.Dataset | datasets.IterableDataset:
    """`load_dataset` from the Hub; access errors come back saying how to get access."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    try:
        return datasets.load_dataset(dataset_name, dataset_config_name, split=split, streaming=streaming)
    except (DatasetNotFoundError, GatedRepoError) as error:
        raise DatasetNotFoundError(
            f"{error}\nIf '{dataset_name}' is gated (ImageNet is), accept its terms on "
            f"https://huggingface.co/datasets/{dataset_name}, then run `huggingface-cli login` or set HF_TOKEN."
        ) from error


def _builder_for_files(data_files: list[str] | str) -> str:
    """Picks the `datasets` builder from the file extensions: .tar -> webdataset, .parquet -> parquet."""
    files = [data_files] if isinstance(data_files, str) else list(data_files)
    builders = {"webdataset" if f.endswith(".tar") else "parquet" if f.endswith(".parquet") else None for f in files}
    if len(builders) != 1 or None in builders:
        raise ValueError(f"data_files={files} must all end in .tar (webdataset shards) or all in .parquet.")
    return builders.pop()


def _as_stream(dataset: datasets.Dataset) -> datasets.IterableDataset:
    """Streams a prepared dataset from up to 64 shards (divisible by the usual world sizes)."""
    if len(dataset) == 0:
        raise ValueError("The dataset has no examples: check the split and the data location.")
    return dataset.to_iterable_dataset(num_shards=min(64, len(dataset)))


def _resolve_column(columns: list[str], requested: str | None, candidates: Sequence[str], kind: str) -> str | None:
    """Returns the requested column, else the first known name present, else None."""
    if requested is not None and requested not in columns:
        raise ValueError(f"No column '{requested}' in the dataset; its columns are {columns}. Fix --{kind}_column.")
    return requested or next((name for name in candidates if name in columns), None)


def open_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    split: str = "train",
    train_dir: str | None = None,
    data_files: list[str] | str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    streaming: bool = True,
) -> datasets.IterableDataset:
    """Opens a Hub dataset, a local image folder or local tar/parquet shards as a stream of {"image", "label"}.

    Images stay undecoded ({"bytes", "path"}) so that `PretrainImageStream` can skip a broken file instead of
    crashing the iterator. With `streaming=False` the data is first prepared in the local Arrow cache, then
    streamed from 64 shards (divisible by common world sizes).
    """
    import datasets

    if sum(source is not None for source in (dataset_name, train_dir, data_files)) != 1:
        raise ValueError(
            "Give exactly one of dataset_name (Hub), train_dir (image folder) or data_files (.tar/.parquet)."
        )
    if dataset_name is not None:
        dataset = _load_from_hub(dataset_name, dataset_config_name, split, streaming)
    elif train_dir is not None:
        dataset = datasets.load_dataset("imagefolder", data_dir=train_dir, split=split, streaming=streaming)
    else:
        builder = _builder_for_files(data_files)
        dataset = datasets.load_dataset(builder, data_files=data_files, split=split, streaming=streaming)
    if not streaming:
        dataset = _as_stream(dataset)
    columns = dataset.column_names or list(next(iter(dataset), {}))  # some Hub streams only know them after a read
    image_column = _resolve_column(columns, image_column, IMAGE_COLUMN_CANDIDATES, "image")
    if image_column is None:
        raise ValueError(f"No image column among the dataset's columns {columns}: name it with --image_column.")
    label_column = _resolve_column(columns, label_column, LABEL_COLUMN_CANDIDATES, "label")
    dataset = dataset.select_columns([image_column] + ([label_column] if label_column else []))
    if dataset.features is not None:  # keep images undecoded; a stream without features yields raw values anyway
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    renames = {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old and old != new}
    return dataset.rename_columns(renames) if renames else dataset


def shard_for_process(
    dataset: datasets.IterableDataset, process_index: int, num_processes: int
) -> datasets.IterableDataset:
    """Gives this process its part of the stream; refuses a split that would leave a process without shards."""
    if num_processes == 1:
        return dataset
    num_shards = dataset.num_shards
    if num_shards < num_processes:
        raise ValueError(
            f"{num_shards} shards cannot feed {num_processes} processes: write at least {num_processes} shards, "
            f"e.g. `write_demo_tar_shards(..., num_shards={num_processes})` or `Dataset.to_parquet` per shard, "
            "or open the data with streaming=False (prepared locally, then split into 64 shards)."
        )
    if num_shards % num_processes:
        logger.warning(
            f"{num_shards} shards do not divide among {num_processes} processes: each process reads every shard "
            f"and keeps 1/{num_processes} of the examples (no duplicates, no drops, but {num_processes}x the "
            "reading). Write a multiple of the process count to read each shard once."
        )
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(dataset, rank=process_index, world_size=num_processes)


def _open_image(image: ImageLike) -> Image.Image:
    """Opens a PIL image from any `ImageLike` (lazily: pixels are decoded by `load`)."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, dict):
        image = image["bytes"] if image.get("bytes") is not None else image["path"]
    return Image.open(io.BytesIO(image) if isinstance(image, bytes) else image)


def decode_rgb_image(image: ImageLike) -> tuple[Image.Image | None, str | None]:
    """Returns (RGB image, None), or (None, reason) for an unreadable, truncated or tiny image."""
    try:
        image = _open_image(image)
        image.load()  # decode now: truncated data raises here rather than later in a transform
        if min(image.size) < MIN_IMAGE_SIDE:
            return None, f"{image.size[0]}x{image.size[1]} px is smaller than {MIN_IMAGE_SIDE} px"
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # Composite on white: plain conversion would expose whatever colour hides under transparent pixels.
            rgba = image.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB"), None
        return image.convert("RGB"), None
    except Exception as error:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...: never raise
        return None, f"{type(error).__name__}: {error}"


def to_rgb_image(image: ImageLike) -> Image.Image | None:
    """Converts any image `datasets` yields to RGB; None when it cannot be used. Never raises."""
    return decode_rgb_image(image)[0]


def build_pretrain_transform(
    image_size: int = 224, scale: tuple[float, float] = (0.4, 1.0), color_jitter: float = 0.4, hflip: bool = True
) -> v2.Compose:
    """docs/method.md#recipes pretraining augmentation on uint8: crop first, then flip and jitter the small crop."""
    transforms = [
        v2.PILToTensor(),
        v2.RandomResizedCrop(image_size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
    ]
    if hflip:
        transforms.append(v2.RandomHorizontalFlip())
    if color_jitter > 0:
        transforms.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    return v2.Compose(transforms)


def build_eval_transform(image_size: int = 224, resize_size: int = 256) -> v2.Compose:
    """docs/method.md#recipes evaluation view: bicubic resize of the short side, centre crop, uint8."""
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(resize_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(image_size),
        ]
    )


class PretrainImageStream(torch.utils.data.IterableDataset):
    """Turns {"image", "label"} into {"pixel_values", "label", "num_skipped"}, skipping and counting bad images.

    A skipped image is counted on the next good example (`num_skipped`), which the collator sums into the batch,
    so the training loop can log how many images were lost. The count survives epoch ends within a worker.
    Each crop is drawn under a seed made of (seed, process index, worker id, epoch, position in the worker's
    stream), so a run that replays an epoch (e.g. after resuming) redraws the same crops, whatever the workers did
    before, and processes draw different crops.
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        transform: Callable[[Image.Image], torch.Tensor],
        seed: int = 0,
        process_index: int = 0,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.process_index = process_index
        self._pending_skipped = 0
        self._total_skipped = 0

    @property
    def epoch(self) -> int:
        return self.dataset.epoch

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def _record_skip(self, reason: str) -> None:
        self._pending_skipped += 1
        self._total_skipped += 1
        if self._total_skipped <= MAX_LOGGED_SKIPS:
            logger.warning(f"Skipping an unusable image ({reason}); skips are counted in batch['num_skipped_images'].")

    def _augment(self, image: Image.Image, position: list[int]) -> torch.Tensor:
        # torchvision draws from the global torch RNG: fork it (CPU only, microseconds) so that loading in the
        # main process (num_workers=0) leaves the training RNG untouched.
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(
                int(np.random.SeedSequence(position).generate_state(1, np.uint64)[0])
            )
            return self.transform(image)

    def __iter__(self) -> Iterator[dict]:
        worker_info = torch.utils.data.get_worker_info()
        worker_id, epoch = (worker_info.id if worker_info is not None else 0), self.epoch
        for index, example in enumerate(self.dataset):
            image, reason = decode_rgb_image(example["image"])
            if image is None:
                self._record_skip(reason)
                continue
            pixel_values = self._augment(image, [self.seed, self.process_index, worker_id, epoch, index])
            output = {"pixel_values": pixel_values, "num_skipped": self._pending_skipped}
            if "label" in example:
                output["label"] = example["label"]
            self._pending_skipped = 0
            yield output


@functools.lru_cache(maxsize=8)
def _channel_statistics(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Built once per device: `torch.tensor(..., device="cuda")` at every step is a blocking copy (a host sync)."""
    as_column = lambda values: torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1)  # noqa: E731
    return as_column(mean), as_column(std)


def normalize_pixel_values(
    pixel_values: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(x / 255 - mean) / std on the tensor's own device, computed in float32 and returned in `dtype`.

    Call it after the uint8 batch is on the accelerator: the copy is 4x smaller and the arithmetic runs there.
    """
    mean, std = _channel_statistics(tuple(mean), tuple(std), pixel_values.device)
    return ((pixel_values.float() / 255.0 - mean) / std).to(dtype)


def build_pretrain_dataloader(
    dataset: datasets.IterableDataset,
    transform: Callable[[Image.Image], torch.Tensor],
    collator: Callable[[list[dict]], dict],
    batch_size: int,
    num_workers: int,
    seed: int,
    pin_memory: bool = True,
    shuffle_buffer_size: int = 10_000,
    process_index: int = 0,
) -> torch.utils.data.DataLoader:
    """A loader over this process's (already sharded) stream: shuffle buffer, decode, crop and mask in workers.

    `seed` drives the shuffle and, with `process_index`, the crops; it must be the same on every process
    (`split_dataset_by_node` relies on one shard order). Batches are full (drop_last) so every step has the same
    shape on every process.
    """
    if num_workers > dataset.num_shards:
        logger.warning(f"num_workers={num_workers} lowered to {dataset.num_shards}: a worker reads whole shards.")
        num_workers = dataset.num_shards
    shuffled = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
    stream = PretrainImageStream(shuffled, transform, seed=seed, process_index=process_index)
    return torch.utils.data.DataLoader(
        stream,
        batch_size=batch_size,
        collate_fn=collator,
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        drop_last=True,
    )


def iterate_forever(
    dataloader: torch.utils.data.DataLoader,
    dataset: PretrainImageStream | datasets.IterableDataset | None = None,
    start_epoch: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yields batches pass after pass, calling `set_epoch` before each pass (a stream has no length).

    `dataset` defaults to `dataloader.dataset`; the collator's epoch is set too when it has `set_epoch`.
    """
    dataset = dataloader.dataset if dataset is None else dataset
    epoch = start_epoch
    while True:
        dataset.set_epoch(epoch)
        if hasattr(dataloader.collate_fn, "set_epoch"):
            dataloader.collate_fn.set_epoch(epoch)
        num_batches = 0
        for batch in dataloader:
            num_batches += 1
            yield batch
        if num_batches == 0:
            raise RuntimeError(
                f"A whole pass (epoch {epoch}) over the data gave no batch: the dataset is empty, every image was "
                f"unreadable (see the warnings above), or this process holds fewer than batch_size examples."
            )
        epoch += 1


def _demo_crops(num_images: int, image_size: int, seed: int) -> Iterator[tuple[Image.Image, int, str]]:
    """Random crops and flips of the two photos shipped with scikit-learn: (image, label, class name)."""
    try:
        from sklearn.datasets import load_sample_images  # optional dependency, only for the offline demo
    except ImportError as error:
        raise ImportError(
            "The offline demo cuts its images from the two photos shipped with scikit-learn: "
            "`pip install scikit-learn` (or `pip install -e '.[dev]'`)."
        ) from error

    sample = load_sample_images()
    class_names = [os.path.splitext(os.path.basename(name))[0] for name in sample.filenames]
    rng = np.random.default_rng(seed)
    for index in range(num_images):
        label = index % len(sample.images)
        photo = sample.images[label]
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
