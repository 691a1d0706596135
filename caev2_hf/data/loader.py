"""What every loader shares (the skip log, position-seeded transforms, the worker cap) and the evaluation jobs'
per-image stream. Pretraining's batch stream is `pretraining_stream.py`; the errors a stream raises, `errors.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from PIL import Image
from transformers.utils import logging

from .decoding import decode_image, describe_error, image_name
from .errors import empty_pass_error


if TYPE_CHECKING:
    import datasets

logger = logging.get_logger(__name__)

MAX_LOGGED_SKIPS_PER_MINUTE = 20  # per loader worker: enough to diagnose, not enough to flood the log
Input, Output = TypeVar("Input"), TypeVar("Output")


class SkipLog:
    """Logs each unusable image once (by file path or shard member), at most `max_per_minute` lines a minute per
    worker; lines over the limit are counted and reported when the next minute starts, and in the epoch summary."""

    def __init__(self, where: str = "", max_per_minute: int = MAX_LOGGED_SKIPS_PER_MINUTE) -> None:
        self.where, self.max_per_minute = where, max_per_minute
        self.seen: set[str] = set()
        self.window_start, self.logged_in_window, self.suppressed = -float("inf"), 0, 0

    def record(self, name: str | None, reason: str) -> None:
        if name is not None:
            if name in self.seen:
                return
            self.seen.add(name)
        now = time.monotonic()
        if now - self.window_start >= 60:
            if self.suppressed:
                logger.warning(
                    f"{self.where}: {self.suppressed} more unusable images in the last minute (not logged)."
                )
            self.window_start, self.logged_in_window, self.suppressed = now, 0, 0
        if self.logged_in_window < self.max_per_minute:
            self.logged_in_window += 1
            where = f" ({self.where})" if self.where else ""
            logger.warning(
                f"Skipping an unusable image {name or '(unnamed)'}{where}: {reason}. The run goes on without it."
            )
        else:
            self.suppressed += 1


def seed_of(position: list[int]) -> int:
    """A 64-bit seed made of a list of integers (seed, process, worker, epoch, index, ...)."""
    return int(np.random.SeedSequence(position).generate_state(1, np.uint64)[0])


def run_seeded(transform: Callable[[Input], Output], image: Input, position: list[int]) -> Output:
    """`transform(image)` under torch's global generator seeded by the image's position (seed, process, worker,
    epoch, index), so a replay from any position redraws the same augmentation. torchvision draws from that
    generator: it is forked (CPU only, microseconds), so loading in the main process leaves the training RNG as it
    was."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed_of(position))
        return transform(image)


def cap_workers(num_workers: int, dataset: datasets.IterableDataset) -> int:
    """At most one loader worker per shard: a worker reads whole shards, so more would idle."""
    if num_workers > dataset.num_shards:
        logger.warning(f"num_workers={num_workers} lowered to {dataset.num_shards}: a worker reads whole shards.")
        return dataset.num_shards
    return num_workers


class LabelledImageStream(torch.utils.data.IterableDataset):
    """Turns labelled images {"image", "label"} into {"pixel_values", "label", "num_skipped"} one image at a time,
    skipping and counting bad images: the evaluation jobs' stream (pretraining uses `PretrainBatchStream`).

    A skipped image is counted on the next good example (`num_skipped`). Each image's transform runs under a seed
    made of (seed, process index, worker id, epoch, position in the worker's stream), so a replayed epoch redraws the
    same crops, and processes draw different ones.
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
        self._skip_log = None

    @property
    def epoch(self) -> int:
        return self.dataset.epoch

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict]:
        worker_info = torch.utils.data.get_worker_info()
        worker_id, epoch = (worker_info.id if worker_info is not None else 0), self.epoch
        if self._skip_log is None:
            self._skip_log = SkipLog(f"loader worker {worker_id} of process {self.process_index}")
        for index, example in enumerate(self.dataset):
            try:
                image = decode_image(example["image"])
            except Exception as error:  # any decoding error is a skip, never a crash
                name = image_name(example)
                self._skip_log.record(name, describe_error(error, name))
                self._pending_skipped += 1
                continue
            position = [self.seed, self.process_index, worker_id, epoch, index]
            output = {
                "pixel_values": run_seeded(self.transform, image, position),
                "num_skipped": self._pending_skipped,
            }
            if "label" in example:
                output["label"] = example["label"]
            self._pending_skipped = 0
            yield output


def build_labelled_image_loader(
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
    """A per-epoch loader of shuffled, transformed images (the linear probe's official protocol): shuffle buffer,
    decode and transform in the workers, full batches (drop_last) so every step has the same shape everywhere."""
    num_workers = cap_workers(num_workers, dataset)
    shuffled = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
    stream = LabelledImageStream(shuffled, transform, seed=seed, process_index=process_index)
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
    dataset: LabelledImageStream | datasets.IterableDataset | None = None,
    start_epoch: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yields batches of a per-epoch loader pass after pass, calling `set_epoch` (of `dataset`, by default
    `dataloader.dataset`) before each pass."""
    dataset = dataloader.dataset if dataset is None else dataset
    epoch = start_epoch
    while True:
        dataset.set_epoch(epoch)
        num_batches = 0
        for batch in dataloader:
            num_batches += 1
            yield batch
        if num_batches == 0:
            raise empty_pass_error(epoch, "this process's part of the data", dataloader.batch_size)
        epoch += 1
