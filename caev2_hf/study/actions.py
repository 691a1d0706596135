# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""What a study does, as functions of a study file and the folder its runs live in: `list_study` (each run's state),
`run_study` (launch what is missing, or print the commands) and `report_study` (ours beside the paper's)."""

import os
import shlex
import sys
from pathlib import Path
from typing import BinaryIO

from caev2_hf_cli.errors import UserError

from .commands import PRETRAINING_SCRIPT, RunPlan, Step, plan_runs
from .definition import Study, load_study
from .offline_data import prepare_offline_data
from .report import write_report
from .runner import Launch, launcher_script, run_plans
from .state import StepState, format_listing, read_run_status


def find_repository() -> str:
    """The clone's folder, which holds the scripts a study runs (`run_pretrain.py`, ...)."""
    repository = str(Path(__file__).resolve().parents[2])
    if not os.path.isfile(os.path.join(repository, PRETRAINING_SCRIPT)):
        raise UserError(
            f"A study runs the scripts of a clone of caev2_hf ({PRETRAINING_SCRIPT}, ...), and {repository} has none: "
            "run it from a clone (pip install -e .)."
        )
    return repository


def open_study(study_path: str, output_dir: str) -> tuple[Study, list[RunPlan], str]:
    """The study, its runs under `output_dir` (made absolute: the scripts run from the repository) and that path."""
    output_dir = os.path.abspath(output_dir)
    if os.path.isfile(output_dir):
        raise UserError(f"--output_dir {output_dir} is a file: give the folder the study's runs live in.")
    study = load_study(study_path, find_repository())
    return study, plan_runs(study, output_dir), output_dir


def list_study(study_path: str, output_dir: str) -> str:
    """Each run of the study with its state (not started, pretraining, evaluating, done, failed) and its steps'."""
    _, plans, _ = open_study(study_path, output_dir)
    return format_listing([read_run_status(plan) for plan in plans])


def run_study(
    study_path: str,
    output_dir: str,
    launch_command: str | None = None,
    launcher: bool = False,
    stop_on_failure: bool = False,
    echo: BinaryIO | None = None,
) -> str | list[tuple[Step, StepState]]:
    """Writes the study's offline data, then launches every step not done yet in order (each resuming what it
    left) and returns how each ended; with `launcher`, returns those steps' commands as a shell script instead.

    `launch_command` starts each script: by default this Python when running, `accelerate launch` when printing.
    """
    study, plans, output_dir = open_study(study_path, output_dir)
    prepare_offline_data(study.offline_data, output_dir)
    default = "accelerate launch" if launcher else sys.executable
    launch = Launch(find_repository(), tuple(shlex.split(launch_command or default)), echo)
    if launcher:
        return launcher_script(plans, launch, f"{study.title} ({study.path})")
    return run_plans(plans, launch, stop_on_failure)


def report_study(study_path: str, output_dir: str, report_dir: str | None = None) -> dict[str, str]:
    """Writes the report (Markdown, JSON, and a figure study's PNG) into `report_dir` (default: the study folder's
    `reports/`); returns the paths."""
    study, plans, output_dir = open_study(study_path, output_dir)
    statuses = [read_run_status(plan) for plan in plans]
    return write_report(study, statuses, output_dir, report_dir or os.path.join(output_dir, "reports"))
