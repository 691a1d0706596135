# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""A study file (`configs/paper/*.yaml`, docs/studies.md) read into rows: one pretraining setting each, the
evaluations its table reports and the paper's numbers beside them.

Only YAML is read here, never the model: a row's run folder is named after the changes it makes to its recipe, so two
rows (of any study) with the same recipe and the same changes share one run.
"""

import os
import re
from dataclasses import dataclass, field

import yaml

from caev2_hf_cli.errors import UserError

from .commands import EVALUATION_KINDS


STUDY_KEYS = {
    "title", "source", "note", "columns", "evaluations", "rows", "pretraining_arguments", "offline_data", "plot"
}  # fmt: skip
ROW_KEYS = {"group", "label", "x", "pretraining", "model", "masking", "training", "evaluations", "paper", "source"}
EVALUATION_KEYS = {"kind", "config", "arguments", "by_size"}
MASKING_KEYS = {"mask_strategy", "num_masking_patches", "mask_ratio"}
NAME_VALUE = re.compile(r"^[A-Za-z0-9_.-]+$")  # what a run folder's name may hold


@dataclass(frozen=True)
class PaperValue:
    """A number as the paper prints it, where it prints it, and whether it was read off a plot."""

    value: float
    source: str
    approximate: bool = False


@dataclass(frozen=True)
class Column:
    """One metric column of the paper's table: which evaluation gives it and under which key of its results.json."""

    name: str
    evaluation: str
    metric: str


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a run, as the study states it (placeholders `{output_dir}` and `{size}` unresolved).

    `unavailable` says why it cannot run (no recipe for this size, no script in this package), else None.
    """

    name: str
    kind: str
    config: str | None
    arguments: dict
    unavailable: str | None = None


@dataclass(frozen=True)
class Row:
    """One row of a table (or point of a figure): a pretraining setting, its evaluations and the paper's numbers."""

    group: str
    label: str
    pretraining: str  # the recipe config (configs/vit-*.yaml) the row changes
    size: str  # the recipe's model_preset, which `{size}` in evaluation configs stands for
    recipe_overrides: dict  # the recipe's own config_overrides (configs/demo.yaml's small model)
    model: dict  # CAEv2Config fields
    masking: dict  # mask_strategy, num_masking_patches / mask_ratio
    training: dict  # run_pretrain.py arguments (num_train_epochs, ...)
    evaluations: dict[str, Evaluation]  # by column name
    paper: dict[str, PaperValue]  # by column name
    x: float | None = None  # a figure's abscissa (Figure 3: the mask ratio in %)

    @property
    def run_name(self) -> str:
        """The run folder's name: the recipe's file name, then `+field=value` for each change, sorted."""
        changes = {**self.model, **self.masking, **self.training}
        stem = os.path.splitext(os.path.basename(self.pretraining))[0]
        return stem + "".join(f"+{key}={format_name_value(changes[key])}" for key in sorted(changes))


@dataclass(frozen=True)
class Study:
    path: str
    title: str
    source: str
    columns: list[Column]
    rows: list[Row]
    pretraining_arguments: dict = field(default_factory=dict)  # every row's run_pretrain.py arguments
    offline_data: dict = field(default_factory=dict)  # data written once before any run (offline_data.py)
    note: str | None = None
    plot_x_label: str | None = None  # set for a figure: report draws ours over the paper's points

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]


def format_name_value(value) -> str:
    """A setting's value as it appears in a run folder's name (`true`, `0.4`, `mse`)."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if not NAME_VALUE.match(text):
        raise UserError(f"{value!r} cannot name a run folder: give a number, true/false or a plain word.")
    return text


def require_mapping(value, where: str, allowed: set[str] | None = None) -> dict:
    """`value` as a mapping (None is an empty one), its keys among `allowed` when given."""
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping, not {type(value).__name__}.")
    unknown = sorted(set(value) - allowed) if allowed is not None else []
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(allowed))}."
        )
    return value


def read_recipe(recipe: str, repository_dir: str, where: str) -> tuple[str, dict]:
    """A pretraining config's `model_preset` (the `{size}` of its evaluations) and its own `config_overrides`."""
    path = os.path.join(repository_dir, recipe)
    if not os.path.isfile(path):
        raise UserError(f"{where}: pretraining config {recipe} does not exist (paths start at {repository_dir}).")
    with open(path, encoding="utf-8") as file:
        values = yaml.safe_load(file) or {}
    size = str(values.get("model_preset", "base"))  # run_pretrain.py's default preset
    return size, require_mapping(values.get("config_overrides"), path)


def parse_paper_values(values, columns: list[Column], default_source: str, where: str) -> dict[str, PaperValue]:
    """`{column: number}` or `{column: {value, source, approximate}}`; null means the paper prints none."""
    known = {column.name for column in columns}
    parsed = {}
    for name, entry in require_mapping(values, f"{where}: paper", known).items():
        if entry is None:
            continue
        entry = entry if isinstance(entry, dict) else {"value": entry}
        require_mapping(entry, f"{where}: paper: {name}", {"value", "source", "approximate"})
        if not isinstance(entry.get("value"), int | float) or isinstance(entry.get("value"), bool):
            raise UserError(f"{where}: paper: {name}: {entry.get('value')!r} is not a number.")
        source = entry.get("source", default_source)
        parsed[name] = PaperValue(float(entry["value"]), source, bool(entry.get("approximate", False)))
    return parsed


def parse_evaluation(name: str, template: dict, size: str, repository_dir: str, where: str) -> Evaluation:
    """The study's evaluation `name` for a recipe of `size`: its `by_size` entry laid over the template, null
    there meaning that size has no recipe."""
    kind = template["kind"]
    by_size = require_mapping(template.get("by_size"), f"{where}: evaluations: {name}: by_size")
    if size in by_size and by_size[size] is None:
        return Evaluation(name, kind, None, {}, unavailable=f"no recipe for ViT-{size.capitalize()}")
    special = require_mapping(
        by_size.get(size), f"{where}: evaluations: {name}: by_size: {size}", {"config", "arguments"}
    )
    config = special.get("config", template.get("config"))
    config = config.format(size=size) if config else None
    if config and not os.path.isfile(os.path.join(repository_dir, config)):
        raise UserError(
            f"{where}: evaluations: {name}: config {config} does not exist (paths start at {repository_dir})."
        )
    arguments = {**require_mapping(template.get("arguments"), f"{where}: evaluations: {name}: arguments")}
    arguments |= require_mapping(special.get("arguments"), f"{where}: evaluations: {name}: by_size: {size}: arguments")
    script = EVALUATION_KINDS[kind].script
    unavailable = None if script else f"no {kind} script in this package yet"
    return Evaluation(name, kind, config, arguments, unavailable)


def check_evaluation_templates(templates: dict, where: str) -> None:
    """Each evaluation a mapping of known keys with a known script kind."""
    for name, template in templates.items():
        template = require_mapping(template, f"{where}: evaluations: {name}", EVALUATION_KEYS)
        if template.get("kind") not in EVALUATION_KINDS:
            raise UserError(
                f"{where}: evaluations: {name}: kind {template.get('kind')!r}; choose one of "
                f"{', '.join(EVALUATION_KINDS)}."
            )


def parse_columns(values, templates: dict, where: str) -> list[Column]:
    """The table's metric columns, in the paper's order: `{name, evaluation, metric}` (metric: the kind's first)."""
    if not isinstance(values, list) or not values:
        raise UserError(f"{where}: columns must be a list of {{name, evaluation, metric}} mappings, one per column.")
    columns = []
    for entry in values:
        entry = require_mapping(entry, f"{where}: columns", {"name", "evaluation", "metric"})
        evaluation = entry.get("evaluation")
        if evaluation not in templates:
            raise UserError(
                f"{where}: column {entry.get('name')!r} names evaluation {evaluation!r}, not in evaluations."
            )
        metrics = EVALUATION_KINDS[templates[evaluation]["kind"]].metrics
        metric = entry.get("metric", metrics[0])
        if metric not in metrics:
            raise UserError(f"{where}: column {entry.get('name')!r}: metric {metric!r}; choose one of {metrics}.")
        columns.append(Column(str(entry["name"]), evaluation, metric))
    return columns


def parse_row(entry, study: dict, columns: list[Column], repository_dir: str, where: str) -> Row:
    """One row: its recipe and changes, each column's evaluation (a row may name another evaluation for a column,
    e.g. 200 fine-tuning epochs), and the paper's numbers."""
    entry = require_mapping(entry, where, ROW_KEYS)
    where = f"{where} ({entry.get('group', '')} {entry.get('label', '')})".rstrip()
    if not entry.get("pretraining"):
        raise UserError(f"{where}: give pretraining: the recipe config it changes, e.g. configs/vit-tiny.yaml.")
    size, recipe_overrides = read_recipe(entry["pretraining"], repository_dir, where)
    training = require_mapping(entry.get("training"), f"{where}: training")
    if "config_overrides" in training or "model_preset" in training:
        raise UserError(f"{where}: training: give CAEv2Config fields under model: (or masking:), not training:.")
    chosen = require_mapping(entry.get("evaluations"), f"{where}: evaluations", {column.name for column in columns})
    templates = study["evaluations"]
    evaluations = {}
    for column in columns:
        name = chosen.get(column.name, column.evaluation)
        if name not in templates:
            raise UserError(f"{where}: evaluations: {column.name}: {name!r} is not in the study's evaluations.")
        evaluations[column.name] = parse_evaluation(name, templates[name], size, repository_dir, where)
    return Row(
        group=str(entry.get("group", "")),
        label=str(entry.get("label", "")),
        pretraining=entry["pretraining"],
        size=size,
        recipe_overrides=recipe_overrides,
        model=require_mapping(entry.get("model"), f"{where}: model"),
        masking=require_mapping(entry.get("masking"), f"{where}: masking", MASKING_KEYS),
        training=training,
        evaluations=evaluations,
        paper=parse_paper_values(entry.get("paper"), columns, entry.get("source", study.get("source", "")), where),
        x=entry.get("x"),
    )


def check_shared_runs(rows: list[Row], path: str) -> None:
    """Rows of one run (same recipe and changes) must not give one evaluation name two settings."""
    seen = {}
    for row in rows:
        try:
            run_name = row.run_name
        except UserError as error:
            raise UserError(f"{path}: {row.group} {row.label}: {error}") from error
        for evaluation in row.evaluations.values():
            if seen.setdefault((run_name, evaluation.name), evaluation) != evaluation:
                raise UserError(
                    f"{path}: run {run_name} has two settings for evaluation {evaluation.name}: give one of them "
                    "another name."
                )


def read_yaml_mapping(path: str, allowed: set[str] | None = None) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file. Give a study file, e.g. configs/paper/mini.yaml.")
    with open(path, encoding="utf-8") as file:
        try:
            values = yaml.safe_load(file)
        except yaml.YAMLError as error:
            raise UserError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from error
    return require_mapping(values, path, allowed)


def load_study(path: str, repository_dir: str) -> Study:
    """Reads and checks a study file; relative paths inside it start at `repository_dir` (the scripts' folder)."""
    study = read_yaml_mapping(path, STUDY_KEYS)
    if isinstance(study.get("evaluations"), str):  # a file of evaluations shared by studies, beside this one
        study["evaluations"] = read_yaml_mapping(os.path.join(os.path.dirname(path), study["evaluations"]))
    study["evaluations"] = require_mapping(study.get("evaluations"), f"{path}: evaluations")
    check_evaluation_templates(study["evaluations"], path)
    columns = parse_columns(study.get("columns"), study["evaluations"], path)
    if not isinstance(study.get("rows"), list) or not study["rows"]:
        raise UserError(f"{path}: rows must be a list with one mapping per row of the table.")
    rows = [
        parse_row(entry, study, columns, repository_dir, f"{path}: row {index + 1}")
        for index, entry in enumerate(study["rows"])
    ]
    check_shared_runs(rows, path)
    plot = require_mapping(study.get("plot"), f"{path}: plot", {"x_label"})
    if plot and any(not isinstance(row.x, int | float) for row in rows):
        raise UserError(f"{path}: a figure (plot:) needs a number x on every row, its abscissa.")
    return Study(
        path=path,
        title=str(study.get("title", os.path.basename(path))),
        source=str(study.get("source", "")),
        columns=columns,
        rows=rows,
        pretraining_arguments=require_mapping(study.get("pretraining_arguments"), f"{path}: pretraining_arguments"),
        offline_data=require_mapping(study.get("offline_data"), f"{path}: offline_data"),
        note=study.get("note"),
        plot_x_label=plot.get("x_label"),
    )
