# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""One output folder, one run: what counts as a run's outputs, the refusal to write over another run, the checkpoint
`--resume_from_checkpoint latest` means, and the hint an interrupted run leaves. Shared by the Trainer scripts
(`run_finetune.py`, `run_semantic_segmentation.py`, `run_object_detection.py`, `run_instance_segmentation.py`) and
the linear probe; `run_pretrain.py` keeps its own layout (`checkpoints/`, `final/`)."""

import contextlib
import fnmatch
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import UserError


CHECKPOINT_FOLDER = re.compile(r"^checkpoint-(\d+)$")  # the Trainer's checkpoint-<global step> folders
CHECKPOINT_COMPLETE_FILE = "trainer_state.json"  # the last file the Trainer writes into a checkpoint
# Files whose presence says that a run finished or saved a model here: results, weights, the Trainer's final state.
RUN_RESULTS = (
    "results.json",
    "trainer_state.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "probe_head.safetensors",
)
# Written beside them by the same runs; cleared with them, so nothing of the previous run is mistaken for the new one.
RUN_COMPANIONS = (
    "config.json",
    "preprocessor_config.json",
    "training_args.bin",
    "README.md",
    "accuracy.png",
    "all_results.json",
    "train_results.json",
    "eval_results.json",
    "model-*-of-*.safetensors",
)
RUN_FILES = (*RUN_RESULTS, *RUN_COMPANIONS)
RESUME_LATEST = ("latest", "true")  # `true` is the Trainer's own word for it


@dataclass
class OutputFolderArguments:
    """What a command may do to an output folder that holds another run."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in an output_dir that holds another run: its results, model and checkpoint-N "
            "folders are deleted first. Without it such a folder is refused unless resuming."
        },
    )


def list_checkpoints(output_dir: str, complete_only: bool = True) -> list[str]:
    """The `checkpoint-N` folders of `output_dir`, oldest step first; `complete_only` leaves out those a run
    stopped while writing (no trainer_state.json yet)."""
    if not os.path.isdir(output_dir):
        return []
    steps = sorted(
        (int(match[1]), name)
        for name in os.listdir(output_dir)
        if (match := CHECKPOINT_FOLDER.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    folders = [os.path.join(output_dir, name) for _, name in steps]
    if complete_only:
        folders = [folder for folder in folders if os.path.isfile(os.path.join(folder, CHECKPOINT_COMPLETE_FILE))]
    return folders


def find_previous_run(output_dir: str) -> list[str]:
    """What of another run `output_dir` holds: results, a model, complete checkpoints (names, checkpoints with
    a trailing `/`). Empty for a missing or fresh folder."""
    if not os.path.isdir(output_dir):
        return []
    found = [name for name in RUN_RESULTS if os.path.isfile(os.path.join(output_dir, name))]
    return found + [os.path.basename(folder) + "/" for folder in list_checkpoints(output_dir)]


def check_output_dir(output_dir: str, overwrite: bool, resume: str | None = None, resumable: bool = True) -> None:
    """Refuses an `output_dir` that is a file, or that holds another run when neither resuming nor overwriting.
    `resumable`: the command has `--resume_from_checkpoint` (the probe has not); resuming is suggested only where
    there is a checkpoint to resume. Raises `UserError`."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError(f"--output_dir {output_dir} is a file: give a folder (it is created if missing).")
    previous = find_previous_run(output_dir)
    if not previous or overwrite or resume:
        return
    shown = ", ".join(previous[:4]) + (", ..." if len(previous) > 4 else "")
    resumable = resumable and any(name.endswith("/") for name in previous)
    resume_hint = "Continue it with --resume_from_checkpoint latest, start" if resumable else "Start"
    raise UserError(
        f"--output_dir {output_dir} holds another run ({shown}). {resume_hint} afresh with --overwrite_output_dir "
        "true (which deletes it), or choose another --output_dir."
    )


def clear_previous_run(output_dir: str) -> list[str]:
    """Deletes the previous run's results, model files and every `checkpoint-N` folder of `output_dir` (so
    `latest` can only mean this run's), says so on stderr, and returns what it deleted. Other files stay."""
    if not os.path.isdir(output_dir):
        return []
    removed = []
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if CHECKPOINT_FOLDER.match(name) and os.path.isdir(path):
            shutil.rmtree(path)
            removed.append(name + "/")
        elif os.path.isfile(path) and any(fnmatch.fnmatch(name, pattern) for pattern in RUN_FILES):
            os.remove(path)
            removed.append(name)
    if removed:
        print(
            f"--overwrite_output_dir: deleted {', '.join(removed)} of the previous run in {output_dir}.",
            file=sys.stderr,
        )
    return removed


def resolve_resume_checkpoint(resume: str | None, output_dir: str) -> str | None:
    """The checkpoint a Trainer run continues from: `latest` (or `true`) is the newest complete `checkpoint-N` of
    `output_dir`, the run this folder holds; a path must be a complete Trainer checkpoint. Raises `UserError`."""
    if resume is None:
        return None
    if resume.lower() in RESUME_LATEST:
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            where = "does not exist" if not os.path.isdir(output_dir) else "holds no complete checkpoint-N folder"
            raise UserError(
                f"--resume_from_checkpoint {resume}: --output_dir {output_dir} {where}, so there is nothing to "
                "continue: leave --resume_from_checkpoint out to start (with --overwrite_output_dir true over another "
                "run's results)."
            )
        return checkpoints[-1]
    if not os.path.isfile(os.path.join(resume, CHECKPOINT_COMPLETE_FILE)):
        raise UserError(
            f"--resume_from_checkpoint {resume} is no complete Trainer checkpoint (no {CHECKPOINT_COMPLETE_FILE} "
            "there): give a checkpoint-N folder of the output_dir, or latest."
        )
    return resume


@contextlib.contextmanager
def resume_hint_on_interrupt(output_dir: str, is_main_process: bool = True) -> Iterator[None]:
    """On Ctrl-C, says (on the main process) where the run can continue from and how, then lets the interrupt
    end the command."""
    try:
        yield
    except KeyboardInterrupt:
        if is_main_process:
            checkpoints = list_checkpoints(output_dir)
            if checkpoints:
                hint = (
                    f"the last checkpoint is {checkpoints[-1]}. The same command with --resume_from_checkpoint "
                    "latest continues from it."
                )
            else:
                hint = "no checkpoint was written yet (--save_strategy / --save_steps say when); rerun to start again."
            print(f"\nInterrupted: {hint}", file=sys.stderr, flush=True)  # a progress bar may hold the line
        raise
