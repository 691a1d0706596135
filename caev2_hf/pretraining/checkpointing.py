# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Atomic pretraining checkpoints and exact resume, including the position in a data stream.

A checkpoint folder holds what `Accelerator.save_state` writes (model with its frozen teacher, optimizer, scheduler,
GradScaler, and every process's RNG states) plus `training_state.json`: the update count, each process's data
position, the skip counters, the derived numbers and the arguments.

Data position: a stream has no random access, so a resumed run rebuilds each process's loader with the same seeds and
each loader worker skips the raw examples it had consumed in its current epoch, without decoding them. Crops, their
augmentation parameters and masks depend only on (seed, process, worker, epoch, position), so the resumed batches
are the uninterrupted run's; the cost is reading (not decoding) at most one epoch of this process's share.
"""

import json
import os
import re
import shutil
from collections.abc import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors import SafetensorError
from transformers.utils import logging

from caev2_hf_cli.errors import UserError


logger = logging.get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TEMPORARY_PREFIX = ".incomplete-"
TRAINING_STATE_NAME = "training_state.json"


class ResumableBatchStream:
    """Batches forever from a `data.build_pretrain_loader` loader, knowing its position for checkpoints.

    The loader is iterated once for the whole run: its workers (lanes) go from epoch to epoch on their own, and the
    loader takes their batches in turn (worker 0, 1, ..., 0, ...). The position is the number of batches taken and,
    per lane, the last batch taken (epoch, first and end raw example, whether it ended the epoch). Resuming starts
    each lane after its last batch, without decoding what came before; the lanes already polled in the unfinished
    round start one batch earlier and that batch is dropped, so batches come in the uninterrupted run's order.

    Args:
        dataloader: a loader from `data.build_pretrain_loader`.
        position: a previous `position()` (from a checkpoint), or None to start at the beginning.
    """

    def __init__(self, dataloader: torch.utils.data.DataLoader, position: dict | None = None) -> None:
        self.dataloader = dataloader
        num_lanes = max(1, dataloader.num_workers)
        position = position or {}
        self.lanes = list(position.get("lanes") or [None] * num_lanes)
        if len(self.lanes) != num_lanes:
            written = "0 or 1" if len(self.lanes) == 1 else str(len(self.lanes))
            raise UserError(
                f"The checkpoint's data position was written with dataloader_num_workers={written} but this run has "
                f"{dataloader.num_workers}: each worker resumes its own part of the stream, so set "
                f"--dataloader_num_workers {written.split()[-1]} again."
            )
        self.num_batches = position.get("batches", 0)
        replayed = self.num_batches % num_lanes  # lanes 0 .. replayed-1 were polled in the unfinished round
        starts = {}
        for lane, last in enumerate(self.lanes):
            if last is None:
                starts[lane] = (0, 0)
            elif lane < replayed:
                starts[lane] = (last["epoch"], last["start"])
            else:
                starts[lane] = (last["epoch"] + 1, 0) if last["end_of_epoch"] else (last["epoch"], last["end"])
        dataloader.dataset.start_at(starts)
        self._batches = iter(dataloader)
        for _ in range(replayed):
            next(self._batches)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        try:
            batch = next(self._batches)
        except UserError as error:  # from a loader worker, with that worker's traceback: keep the message alone
            raise UserError(str(error).strip().splitlines()[-1].split("UserError: ", 1)[-1]) from None
        lane, epoch, start, end, end_of_epoch = batch.pop("position").tolist()
        self.lanes[lane] = {"epoch": epoch, "start": start, "end": end, "end_of_epoch": bool(end_of_epoch)}
        self.num_batches += 1
        return batch

    @property
    def epoch(self) -> int:
        """The epoch of the lane furthest behind (lanes of unequal length drift apart by a fraction of an epoch)."""
        return min((lane["epoch"] + lane["end_of_epoch"] if lane else 0) for lane in self.lanes)

    def position(self) -> dict:
        return {
            "epoch": self.epoch,
            "batches": self.num_batches,
            "lanes": [dict(lane) if lane else None for lane in self.lanes],
        }


def read_training_state(checkpoint: str) -> dict:
    path = os.path.join(checkpoint, TRAINING_STATE_NAME)
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise UserError(
            f"{path} is damaged ({error}): move that checkpoint folder away, or resume from another with "
            "--resume_from_checkpoint PATH."
        ) from error


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
        raise UserError(
            f"--resume_from_checkpoint {resume_from_checkpoint} is not a complete checkpoint (no "
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
        raise UserError(
            f"{checkpoint} was written by {len(positions)} process(es) but this run has {accelerator.num_processes}: "
            "each process resumes its own part of the stream, so launch with the same number of processes."
        )
    try:
        accelerator.load_state(checkpoint)
    except (OSError, RuntimeError, ValueError, SafetensorError) as error:  # a damaged file or another model's state
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"Cannot resume from {checkpoint} ({reason}): resume from an earlier checkpoint "
            "(--resume_from_checkpoint PATH), or with the arguments that wrote it."
        ) from error
    return {**state, "data_position": positions[accelerator.process_index]}
