# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""The command line of every step of a study: `run_pretrain.py` for a row's setting, then one evaluation script per
column, each with explicit arguments over its recipe config."""

import json
import os
import re
from dataclasses import dataclass

from caev2_hf_cli.pretraining import MASK_LAYOUT_ARGUMENTS


@dataclass(frozen=True)
class EvaluationKind:
    """A script an evaluation runs, the metrics its results.json holds (fractions), and how it resumes."""

    script: str | None  # None: this package has no such script yet, the study lists the evaluation as unavailable
    metrics: tuple[str, ...]
    resumes_from_trainer_checkpoint: bool  # a Trainer script: continue from its newest checkpoint-N folder


EVALUATION_KINDS = {
    "linear_probe": EvaluationKind("run_linear_probe.py", ("top1_accuracy", "top5_accuracy"), False),
    "finetune": EvaluationKind("run_finetune.py", ("top1_accuracy", "top5_accuracy"), True),
    "segmentation": EvaluationKind("run_semantic_segmentation.py", ("mean_iou", "overall_accuracy"), True),
    "detection": EvaluationKind(None, ("box_ap", "mask_ap"), False),  # COCO, Mask R-CNN / Cascade (Tables 5, 6)
}
PRETRAINING_SCRIPT = "run_pretrain.py"
PRETRAINING = "pretraining"  # the step name of a run's pretraining
FINAL_FOLDER = "final"  # what run_pretrain.py exports at the end: the encoder every evaluation reads
TRAINER_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Step:
    """One script run of a study: where it writes, its arguments, and its setting (what it computes, independent
    of where the study's outputs are), kept in its folder so a relaunch with another setting is refused."""

    run: str
    name: str  # PRETRAINING or the evaluation's name
    folder: str
    script: str
    arguments: tuple[str, ...]
    setting: dict
    resumes_from_trainer_checkpoint: bool = False


def pretraining_overrides(model: dict, masking: dict) -> dict:
    """run_pretrain.py arguments for a row's model and masking changes: the mask count (`num_masking_patches`,
    `mask_ratio`) is a CAEv2Config field and joins `config_overrides`; the layout (`mask_strategy`) is a data
    argument of its own."""
    layout = {key: value for key, value in masking.items() if key in MASK_LAYOUT_ARGUMENTS}
    overrides = {**model, **{key: value for key, value in masking.items() if key not in layout}}
    return {**layout, **({"config_overrides": overrides} if overrides else {})}


def resolve_placeholders(value, output_dir: str, size: str):
    """`{output_dir}` (the study's folder, absolute) and `{size}` (the row's preset) in every string of `value`."""
    if isinstance(value, str):
        return value.replace("{output_dir}", output_dir).replace("{size}", size)
    if isinstance(value, list):
        return [resolve_placeholders(item, output_dir, size) for item in value]
    if isinstance(value, dict):
        return {key: resolve_placeholders(item, output_dir, size) for key, item in value.items()}
    return value


def format_arguments(values: dict) -> list[str]:
    """`--name value` flags as the scripts parse them: booleans as true/false, lists as several values, mappings
    as JSON."""
    flags = []
    for name, value in values.items():
        if isinstance(value, dict):
            flags += [f"--{name}", json.dumps(value)]
        elif isinstance(value, list):
            flags += [f"--{name}", *(format_scalar(item) for item in value)]
        elif value is not None:
            flags += [f"--{name}", format_scalar(value)]
    return flags


def format_scalar(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def pretraining_step(row, pretraining_arguments: dict, output_dir: str) -> Step:
    """`run_pretrain.py --config RECIPE --output_dir RUN` with the row's changes (and the study's arguments)."""
    folder = os.path.join(output_dir, row.run_name)
    values = {**pretraining_arguments, **row.training, **pretraining_overrides(row.model, row.masking)}
    setting = {"script": PRETRAINING_SCRIPT, "config": row.pretraining, "arguments": values}
    if "config_overrides" in values:  # given whole: run_pretrain.py drops the file's mapping beside a data flag
        values = {**values, "config_overrides": {**row.recipe_overrides, **values["config_overrides"]}}
    arguments = ["--config", row.pretraining, "--output_dir", folder]
    arguments += format_arguments(resolve_placeholders(values, output_dir, row.size))
    return Step(row.run_name, PRETRAINING, folder, PRETRAINING_SCRIPT, tuple(arguments), setting)


def evaluation_step(row, evaluation, output_dir: str) -> Step:
    """The evaluation's script on the run's `final/` encoder, writing into the run folder's `<evaluation name>/`."""
    kind = EVALUATION_KINDS[evaluation.kind]
    run_folder = os.path.join(output_dir, row.run_name)
    folder = os.path.join(run_folder, evaluation.name)
    arguments = ["--config", evaluation.config] if evaluation.config else []
    arguments += ["--model", os.path.join(run_folder, FINAL_FOLDER), "--output_dir", folder]
    arguments += format_arguments(resolve_placeholders(evaluation.arguments, output_dir, row.size))
    setting = {"script": kind.script, "config": evaluation.config, "arguments": evaluation.arguments}
    return Step(
        row.run_name, evaluation.name, folder, kind.script, tuple(arguments), setting,
        kind.resumes_from_trainer_checkpoint,
    )  # fmt: skip


def resume_arguments(step: Step) -> list[str]:
    """What makes a relaunched step continue: pretraining resumes its newest checkpoint (or starts, if none), a
    Trainer script its newest `checkpoint-N`; a probe starts again (the fast protocol reuses its feature cache)."""
    if step.name == PRETRAINING:
        return ["--resume_from_checkpoint", "latest"]
    if not step.resumes_from_trainer_checkpoint or not os.path.isdir(step.folder):
        return []
    numbers = [int(match[1]) for name in os.listdir(step.folder) if (match := TRAINER_CHECKPOINT.match(name))]
    complete = [
        n for n in numbers if os.path.isfile(os.path.join(step.folder, f"checkpoint-{n}", "trainer_state.json"))
    ]
    return ["--resume_from_checkpoint", os.path.join(step.folder, f"checkpoint-{max(complete)}")] if complete else []


@dataclass(frozen=True)
class RunPlan:
    """One run folder of a study: the rows that share it, its pretraining, then its evaluations in column order,
    each with the reason it cannot run (None when it can)."""

    name: str
    rows: tuple
    pretraining: Step
    evaluations: tuple[tuple[Step, str | None], ...]


def plan_runs(study, output_dir: str) -> list[RunPlan]:
    """Every run of the study once, in the order its rows first name it; an evaluation that several of its rows
    report runs once."""
    rows_by_run = {}
    for row in study.rows:
        rows_by_run.setdefault(row.run_name, []).append(row)
    plans = []
    for name, rows in rows_by_run.items():
        evaluations = {}
        for row in rows:
            for evaluation in row.evaluations.values():
                step = evaluation_step(row, evaluation, output_dir)
                evaluations.setdefault(evaluation.name, (step, evaluation.unavailable))
        pretraining = pretraining_step(rows[0], study.pretraining_arguments, output_dir)
        plans.append(RunPlan(name, tuple(rows), pretraining, tuple(evaluations.values())))
    return plans
