# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Running a study: every step not done yet, in order (a run's pretraining, then its evaluations), each as its own
script in a subprocess; or, for a cluster scheduler, the commands that would run them."""

import logging
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from typing import BinaryIO

from caev2_hf_cli.errors import UserError

from ..files import write_json
from .commands import FINAL_FOLDER, PRETRAINING, RunPlan, Step, resume_arguments
from .state import (
    DONE,
    FAILED,
    FAILED_FILE,
    LOG_FILE,
    OTHER_SETTING,
    STEP_FILE,
    UNAVAILABLE,
    StepState,
    read_run_status,
    step_state,
)


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Launch:
    """How a step is started: from the folder holding the scripts, behind a command such as `python` or
    `accelerate launch --num_processes 8`; a script's output also goes to `echo` when given."""

    repository_dir: str
    command: tuple[str, ...]
    echo: BinaryIO | None = None

    def command_line(self, step: Step) -> list[str]:
        return [*self.command, step.script, *step.arguments, *resume_arguments(step)]


def stream_process(command: list[str], launch: Launch, log: BinaryIO) -> int:
    """Runs `command`, its output copied as it comes to the log (and to `launch.echo`); returns its exit status.
    Ctrl-C reaches the script too (same process group): it is given the time to stop cleanly, then re-raised."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, cwd=launch.repository_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment
    )
    try:
        while chunk := process.stdout.read1(65536):
            log.write(chunk)
            if launch.echo is not None:
                launch.echo.write(chunk)
                launch.echo.flush()
        return process.wait()
    except KeyboardInterrupt:
        process.wait()
        raise


def run_step(step: Step, launch: Launch) -> StepState:
    """Launches one step (resuming what it left), with its output in `study.log` of its folder; records a failure
    in `study_failed.json` there, and clears that record when a later attempt starts."""
    state = step_state(step)
    if state.state == OTHER_SETTING:
        raise UserError(
            f"{step.folder} holds {step.name} of another setting ({state.detail}): give the study another "
            "--output_dir, or remove that folder to start the step again."
        )
    os.makedirs(step.folder, exist_ok=True)
    write_json(os.path.join(step.folder, STEP_FILE), {"setting": step.setting}, indent=2)
    failed_file = os.path.join(step.folder, FAILED_FILE)
    if os.path.exists(failed_file):
        os.remove(failed_file)
    command = launch.command_line(step)
    log_path = os.path.join(step.folder, LOG_FILE)
    logger.info(f"{step.run}: {step.name}: {shlex.join(command)}")
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(command)}\n".encode())
        returncode = stream_process(command, launch, log)
    state = step_state(step)
    if returncode == 0 and state.state == DONE:
        return state
    reason = (
        "" if returncode else f"exited 0 without writing {'final/' if step.name == PRETRAINING else 'results.json'}"
    )
    write_json(
        failed_file, {"returncode": returncode, "reason": reason, "command": command, "log": log_path}, indent=2
    )
    return step_state(step)


def run_plan(plan: RunPlan, launch: Launch) -> list[tuple[Step, StepState]]:
    """A run's missing steps in order; after a failed pretraining its evaluations wait for the next `run`."""
    status = read_run_status(plan)
    outcomes = []
    if status.pretraining.state != DONE:
        outcomes.append((plan.pretraining, run_step(plan.pretraining, launch)))
        if outcomes[-1][1].state != DONE:
            return outcomes
    for step, state in status.evaluations:
        if state.state not in (DONE, UNAVAILABLE):
            outcomes.append((step, run_step(step, launch)))
    return outcomes


def run_plans(plans: list[RunPlan], launch: Launch, stop_on_failure: bool = False) -> list[tuple[Step, StepState]]:
    """Every run's missing steps; returns what each launched step ended in."""
    outcomes = []
    for plan in plans:
        outcomes += run_plan(plan, launch)
        if stop_on_failure and any(state.state == FAILED for _, state in outcomes):
            break
    return outcomes


def launcher_script(plans: list[RunPlan], launch: Launch, title: str) -> str:
    """The steps not done yet as a shell script, one command per line, for a cluster scheduler: a run's
    evaluations need its pretraining's `final/` first. Steps that cannot run are listed as comments."""
    lines = [
        f"# {title}: the steps not done yet, in order. Run from the repository:",
        f"cd {shlex.quote(launch.repository_dir)}",
    ]
    for plan in plans:
        status = read_run_status(plan)
        steps = [(plan.pretraining, status.pretraining), *status.evaluations]
        pending = [(step, state) for step, state in steps if state.state != DONE]
        if not pending:
            continue
        final = os.path.join(plan.pretraining.folder, FINAL_FOLDER)
        lines.append(f"# {plan.name}: its evaluations read {final}, which its pretraining writes last")
        for step, state in pending:
            if state.state == OTHER_SETTING:
                raise UserError(f"{step.folder} holds {step.name} of another setting ({state.detail}).")
            if state.state == UNAVAILABLE:
                lines.append(f"# {step.name}: {state.detail}")
            else:
                lines.append(shlex.join(launch.command_line(step)))
    return "\n".join(lines)
