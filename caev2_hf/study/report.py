# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""A study beside the paper: every run's results.json gathered into the paper's table layout with the paper's number
and the difference beside each of ours (Markdown and JSON), a figure's curves drawn over the paper's points, and every
missing or failed step named."""

import json
import math
import os

from ..files import write_text
from ..plots import PANEL_INCHES, import_pyplot, missing_matplotlib_message, save_figure
from .definition import Row, Study
from .state import DONE, FAILED, NOT_STARTED, UNAVAILABLE, RunStatus, StepState, pretraining_summary, read_results


def measured_value(step, state: StepState, metric: str) -> tuple[float | None, StepState]:
    """Our number in % from a done step's results.json (which holds fractions); a results.json without the metric
    is a failure of that step."""
    if state.state != DONE:
        return None, state
    value = (read_results(step) or {}).get(metric)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None, StepState(FAILED, f"{os.path.join(step.folder, 'results.json')} has no number {metric}")
    return 100 * value, state


def build_cell(row: Row, column, status: RunStatus) -> dict:
    """One table cell: ours, the paper's, their difference, and the state of the step behind ours (the run's
    while its pretraining is not done)."""
    name = row.evaluations[column.name].name
    step, state = next((step, state) for step, state in status.evaluations if step.name == name)
    ours, state = measured_value(step, state, column.metric)
    if ours is None and state.state != UNAVAILABLE and status.pretraining.state != DONE:
        state = StepState(status.state, status.pretraining.detail)
    paper = row.paper.get(column.name)
    return {
        "ours": ours,
        "paper": paper.value if paper else None,
        "difference": ours - paper.value if ours is not None and paper else None,
        "paper_source": paper.source if paper else None,
        "approximate": paper.approximate if paper else False,
        "evaluation": name,
        "metric": column.metric,
        "state": state.state,
        "detail": state.detail,
        "results_file": os.path.join(step.folder, "results.json") if ours is not None else None,
    }


def build_report(study: Study, statuses: list[RunStatus], output_dir: str) -> dict:
    """The report as JSON: the study, one entry per row with its cells, and every step that is not done."""
    by_run = {status.plan.name: status for status in statuses}
    rows = []
    for row in study.rows:
        status = by_run[row.run_name]
        pretraining = {"state": status.pretraining.state, "detail": status.pretraining.detail}
        pretraining |= pretraining_summary(status.plan.pretraining.folder)
        cells = {column.name: build_cell(row, column, status) for column in study.columns}
        entry = {"group": row.group, "label": row.label, "x": row.x, "run": row.run_name, "run_state": status.state}
        rows.append({**entry, "pretraining": pretraining, "cells": cells})
    return {
        "title": study.title,
        "source": study.source,
        "note": study.note,
        "study": study.path,
        "output_dir": output_dir,
        "columns": [vars(column) for column in study.columns],
        "x_label": study.plot_x_label,
        "rows": rows,
        "problems": list_problems(statuses, rows),
    }


def list_problems(statuses: list[RunStatus], rows: list[dict]) -> list[dict]:
    """Every step not done, and every done one whose results.json lacks a column's metric."""
    problems = []
    for status in statuses:
        for step, state in [(status.plan.pretraining, status.pretraining), *status.evaluations]:
            if state.state != DONE:
                problems.append(
                    {"run": status.plan.name, "step": step.name, "state": state.state, "detail": state.detail}
                )
    for row in rows:
        for cell in row["cells"].values():
            problem = {"run": row["run"], "step": cell["evaluation"], "state": cell["state"], "detail": cell["detail"]}
            if cell["state"] == FAILED and problem not in problems:
                problems.append(problem)
    return problems


def format_cell(cell: dict) -> str:
    """`ours (paper, ours - paper)` in %, or the step's state where ours is missing; `~` marks a paper number read
    off a plot."""
    paper = "-" if cell["paper"] is None else f"{'~' if cell['approximate'] else ''}{cell['paper']}"
    if cell["ours"] is None:
        return "-" if cell["state"] == UNAVAILABLE and cell["paper"] is None else f"{cell['state']} ({paper})"
    difference = "" if cell["difference"] is None else f", {cell['difference']:+.2f}"
    return f"{cell['ours']:.2f} ({paper}{difference})"


def format_markdown(report: dict, figure: str | None = None) -> str:
    """The report as Markdown: the table in the paper's layout, the runs, then what is missing or failed."""
    names = [column["name"] for column in report["columns"]]
    x_header = [report["x_label"]] if report["x_label"] else []
    header = ["group", "setting", *x_header, *names]
    lines = [
        f"# {report['title']}",
        "",
        f"Paper: {report['source']}. Study: `{report['study']}`, runs in `{report['output_dir']}`.",
    ]
    lines += [report["note"]] if report["note"] else []
    lines += ["", "Each cell: ours (paper, ours - paper), in %, ours from the run's results.json; ~ marks a paper number read "
              "off a plot; a missing number of ours shows its step's state.", ""]  # fmt: skip
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        x = [f"{row['x']:g}"] if report["x_label"] else []
        cells = [format_cell(row["cells"][name]) for name in names]
        lines.append("| " + " | ".join([row["group"], row["label"], *x, *cells]) + " |")
    if report["x_label"]:
        picture = (
            f"![{report['title']}]({os.path.basename(figure)})" if figure else missing_matplotlib_message("figure")
        )
        lines += ["", picture]
    lines += ["", "## Runs", "", "| run | state | pretraining updates | last logged loss |", "|---|---|---|---|"]
    for run in {row["run"]: row for row in report["rows"]}.values():
        loss = run["pretraining"].get("loss")
        loss = "-" if loss is None else f"{loss:.4f}"
        lines.append(f"| `{run['run']}` | {run['run_state']} | {run['pretraining'].get('updates', '-')} | {loss} |")
    lines += ["", "## Missing or failed", "", *format_problems(report)]
    unavailable = [problem for problem in report["problems"] if problem["state"] == UNAVAILABLE]
    if unavailable:
        lines += ["", "Not runnable with this package:", ""] + [format_problem(problem) for problem in unavailable]
    return "\n".join(lines) + "\n"


def format_problems(report: dict) -> list[str]:
    """One line per step not done, or one per run none of whose steps started."""
    run_states = {row["run"]: row["run_state"] for row in report["rows"]}
    lines, told = [], set()
    for problem in report["problems"]:
        if problem["state"] == UNAVAILABLE or problem["run"] in told:
            continue
        if run_states[problem["run"]] == NOT_STARTED:
            told.add(problem["run"])
            lines.append(f"- `{problem['run']}`: not started")
        else:
            lines.append(format_problem(problem))
    return lines or ["Nothing: every step that can run is done."]


def format_problem(problem: dict) -> str:
    detail = f": {problem['detail']}" if problem["detail"] else ""
    return f"- `{problem['run']}` {problem['step']}: {problem['state']}{detail}"


def plot_report(report: dict, path: str) -> str | None:
    """A figure study's curves: one panel per group (row of panels) and column, ours as a line over the x values,
    the paper's numbers as points (hollow where read off a plot). None when matplotlib is missing."""
    pyplot = import_pyplot()
    if pyplot is None:
        return None
    groups = list(dict.fromkeys(row["group"] for row in report["rows"]))
    names = [column["name"] for column in report["columns"]]
    figure, axes = pyplot.subplots(
        len(groups), len(names), figsize=(len(names) * PANEL_INCHES[0], len(groups) * PANEL_INCHES[1]),
        layout="constrained", squeeze=False,
    )  # fmt: skip
    for axis_row, group in zip(axes, groups, strict=True):
        rows = sorted((row for row in report["rows"] if row["group"] == group), key=lambda row: row["x"])
        for axis, name in zip(axis_row, names, strict=True):
            ours = [(row["x"], row["cells"][name]["ours"]) for row in rows if row["cells"][name]["ours"] is not None]
            paper = [(row["x"], row["cells"][name]) for row in rows if row["cells"][name]["paper"] is not None]
            if ours:
                axis.plot(*zip(*ours, strict=True), marker="o", label="ours")
            for x, cell in paper:
                hollow = {"facecolors": "none"} if cell["approximate"] else {}
                axis.scatter([x], [cell["paper"]], marker="s", color="black", zorder=3, **hollow)
            if paper:
                axis.scatter([], [], marker="s", color="black", label="paper")  # one legend entry for all its points
            xs = [row["x"] for row in rows]  # every row's x, measured or not: the panels share their abscissa
            margin = 0.05 * (max(xs) - min(xs) or 1)
            axis.set(title=f"{group}: {name}", xlabel=report["x_label"], ylabel="%", xticks=xs)
            axis.set_xlim(min(xs) - margin, max(xs) + margin)
            if ours or paper:
                axis.legend(fontsize="small")
    return save_figure(pyplot, figure, path)


def write_report(study: Study, statuses: list[RunStatus], output_dir: str, report_dir: str) -> dict[str, str]:
    """`<study name>.md` and `.json` in `report_dir` (and `.png` for a figure study); returns their paths."""
    os.makedirs(report_dir, exist_ok=True)
    report = build_report(study, statuses, output_dir)
    paths = {
        "markdown": os.path.join(report_dir, f"{study.name}.md"),
        "json": os.path.join(report_dir, f"{study.name}.json"),
    }
    figure = plot_report(report, os.path.join(report_dir, f"{study.name}.png")) if study.plot_x_label else None
    if figure:
        paths["figure"] = figure
    for key, text in (("json", json.dumps(report, indent=2)), ("markdown", format_markdown(report, figure))):
        write_text(paths[key], text)
    return paths
