# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Atomic pretraining checkpoints and exact resume, including the position in a data stream.

A checkpoint folder holds what `Accelerator.save_state` writes (model without the teacher, optimizer, scheduler,
GradScaler, and every process's RNG states) plus `training_state.json`: the update count, each process's data
position, the skip counters, the derived numbers and the arguments.

Data position: a stream has no random access, so a resumed run rebuilds each process's loader with the same seeds,
starts the saved epoch and replays (decodes and drops) the batches it had already consumed in that epoch. The crops
and masks depend only on (seed, process, worker, epoch, position), so the replay is exact; its cost is loading
time only, at most one epoch of this process's share of the data.
"""

import json
import os
import re
import shutil
from collections.abc import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers.utils import logging

from ..data.images import iterate_forever


logger = logging.get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TEMPORARY_PREFIX = ".incomplete-"
TRAINING_STATE_NAME = "training_state.json"


class ResumableBatchStream:
    """Batches forever from a loader, knowing its position (epoch, batches consumed in it) for checkpoints.

    Args:
        dataloader: a loader from `data.build_pretrain_dataloader` (its dataset has `epoch` and `set_epoch`).
        epoch: epoch to start in.
        batches_in_epoch: batches of that epoch already consumed; they are replayed and dropped now.
    """

    def __init__(self, dataloader: torch.utils.data.DataLoader, epoch: int = 0, batches_in_epoch: int = 0) -> None:
        self.dataloader = dataloader
        self.epoch, self.batches_in_epoch = epoch, 0
        self._batches = iterate_forever(dataloader, start_epoch=epoch)
        for _ in range(batches_in_epoch):
            next(self)
        if self.epoch != epoch:
            logger.warning(
                f"Epoch {epoch} now has fewer than the {batches_in_epoch} batches consumed before the checkpoint: the "
                f"data changed, so the run continues from the start of epoch {self.epoch}, not from the same images."
            )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = next(self._batches)
        epoch = self.dataloader.dataset.epoch  # iterate_forever moves it only when the next pass starts
        if epoch != self.epoch:
            self.epoch, self.batches_in_epoch = epoch, 0
        self.batches_in_epoch += 1
        return batch

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch}


def read_training_state(checkpoint: str) -> dict:
    with open(os.path.join(checkpoint, TRAINING_STATE_NAME), encoding="utf-8") as file:
        return json.load(file)


def list_checkpoints(checkpoints_dir: str) -> list[str]:
    """Complete checkpoints, oldest first by their recorded step. Half-written ones never carry the final name."""
    if not os.path.isdir(checkpoints_dir):
        return []
    folders = [os.path.join(checkpoints_dir, name) for name in os.listdir(checkpoints_dir)]
    # Exact names only: a `.replaced` folder left by a crash inside `_replace_directory` is stale, not complete.
    complete = [path for path in folders if re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", os.path.basename(path))
                and os.path.isfile(os.path.join(path, TRAINING_STATE_NAME))]  # fmt: skip
    return sorted(complete, key=lambda path: read_training_state(path)["step"])


def resolve_resume_checkpoint(resume_from_checkpoint: str | None, checkpoints_dir: str) -> str | None:
    """`None` -> fresh start; `"latest"` -> the newest complete checkpoint (or a fresh start); else a path."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(checkpoints_dir)
        if not checkpoints:
            logger.warning(f"resume_from_checkpoint=latest: no checkpoint in {checkpoints_dir} yet, starting fresh.")
        return checkpoints[-1] if checkpoints else None
    if not os.path.isfile(os.path.join(resume_from_checkpoint, TRAINING_STATE_NAME)):
        available = list_checkpoints(checkpoints_dir)
        raise FileNotFoundError(
            f"resume_from_checkpoint={resume_from_checkpoint!r} is not a complete checkpoint (no "
            f"{TRAINING_STATE_NAME} there). Complete checkpoints in {checkpoints_dir}: {available or 'none'}; or "
            "pass --resume_from_checkpoint latest."
        )
    return resume_from_checkpoint


def _replace_directory(source: str, destination: str) -> None:
    """`os.replace` for folders: atomic when the destination does not exist; an old one is moved aside first."""
    if os.path.exists(destination):
        aside = destination + ".replaced"
        os.replace(destination, aside)
        os.replace(source, destination)
        shutil.rmtree(aside)
    else:
        os.replace(source, destination)


def save_checkpoint(
    accelerator: Accelerator,
    checkpoints_dir: str,
    step: int,
    data_position: dict[str, int],
    training_state: dict,
    save_total_limit: int,
) -> str:
    """Writes a checkpoint under a temporary name and renames it when complete; keeps the last `save_total_limit`.

    Called on every process (each saves its RNG states and reports its data position). Assumes `checkpoints_dir`
    is on a filesystem every process sees, as `save_state` does.
    """
    final = os.path.join(checkpoints_dir, f"{CHECKPOINT_PREFIX}{step:08d}")
    temporary = os.path.join(checkpoints_dir, f"{TEMPORARY_PREFIX}{CHECKPOINT_PREFIX}{step:08d}")
    if accelerator.is_main_process and os.path.exists(temporary):
        shutil.rmtree(temporary)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(temporary)
    positions = gather_object([data_position])
    if accelerator.is_main_process:
        state = {**training_state, "step": step, "data_positions": positions}
        with open(os.path.join(temporary, TRAINING_STATE_NAME), "w", encoding="utf-8") as file:
            json.dump(state, file, indent=2)
        _replace_directory(temporary, final)
        for old in list_checkpoints(checkpoints_dir)[:-save_total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, checkpoint: str) -> dict:
    """Restores model, optimizer, scheduler, scaler and RNG states; returns the JSON state with this process's
    data position under `data_position`."""
    state = read_training_state(checkpoint)
    positions = state["data_positions"]
    if len(positions) != accelerator.num_processes:
        raise ValueError(
            f"{checkpoint} was written by {len(positions)} process(es) but this run has {accelerator.num_processes}: "
            "each process resumes its own part of the stream, so launch with the same number of processes."
        )
    accelerator.load_state(checkpoint)
    return {**state, "data_position": positions[accelerator.process_index]}
