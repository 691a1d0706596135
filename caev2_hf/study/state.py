# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Where each run of a study stands, read from its folder alone (docs/studies.md#states).

A pretraining is done when `final/` holds its exported encoder (`run_pretrain.py` writes it last, renamed into place
when complete); an evaluation is done when its `results.json` reads. A step the study launched keeps its setting in
`study_step.json` and, when its script failed, `study_failed.json` (exit status and log); both sit in its folder.
"""

import glob
import json
import os
import re
from dataclasses import dataclass

from .commands import FINAL_FOLDER, PRETRAINING, RunPlan, Step


STEP_FILE = "study_step.json"
FAILED_FILE = "study_failed.json"
RESULTS_FILE = "results.json"
LOG_FILE = "study.log"
NOT_STARTED, STARTED, DONE, FAILED, UNAVAILABLE = "not started", "started", "done", "failed", "unavailable"
OTHER_SETTING = "other setting"  # the folder holds this step of another setting (a changed recipe or study)
CHECKPOINT_STATE = re.compile(r"checkpoint-(\d+)")


@dataclass(frozen=True)
class StepState:
    """A step's state and what explains it: the failure (exit status, log), or why it cannot run."""

    state: str
    detail: str | None = None


def read_json(path: str) -> dict | None:
    """A JSON object from `path`, or None when the file is missing, half written or no object."""
    try:
        with open(path, encoding="utf-8") as file:
            value = json.load(file)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def failure_detail(folder: str) -> str | None:
    """`exit status N, log: PATH` from a step's failure record, or None when it has none."""
    failure = read_json(os.path.join(folder, FAILED_FILE))
    if failure is None:
        return None
    reason = f", {failure['reason']}" if failure.get("reason") else ""
    return f"exit status {failure.get('returncode')}{reason}, log: {failure.get('log')}"


def is_pretrained(run_folder: str) -> bool:
    return os.path.isfile(os.path.join(run_folder, FINAL_FOLDER, "config.json"))


def read_results(step: Step) -> dict | None:
    return read_json(os.path.join(step.folder, RESULTS_FILE))


def step_state(step: Step, unavailable: str | None = None) -> StepState:
    """Done, failed, started (running now, or stopped: `run` continues it), not started, or unavailable."""
    if unavailable:
        return StepState(UNAVAILABLE, unavailable)
    stored = read_json(os.path.join(step.folder, STEP_FILE))
    if stored is not None and stored.get("setting") != step.setting:
        return StepState(OTHER_SETTING, f"{os.path.join(step.folder, STEP_FILE)} holds {stored.get('setting')}")
    done = is_pretrained(step.folder) if step.name == PRETRAINING else read_results(step) is not None
    if done:
        return StepState(DONE)
    failure = failure_detail(step.folder)
    if failure:
        return StepState(FAILED, failure)
    if step.name != PRETRAINING and os.path.isfile(os.path.join(step.folder, RESULTS_FILE)):
        return StepState(FAILED, f"{os.path.join(step.folder, RESULTS_FILE)} does not read as a JSON object")
    if os.path.isfile(os.path.join(step.folder, STEP_FILE)) or has_checkpoints(step.folder):
        return StepState(STARTED, f"log: {os.path.join(step.folder, LOG_FILE)}")
    return StepState(NOT_STARTED)


def has_checkpoints(folder: str) -> bool:
    checkpoints = os.path.join(folder, "checkpoints")
    return os.path.isdir(checkpoints) and bool(os.listdir(checkpoints))


def run_state(pretraining: StepState, evaluations: list[StepState]) -> str:
    """A run's state: failed if a step failed; done when pretrained and every evaluation that can run is done;
    evaluating once pretrained; pretraining once started; else not started."""
    if any(state.state in (FAILED, OTHER_SETTING) for state in (pretraining, *evaluations)):
        return FAILED
    if pretraining.state == DONE:
        pending = [state for state in evaluations if state.state not in (DONE, UNAVAILABLE)]
        return "evaluating" if pending else DONE
    return PRETRAINING if pretraining.state == STARTED else NOT_STARTED


def pretraining_summary(run_folder: str) -> dict:
    """The updates and last logged loss of a run's newest checkpoint (`training_state.json`), for the report."""
    states = glob.glob(os.path.join(run_folder, "checkpoints", "checkpoint-*", "training_state.json"))
    numbered = [(int(match[1]), path) for path in states if (match := CHECKPOINT_STATE.search(path))]
    if not numbered:
        return {}
    state = read_json(max(numbered)[1]) or {}
    loss = (state.get("last_metrics") or {}).get("loss")
    return {"updates": state.get("step"), "loss": loss}


@dataclass(frozen=True)
class RunStatus:
    plan: RunPlan
    state: str
    pretraining: StepState
    evaluations: tuple[tuple[Step, StepState], ...]


def read_run_status(plan: RunPlan) -> RunStatus:
    pretraining = step_state(plan.pretraining)
    evaluations = tuple((step, step_state(step, unavailable)) for step, unavailable in plan.evaluations)
    return RunStatus(plan, run_state(pretraining, [state for _, state in evaluations]), pretraining, evaluations)


def format_listing(statuses: list[RunStatus]) -> str:
    """`list`'s text: each run with its state and the rows it serves, then each step's state and detail."""
    counts = {}
    lines = []
    for status in statuses:
        counts[status.state] = counts.get(status.state, 0) + 1
        rows = "; ".join(f"{row.group} {row.label}".strip() for row in status.plan.rows)
        lines.append(f"{status.plan.name}  [{status.state}]  ({rows})")
        steps = [(status.plan.pretraining, status.pretraining), *status.evaluations]
        for step, state in steps:
            detail = f" ({state.detail})" if state.detail else ""
            lines.append(f"    {step.name:<24} {state.state}{detail}")
    summary = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
    return "\n".join([f"{len(statuses)} runs: {summary}", *lines])
