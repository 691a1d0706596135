# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Atomic pretraining checkpoints and exact resume, including the position in a data stream.

A checkpoint folder holds what `Accelerator.save_state` writes (model with its frozen teacher, optimizer, scheduler,
GradScaler, and every process's RNG states) plus `training_state.json`: the update count, each process's data
position, the skip counters, the derived numbers and the arguments.

Data position: a stream has no random access, so a resumed run rebuilds each process's loader with the same seeds and
each loader worker skips the raw examples it had consumed in its current epoch, without decoding them. Crops, their
augmentation parameters and masks depend only on (seed, process, worker, epoch, position), so the resumed batches
are the uninterrupted run's; the cost is reading (not decoding) at most one epoch of this process's share.

Damage: `latest` and rotation skip a checkpoint whose training_state.json cannot be read (with a warning), a resume
refuses missing or unreadable RNG states, and a failed write ends every process with one line that names the folder
(docs/design.md#checkpoints-and-resume).
"""

import json
import os
import re
import shutil
from collections.abc import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import RNG_STATE_NAME, broadcast_object_list, gather_object, load
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


def _load_training_state(checkpoint: str) -> dict:
    """The checkpoint's JSON state; raises ValueError (or OSError) when it is damaged or has no step."""
    with open(os.path.join(checkpoint, TRAINING_STATE_NAME), encoding="utf-8") as file:
        state = json.load(file)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError("no update count in it")
    return state


def read_training_state(checkpoint: str) -> dict:
    try:
        return _load_training_state(checkpoint)
    except ValueError as error:
        raise UserError(
            f"{os.path.join(checkpoint, TRAINING_STATE_NAME)} is damaged ({error}): move that checkpoint folder away, "
            "or resume from another with --resume_from_checkpoint PATH."
        ) from error


def scan_checkpoints(checkpoints_dir: str) -> tuple[list[str], dict[str, str]]:
    """Complete checkpoints, oldest first by their recorded step, and the damaged ones with what is wrong with them
    (a training_state.json that cannot be read). Half-written ones never carry the final name."""
    if not os.path.isdir(checkpoints_dir):
        return [], {}
    folders = [os.path.join(checkpoints_dir, name) for name in sorted(os.listdir(checkpoints_dir))]
    steps, damaged = {}, {}
    for path in folders:
        # Exact names only: a `.replaced` folder left by a crash inside `_replace_directory` is stale, not complete.
        if not re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", os.path.basename(path)):
            continue
        if not os.path.isfile(os.path.join(path, TRAINING_STATE_NAME)):
            continue
        try:
            steps[path] = _load_training_state(path)["step"]
        except (OSError, ValueError) as error:
            damaged[path] = f"its {TRAINING_STATE_NAME} is damaged ({error})"
    return sorted(steps, key=steps.get), damaged


def list_checkpoints(checkpoints_dir: str) -> list[str]:
    """Complete checkpoints, oldest first. A damaged one is skipped with a warning: `latest` never resumes it and
    rotation neither counts nor deletes it."""
    complete, damaged = scan_checkpoints(checkpoints_dir)
    for path, problem in damaged.items():
        logger.warning(
            f"Skipping {path}: {problem}, so it is neither resumed by --resume_from_checkpoint latest nor counted by "
            "rotation. Move it away once inspected."
        )
    return complete


def resolve_resume_checkpoint(resume_from_checkpoint: str | None, checkpoints_dir: str) -> str | None:
    """`None` -> fresh start; `"latest"` -> the newest complete checkpoint (or a fresh start when there is none, but
    never when there are only damaged ones); else a path."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(checkpoints_dir)
        damaged = scan_checkpoints(checkpoints_dir)[1] if not checkpoints else {}
        if damaged:
            path, problem = max(damaged.items())
            raise UserError(
                f"--resume_from_checkpoint latest: no checkpoint in {checkpoints_dir} is intact ({path}: {problem}). "
                "Move it away and start afresh with --overwrite_output_dir true, or mend it and resume with "
                "--resume_from_checkpoint PATH."
            )
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


def checkpoint_step(checkpoint: str) -> int:
    """The update a checkpoint folder was written at, from its name (`checkpoint-00002500` -> 2500)."""
    return int(os.path.basename(checkpoint.rstrip("/"))[len(CHECKPOINT_PREFIX) :])


def set_aside_checkpoints(checkpoints_dir: str, from_step: int, suffix: str) -> list[str]:
    """Renames the complete checkpoints of update `from_step` or later to `<name><suffix>`, out of the sight of
    `latest` and rotation; never deletes them, so they can be inspected. Returns their new paths."""
    moved = []
    for path in list_checkpoints(checkpoints_dir):
        if checkpoint_step(path) >= from_step:
            os.replace(path, path + suffix)
            moved.append(path + suffix)
    return moved


def earlier_checkpoint(checkpoint: str) -> str | None:
    """The newest complete checkpoint before `checkpoint` in its folder, or None."""
    listed = list_checkpoints(os.path.dirname(os.path.abspath(checkpoint)))
    earlier = [path for path in listed if checkpoint_step(path) < checkpoint_step(checkpoint)]
    return earlier[-1] if earlier else None


def _replace_directory(source: str, destination: str) -> None:
    """`os.replace` for folders: atomic when the destination does not exist; an old one is moved aside first."""
    if os.path.exists(destination):
        aside = destination + ".replaced"
        os.replace(destination, aside)
        os.replace(source, destination)
        shutil.rmtree(aside)
    else:
        os.replace(source, destination)


def describe_error(error: BaseException) -> str:
    """An exception's first line (or its type), for a one-line message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
    is on a filesystem every process sees, as `save_state` does. A write that fails on any process (a full disk, a
    folder that became read-only) removes the temporary folder and ends every process with one `UserError` that
    names the folder; the previous checkpoints are untouched.
    """
    final = os.path.join(checkpoints_dir, f"{CHECKPOINT_PREFIX}{step:08d}")
    temporary = os.path.join(checkpoints_dir, f"{TEMPORARY_PREFIX}{CHECKPOINT_PREFIX}{step:08d}")
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    failure = None
    try:
        accelerator.save_state(temporary)
    except (OSError, RuntimeError, SafetensorError) as error:  # torch.save says "unexpected pos" on a full disk
        failure = describe_error(error)
    reports = gather_object([[data_position, failure]])
    failures = [failure for _, failure in reports if failure]
    if accelerator.is_main_process and not failures:
        try:
            state = {**training_state, "step": step, "data_positions": [position for position, _ in reports]}
            with open(os.path.join(temporary, TRAINING_STATE_NAME), "w", encoding="utf-8") as file:
                json.dump(state, file, indent=2)
            _replace_directory(temporary, final)
        except OSError as error:
            failures.append(describe_error(error))
    (failures,) = broadcast_object_list([failures])
    if failures:
        raise UserError(_write_failure(accelerator, checkpoints_dir, final, temporary, failures[0]))
    if accelerator.is_main_process:
        _rotate(checkpoints_dir, save_total_limit)
    accelerator.wait_for_everyone()
    return final


def _write_failure(accelerator: Accelerator, checkpoints_dir: str, final: str, temporary: str, reason: str) -> str:
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    previous = list_checkpoints(checkpoints_dir)
    intact = f"the previous checkpoint, {previous[-1]}, is intact" if previous else "no earlier checkpoint exists"
    return (
        f"Could not write {os.path.basename(final)} in {checkpoints_dir} ({reason}): the disk may be full or the "
        f"folder not writable; {intact}. Free space or fix the folder, then continue with --resume_from_checkpoint "
        "latest."
    )


def _rotate(checkpoints_dir: str, save_total_limit: int) -> None:
    """Deletes all but the newest `save_total_limit` checkpoints; a failure is a warning, the new one is written."""
    for old in list_checkpoints(checkpoints_dir)[:-save_total_limit]:
        try:
            shutil.rmtree(old)
        except OSError as error:
            logger.warning(f"Could not delete the old checkpoint {old} ({describe_error(error)}); the run goes on.")


def check_random_states(checkpoint: str, num_processes: int) -> None:
    """Refuses a checkpoint whose RNG states (one file per process) are missing or unreadable: Accelerate would go
    on without them, and the resumed run's random draws (drop path) would then differ from the uninterrupted run's."""
    for index in range(num_processes):
        path = os.path.join(checkpoint, f"{RNG_STATE_NAME}_{index}.pkl")
        try:
            states = load(path)  # as `load_state` reads it
            if not isinstance(states, dict) or not {"random_state", "torch_manual_seed"} <= states.keys():
                raise ValueError("not the RNG states Accelerate writes")
        except Exception as error:  # a truncated pickle raises anything from EOFError to UnpicklingError
            reason = "is missing" if isinstance(error, FileNotFoundError) else f"is damaged ({describe_error(error)})"
            earlier = earlier_checkpoint(checkpoint)
            way_out = f"--resume_from_checkpoint {earlier}" if earlier else "a fresh start (--overwrite_output_dir)"
            raise UserError(
                f"Cannot resume from {checkpoint}: {os.path.basename(path)} {reason}, so the resumed run's random "
                f"draws (drop path) would not repeat the interrupted run's. Resume from the checkpoint before it "
                f"({way_out})."
            ) from error


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
    check_random_states(checkpoint, accelerator.num_processes)
    try:
        accelerator.load_state(checkpoint)
    except (OSError, RuntimeError, ValueError, SafetensorError) as error:  # a damaged file or another model's state
        raise UserError(
            f"Cannot resume from {checkpoint} ({describe_error(error)}): resume from an earlier checkpoint "
            "(--resume_from_checkpoint PATH), or with the arguments that wrote it."
        ) from error
    return {**state, "data_position": positions[accelerator.process_index]}
