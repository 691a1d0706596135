"""The pretraining batch stream: endless, per-worker epochs, every skip counted, and a position exact enough to resume.

Each loader worker is a *lane* that reads its shards (`datasets` splits them among workers) epoch after epoch without
ever stopping, so there is no restart and no drain at an epoch boundary: the loader's prefetch queue keeps the device
fed while a lane refills its shuffle buffer. A lane batches and masks its own images, so it knows exactly which raw
examples went into a batch: every batch carries its lane and `LanePosition` (epoch, first and end raw example) and
the number of unusable images read for it. An epoch's last, incomplete batch is dropped (drop_last), but its skips
are counted with the epoch's last full batch. `ResumableBatchStream` reads the loader once for the whole run and
keeps the `StreamPosition` that checkpoints store.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from transformers.utils import logging

from .decoding import describe_error, image_name
from .errors import DataStreamError, empty_pass_error, unreadable_shard_error
from .loader import SkipLog, cap_workers, run_seeded, seed_of


if TYPE_CHECKING:
    import datasets

    from .transforms import PretrainCrop

logger = logging.get_logger(__name__)


@dataclass(frozen=True)
class LanePosition:
    """A lane's last batch: raw examples `start .. end - 1` of its pass `epoch` (unusable ones included), and whether
    that batch reached the end of the pass (the pass's last batch, which carries the dropped tail's skips)."""

    epoch: int
    start: int
    end: int
    end_of_epoch: bool = False

    def resume_at(self, replay: bool) -> tuple[int, int]:
        """(epoch, raw examples of that pass to pass over) where the lane restarts: after this batch, or at its start
        when it is to be read again (`replay`)."""
        if replay:
            return self.epoch, self.start
        return (self.epoch + 1, 0) if self.end_of_epoch else (self.epoch, self.end)


@dataclass
class StreamPosition:
    """Where a process's stream stands: the batches taken so far and each lane's last batch (None before its first).

    Checkpoints store `to_dict()`, `{"epoch", "batches", "lanes": [{"epoch", "start", "end", "end_of_epoch"} |
    null, ...]}` (`epoch` is derived, for readers), and `from_dict` reads it back, as earlier versions wrote it too.
    """

    batches: int
    lanes: list[LanePosition | None]

    @classmethod
    def start(cls, num_lanes: int) -> StreamPosition:
        return cls(batches=0, lanes=[None] * num_lanes)

    @classmethod
    def from_dict(cls, data: dict) -> StreamPosition:
        lanes = [LanePosition(**lane) if lane else None for lane in data["lanes"]]
        return cls(batches=data["batches"], lanes=lanes)

    def to_dict(self) -> dict:
        lanes = [dataclasses.asdict(lane) if lane else None for lane in self.lanes]
        return {"epoch": self.epoch, "batches": self.batches, "lanes": lanes}

    @property
    def epoch(self) -> int:
        """The epoch of the lane furthest behind (lanes of unequal length drift apart by a fraction of an epoch)."""
        return min((lane.epoch + lane.end_of_epoch if lane else 0) for lane in self.lanes)


class PretrainBatchStream(torch.utils.data.IterableDataset):
    """Endless pretraining batches of one process's stream, batched and masked in the loader workers.

    Each worker (a *lane*; the main process is lane 0 without workers) reads its shards pass after pass; pass `e` is
    shuffled with `seed + e` (`datasets`' shard order and buffer). Every raw example has a position (lane, epoch,
    index in the lane's pass); the crop and device-augmentation parameters of an image are drawn from a seed made of
    (seed, process, lane, epoch, index) and a batch's masks from (seed, process, lane, epoch, index of its first
    example), so a replay from any position redraws the same batches.

    Yields dicts: `pixel_values` uint8 (batch, 3, S, S), `bool_masked_pos`, `flip`, `jitter_factors`,
    `jitter_order`, `labels` when every image has one, `num_skipped_images` (unusable images read for this batch),
    `lane` and `position`, its `LanePosition`. A pass's last batch reaches the end of the pass: it carries the skips of
    the incomplete batch dropped after it (drop_last), so every unusable image is counted in some batch. When the
    data fails (a pass without a batch, an unreadable shard) a lane yields a `DataStreamError` and stops.

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

    def _collate(self, images: list[dict], num_skipped: int, lane: int, position: LanePosition) -> dict:
        batch = {
            "pixel_values": torch.stack([image["pixel_values"] for image in images]),
            "flip": torch.tensor([image["flip"] for image in images], dtype=torch.bool),
            "jitter_factors": torch.stack([image["jitter_factors"] for image in images]),
            "jitter_order": torch.stack([image["jitter_order"] for image in images]),
            "num_skipped_images": torch.tensor(num_skipped, dtype=torch.int64),
            "lane": lane,
            "position": position,
        }
        if self.mask_generator is not None:
            rng = np.random.default_rng([self.seed, self.process_index, lane, position.epoch, position.start])
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
                image = run_seeded(self.crop, example["image"], position)
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
                    yield self._collate(held[0], held[1], lane, LanePosition(epoch, held[2], held[3]))
                    num_batches += 1
                held = (images, num_skipped, batch_start, index)
                images, num_skipped, batch_start = [], 0, index
        if skipped_in_pass:
            logger.warning(
                f"{skip_log.where}: {skipped_in_pass} unusable images skipped in epoch {epoch} "
                f"({len(skip_log.seen)} distinct named files so far)."
            )
        if held is not None:  # the pass's last batch: with the dropped tail's skips, up to the end of the pass
            yield self._collate(held[0], held[1] + num_skipped, lane, LanePosition(epoch, held[2], index, True))
            num_batches += 1
        return num_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor] | DataStreamError]:
        worker_info = torch.utils.data.get_worker_info()
        lane = worker_info.id if worker_info is not None else 0
        skip_log = SkipLog(f"loader worker {lane} of process {self.process_index}")
        # Shuffled here, in the worker: `datasets` keeps the epoch in shared memory, so each lane needs its own copy.
        shuffled = self.dataset.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer_size)
        epoch, start = self.lane_starts.get(lane, (0, 0))
        while True:
            shuffled.set_epoch(epoch)
            try:
                num_batches = yield from self._pass(iter(shuffled), lane, epoch, start, skip_log)
            except tarfile.TarError as error:  # `datasets` cannot read past it: no later member of the shard
                yield unreadable_shard_error(error)
                return
            if num_batches == 0 and start == 0:
                yield empty_pass_error(epoch, f"loader worker {lane}'s part of the data", self.batch_size)
                return
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
    shard. It is meant to be iterated once, for the whole run (`ResumableBatchStream`).

    The loader draws its workers' base seed from a generator of its own, seeded by (seed, process), not from torch's
    global one: starting it then leaves the training RNG (drop path) as it was, so a resumed run, which starts its
    loader after restoring that RNG, continues the uninterrupted run's draws.
    """
    if prefetch_factor < 1:
        raise ValueError(f"prefetch_factor={prefetch_factor} must be at least 1 (batches each worker prepares ahead).")
    num_workers = cap_workers(num_workers, dataset)
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
        generator=torch.Generator().manual_seed(seed_of([seed, process_index])),
        worker_init_fn=leave_stop_signals_to_the_main_process,
    )


class ResumableBatchStream:
    """Batches forever from a `build_pretrain_loader` loader, knowing its `StreamPosition` for checkpoints.

    The loader is iterated once for the whole run: its workers (lanes) go from epoch to epoch on their own, and the
    loader takes their batches in turn (worker 0, 1, ..., 0, ...). Resuming starts each lane after its last batch,
    without decoding what came before; the lanes already polled in the unfinished round start one batch earlier and
    that batch is dropped, so batches come in the uninterrupted run's order. A `DataStreamError` a lane yields is
    raised here.

    Args:
        dataloader: a loader from `build_pretrain_loader`.
        position: a previous `position` (from a checkpoint), or None to start at the beginning.

    Raises:
        DataStreamError: the position was written with another number of loader workers.
    """

    def __init__(self, dataloader: torch.utils.data.DataLoader, position: StreamPosition | None = None) -> None:
        self.dataloader = dataloader
        num_lanes = max(1, dataloader.num_workers)
        position = position or StreamPosition.start(num_lanes)
        self.position = StreamPosition(position.batches, list(position.lanes))  # advanced in place from here on
        if len(self.position.lanes) != num_lanes:
            written = "0 or 1" if len(self.position.lanes) == 1 else str(len(self.position.lanes))
            raise DataStreamError(
                f"The checkpoint's data position was written with dataloader_num_workers={written} but this run has "
                f"{dataloader.num_workers}: each worker resumes its own part of the stream, so set "
                f"--dataloader_num_workers {written.split()[-1]} again."
            )
        replayed = self.position.batches % num_lanes  # lanes 0 .. replayed-1 were polled in the unfinished round
        dataloader.dataset.start_at(
            {lane: last.resume_at(lane < replayed) for lane, last in enumerate(self.position.lanes) if last}
        )
        self._batches = iter(dataloader)
        for _ in range(replayed):
            self._next_batch()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def _next_batch(self) -> dict:
        batch = next(self._batches)
        if isinstance(batch, DataStreamError):
            raise batch
        return batch

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = self._next_batch()
        self.position.lanes[batch.pop("lane")] = batch.pop("position")
        self.position.batches += 1
        return batch
