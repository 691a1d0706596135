# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Atomic pretraining checkpoints and exact resume.

A checkpoint folder holds what `Accelerator.save_state` writes (model with its frozen teacher, optimizer, scheduler,
GradScaler, and every process's RNG states) plus `training_state.json`: the update count, each process's data
position (`data.pretraining_stream.StreamPosition`, which says how the stream resumes), the skip counters, the
schedule and the arguments.
"""

import json
import os
import re
import shutil

from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors import SafetensorError
from transformers.utils import logging

from caev2_hf_cli.errors import UserError


logger = logging.get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TEMPORARY_PREFIX = ".incomplete-"
TRAINING_STATE_NAME = "training_state.json"


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
    # Exact names only: a `.replaced` folder left by a crash inside `replace_folder` is stale, not complete.
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


def replace_folder(source: str, destination: str) -> None:
    """`os.replace` for folders: atomic when the destination does not exist; an old one is moved aside first (to
    `.replaced`, where one left by a crash is deleted) and deleted last."""
    if os.path.exists(destination):
        aside = os.path.normpath(destination) + ".replaced"
        shutil.rmtree(aside, ignore_errors=True)
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
        replace_folder(temporary, final)
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
