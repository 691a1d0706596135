"""Loaders: the pretraining batch stream (endless, per-worker epochs, exact positions, every skip counted), and the
simpler per-image stream the evaluation jobs use.

Pretraining (`PretrainBatchStream`, `build_pretrain_loader`): each loader worker is a *lane* that reads its shards
(`datasets` splits them among workers) epoch after epoch without ever stopping, so there is no restart and no drain
at an epoch boundary: the loader's prefetch queue keeps the device fed while a lane refills its shuffle buffer.
A lane batches and masks its own images, so it knows exactly which raw examples went into a batch: every batch
carries its position (lane, epoch, first and end raw example) and the number of unusable images read for it. An
epoch's last, incomplete batch is dropped (drop_last), but its skips are counted with the epoch's last full batch.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from transformers.utils import logging

from caev2_hf_cli.errors import UserError

from .decoding import describe_error, image_name, open_image, to_rgb


if TYPE_CHECKING:
    import datasets

    from .transforms import PretrainCrop

logger = logging.get_logger(__name__)

MAX_LOGGED_SKIPS_PER_MINUTE = 20  # per loader worker: enough to diagnose, not enough to flood the log
END_OF_EPOCH = 1


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


def _seed_of(position: list[int]) -> int:
    return int(np.random.SeedSequence(position).generate_state(1, np.uint64)[0])


class PretrainBatchStream(torch.utils.data.IterableDataset):
    """Endless pretraining batches of one process's stream, batched and masked in the loader workers.

    Each worker (a *lane*; the main process is lane 0 without workers) reads its shards pass after pass; pass `e` is
    shuffled with `seed + e` (`datasets`' shard order and buffer). Every raw example has a position (lane, epoch,
    index in the lane's pass); the crop and device-augmentation parameters of an image are drawn from a seed made of
    (seed, process, lane, epoch, index) and a batch's masks from (seed, process, lane, epoch, index of its first
    example), so a replay from any position redraws the same batches.

    Yields dicts: `pixel_values` uint8 (batch, 3, S, S), `bool_masked_pos`, `flip`, `jitter_factors`,
    `jitter_order`, `labels` when every image has one, `num_skipped_images` (unusable images read for this batch),
    and `position`, int64 (lane, epoch, start, end, end_of_epoch): the batch holds the usable images among raw
    examples start .. end - 1 of the lane's pass. A pass's last batch reaches the end of the pass: it carries the
    skips of the incomplete batch dropped after it (drop_last), so every unusable image is counted in some batch.

    Args:
        dataset: this process's stream (`shard_for_process`) of {"image", "label"?}, images undecoded.
        crop: decodes and crops one image as `datasets` yields it, returning pixels and parameters (`PretrainCrop`).
        mask_generator: draws one mask from a numpy Generator (`masking.build_mask_generator`); None: no masks.
        batch_size: images per batch.
        seed: the same on every process (`split_dataset_by_node` relies on one shard order).
        process_index: this process's rank, so processes draw different crops and masks.
        shuffle_buffer_size: examples in each lane's shuffle buffer.
        masks_per_image: K masks per image (`PretrainingStep`'s teacher amortisation): copy k of image b at row
            k * batch + b; the first copy is the K = 1 draw.
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        crop: PretrainCrop | Callable[[Image.Image], dict],
        mask_generator: Callable[[np.random.Generator], np.ndarray] | None,
        batch_size: int,
        seed: int = 0,
        process_index: int = 0,
        shuffle_buffer_size: int = 10_000,
        masks_per_image: int = 1,
    ) -> None:
        if batch_size < 1 or masks_per_image < 1:
            raise ValueError(f"batch_size={batch_size} and masks_per_image={masks_per_image} must be at least 1.")
        self.masks_per_image = masks_per_image
        self.dataset, self.crop, self.mask_generator = dataset, crop, mask_generator
        self.batch_size, self.seed, self.process_index = batch_size, seed, process_index
        self.shuffle_buffer_size = max(1, shuffle_buffer_size)
        self.lane_starts: dict[int, tuple[int, int]] = {}

    def start_at(self, lane_starts: dict[int, tuple[int, int]]) -> None:
        """Where each lane starts: (epoch, raw examples of that pass already consumed). Call before iterating."""
        self.lane_starts = dict(lane_starts)

    def _crop(self, example: dict, position: list[int]) -> dict:
        # torchvision draws from the global torch RNG: fork it (CPU only, microseconds) so that loading in the main
        # process (num_workers=0) leaves the training RNG untouched.
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(_seed_of(position))
            return self.crop(example["image"])

    def _collate(self, images: list[dict], num_skipped: int, position: list[int]) -> dict[str, torch.Tensor]:
        """A batch of a lane; `position` is (lane, epoch, start, end, end_of_epoch)."""
        batch = {
            "pixel_values": torch.stack([image["pixel_values"] for image in images]),
            "flip": torch.tensor([image["flip"] for image in images], dtype=torch.bool),
            "jitter_factors": torch.stack([image["jitter_factors"] for image in images]),
            "jitter_order": torch.stack([image["jitter_order"] for image in images]),
            "num_skipped_images": torch.tensor(num_skipped, dtype=torch.int64),
            "position": torch.tensor(position, dtype=torch.int64),
        }
        if self.mask_generator is not None:
            rng = np.random.default_rng([self.seed, self.process_index, *position[:3]])
            masks = [self.mask_generator(rng) for _ in range(self.masks_per_image) for _ in images]
            batch["bool_masked_pos"] = torch.from_numpy(np.stack(masks))
        if all(image.get("label") is not None for image in images):
            batch["labels"] = torch.tensor([image["label"] for image in images], dtype=torch.int64)
        return batch

    def _pass(self, examples: Iterator[dict], lane: int, epoch: int, start: int, skip_log: SkipLog) -> Iterator[dict]:
        """One pass of a lane from raw example `start` on; returns the number of batches it yielded.

        A full batch is held until the next one is full, so that the pass's last batch can carry the skips of the
        incomplete batch dropped after it (drop_last) and end exactly at the end of the pass.
        """
        index = sum(1 for _ in itertools.islice(examples, start))  # replayed without decoding: exact, and cheap
        if index < start:
            logger.warning(
                f"Loader worker {lane}, epoch {epoch}: the checkpoint's position ({start} examples) is past the end of "
                f"this pass ({index}): the data changed, so the run continues from the next epoch, not the same images."
            )
        images, num_skipped, batch_start, num_batches, skipped_in_pass = [], 0, index, 0, 0
        held = None  # (images, skips, start, end) of the last full batch
        for example in examples:
            position = [self.seed, self.process_index, lane, epoch, index]
            index += 1
            try:
                image = self._crop(example, position)
            except Exception as error:  # any decoding error is a skip, never a crash
                name = image_name(example)
                skip_log.record(name, describe_error(error, name))
                num_skipped, skipped_in_pass = num_skipped + 1, skipped_in_pass + 1
                continue
            if "label" in example:
                image["label"] = example["label"]
            images.append(image)
            if len(images) == self.batch_size:
                if held is not None:
                    yield self._collate(held[0], held[1], [lane, epoch, held[2], held[3], 0])
                    num_batches += 1
                held = (images, num_skipped, batch_start, index)
                images, num_skipped, batch_start = [], 0, index
        if skipped_in_pass:
            logger.warning(
                f"{skip_log.where}: {skipped_in_pass} unusable images skipped in epoch {epoch} "
                f"({len(skip_log.seen)} distinct named files so far)."
            )
        if held is not None:  # the pass's last batch: with the dropped tail's skips, up to the end of the pass
            yield self._collate(held[0], held[1] + num_skipped, [lane, epoch, held[2], index, END_OF_EPOCH])
            num_batches += 1
        return num_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker_info = torch.utils.data.get_worker_info()
        lane = worker_info.id if worker_info is not None else 0
        skip_log = SkipLog(f"loader worker {lane} of process {self.process_index}")
        # Shuffled here, in the worker: `datasets` keeps the epoch in shared memory, so each lane needs its own copy.
        shuffled = self.dataset.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer_size)
        epoch, start = self.lane_starts.get(lane, (0, 0))
        while True:
            shuffled.set_epoch(epoch)
            num_batches = yield from self._pass(iter(shuffled), lane, epoch, start, skip_log)
            if num_batches == 0 and start == 0:
                raise UserError(
                    f"A whole pass (epoch {epoch}) over loader worker {lane}'s part of the data gave no batch: the "
                    "dataset is empty, every image was unreadable (see the warnings above), or this worker holds "
                    f"fewer than batch_size={self.batch_size} usable examples (use fewer workers or processes)."
                )
            epoch, start = epoch + 1, 0


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """A loader worker lives through the SIGTERM and SIGUSR1 that SLURM sends to every process of a job, so the main
    process can finish its update and save a checkpoint first; it stops its workers itself when done. A SIGTERM from
    the main process (how `multiprocessing` ends its children at exit) still ends the worker at once. Where the
    sender of a signal cannot be told (no `sigwaitinfo`, e.g. macOS), the worker keeps PyTorch's handling."""
    if not hasattr(signal, "sigwaitinfo"):
        return
    stop_signals = {signal.SIGTERM, signal.SIGUSR1}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # in this thread and every thread it starts
    main_process = os.getppid()

    def wait_for_stop_signals() -> None:
        while True:
            received = signal.sigwaitinfo(stop_signals)
            if received.si_signo == signal.SIGTERM and received.si_pid == main_process:
                os._exit(0)

    threading.Thread(target=wait_for_stop_signals, name="stop-signals", daemon=True).start()


def build_pretrain_loader(
    dataset: datasets.IterableDataset,
    crop: PretrainCrop | Callable[[Image.Image], dict],
    mask_generator: Callable[[np.random.Generator], np.ndarray] | None,
    batch_size: int,
    num_workers: int,
    seed: int,
    process_index: int = 0,
    shuffle_buffer_size: int = 10_000,
    pin_memory: bool = True,
    prefetch_factor: int = 2,
    masks_per_image: int = 1,
) -> torch.utils.data.DataLoader:
    """A loader over a `PretrainBatchStream` of this process's (already sharded) stream, with at most one worker per
    shard. It is meant to be iterated once, for the whole run (`checkpointing.ResumableBatchStream`)."""
    if prefetch_factor < 1:
        raise ValueError(f"prefetch_factor={prefetch_factor} must be at least 1 (batches each worker prepares ahead).")
    if num_workers > dataset.num_shards:
        logger.warning(f"num_workers={num_workers} lowered to {dataset.num_shards}: a worker reads whole shards.")
        num_workers = dataset.num_shards
    stream = PretrainBatchStream(
        dataset, crop, mask_generator, batch_size, seed, process_index, shuffle_buffer_size, masks_per_image
    )
    return torch.utils.data.DataLoader(
        stream,
        batch_size=None,  # the stream yields whole batches
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        worker_init_fn=leave_stop_signals_to_the_main_process,
    )


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

    def _augment(self, image: Image.Image, position: list[int]) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(_seed_of(position))
            return self.transform(image)

    def __iter__(self) -> Iterator[dict]:
        worker_info = torch.utils.data.get_worker_info()
        worker_id, epoch = (worker_info.id if worker_info is not None else 0), self.epoch
        if self._skip_log is None:
            self._skip_log = SkipLog(f"loader worker {worker_id} of process {self.process_index}")
        for index, example in enumerate(self.dataset):
            try:
                image = to_rgb(open_image(example["image"]))
            except Exception as error:  # any decoding error is a skip, never a crash
                name = image_name(example)
                self._skip_log.record(name, describe_error(error, name))
                self._pending_skipped += 1
                continue
            pixel_values = self._augment(image, [self.seed, self.process_index, worker_id, epoch, index])
            output = {"pixel_values": pixel_values, "num_skipped": self._pending_skipped}
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
    if num_workers > dataset.num_shards:
        logger.warning(f"num_workers={num_workers} lowered to {dataset.num_shards}: a worker reads whole shards.")
        num_workers = dataset.num_shards
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
    """Yields batches of a per-epoch loader pass after pass, calling `set_epoch` before each pass.

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
