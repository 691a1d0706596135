# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Curves of a run as PNG files (the pretraining run's `loss.png`, the probe's accuracy per learning rate).

matplotlib is optional (`pip install "caev2_hf[plots]"`): without it every function here returns None after one log
line saying how to get the pictures, and the run goes on.
"""

import json
import logging
import math
import os
from collections.abc import Mapping
from functools import partial
from types import ModuleType

from .files import write_atomically, write_json


logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "caev2_hf[plots]" (or pip install matplotlib)'
LOSS_NAMES = ("loss", "visible_loss", "masked_loss", "cls_loss")
PANEL_INCHES = (4.0, 3.0)  # width, height of one curve panel
DPI = 100


def import_pyplot() -> ModuleType | None:
    """matplotlib's pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        return None
    return pyplot


def missing_matplotlib_message(what: str) -> str:
    return f"matplotlib is not installed, so no {what} picture: {INSTALL_HINT} to get it."


def warn_missing_matplotlib(what: str, log: logging.Logger = logger) -> None:
    log.warning(missing_matplotlib_message(what))


class MetricHistory:
    """The metrics logged every `logging_steps`, kept in order for `loss.png` (one row per logged update)."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.rows: list[dict[str, float]] = []

    def __len__(self) -> int:
        return len(self.steps)

    def append(self, step: int, metrics: Mapping[str, float]) -> None:
        self.steps.append(int(step))
        self.rows.append({name: float(value) for name, value in metrics.items()})

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, over the rows that logged it."""
        pairs = [(step, row[name]) for step, row in zip(self.steps, self.rows, strict=True) if name in row]
        return [step for step, _ in pairs], [value for _, value in pairs]


class TrainingCurves:
    """A pretraining run's logged metrics and the `loss.png` they draw, in `output_dir`.

    `record` keeps every logged row; `write` (at each checkpoint and at the end) draws `loss.png` and saves the rows
    to `loss_history.json`, so a resumed run (`start_step`, its checkpoint's update) keeps the curves up to there.
    Without matplotlib, the first `write` says how to get the picture, once; the rows are still saved.
    """

    picture_name = "loss.png"
    history_name = "loss_history.json"

    def __init__(self, output_dir: str, start_step: int = 0, log: logging.Logger = logger) -> None:
        self.path = os.path.join(output_dir, self.picture_name)
        self.history_path = os.path.join(output_dir, self.history_name)
        self.log = log
        self.history = MetricHistory()
        self._told = False
        if start_step and os.path.isfile(self.history_path):
            with open(self.history_path) as file:
                for row in json.load(file):
                    if row["step"] <= start_step:
                        self.history.append(row["step"], row["metrics"])

    def record(self, step: int, metrics: Mapping[str, float]) -> None:
        self.history.append(step, metrics)

    def write(self) -> str | None:
        """Saves the rows and draws `loss.png`; returns its path, or None without matplotlib. A file that cannot be
        written (a full disk, a read-only folder) is a warning: the pictures never end a run."""
        try:
            return self._write()
        except OSError as error:
            self.log.warning(
                f"Could not write the loss curves in {os.path.dirname(self.path) or '.'} ({error}); the run goes on."
            )
            return None

    def _write(self) -> str | None:
        rows = [
            {"step": step, "metrics": row} for step, row in zip(self.history.steps, self.history.rows, strict=True)
        ]
        os.makedirs(os.path.dirname(os.path.abspath(self.history_path)), exist_ok=True)
        write_json(self.history_path, rows)
        if import_pyplot() is None:
            if not self._told:
                warn_missing_matplotlib(self.picture_name, self.log)
                self._told = True
            return None
        path = plot_training_curves(self.history, self.path, self.log)
        if path is not None and not self._told:
            self.log.info(f"Loss curves: {path} (redrawn at every checkpoint).")
            self._told = True
        return path


def save_figure(pyplot: ModuleType, figure, path: str) -> str:
    """Writes `figure` to `path` (through a temporary name, so a reader never sees half a PNG) and closes it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image_format = os.path.splitext(path)[1].lstrip(".") or "png"  # the temporary name's suffix says nothing
    try:
        write_atomically(path, partial(figure.savefig, dpi=DPI, format=image_format))
    finally:
        pyplot.close(figure)  # also when the write failed: an open figure would stay in memory
    return path


def plot_training_curves(history: MetricHistory, path: str, log: logging.Logger = logger) -> str | None:
    """`loss.png`: total and per-group losses, learning rate and images/s against updates.

    Returns the path, or None (after one log line) when matplotlib is missing or nothing was logged yet.
    """
    pyplot = import_pyplot()
    if pyplot is None:
        warn_missing_matplotlib("loss.png", log)
        return None
    if not len(history):
        return None
    figure, (loss_axes, lr_axes, speed_axes) = pyplot.subplots(
        1, 3, figsize=(3 * PANEL_INCHES[0], PANEL_INCHES[1]), layout="constrained"
    )
    for name in LOSS_NAMES:
        steps, values = history.series(name)
        if steps:
            loss_axes.plot(steps, values, marker="." if len(steps) < 30 else None, label=name.replace("_", " "))
    loss_axes.set(title="loss", xlabel="update")
    loss_axes.legend(fontsize="small")
    for axes, name, title in (
        (lr_axes, "learning_rate", "learning rate"),
        (speed_axes, "images_per_second", "images/s"),
    ):
        steps, values = history.series(name)
        axes.plot(steps, values, marker="." if len(steps) < 30 else None)
        axes.set(title=title, xlabel="update")
    for axes in (loss_axes, lr_axes, speed_axes):
        axes.xaxis.get_major_locator().set_params(integer=True)
    return save_figure(pyplot, figure, path)


PROBE_ACCURACIES = (
    ("holdout_top1_accuracy", "held-out top-1 (part of train)"),
    ("train_top1_accuracy", "train top-1 (training batches)"),
)


def probe_accuracy_curves(results: Mapping) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """Accuracy per epoch and learning rate from a probe's `results.json`: `{accuracy name: {lr label: (epochs,
    accuracies)}}`, for each of `PROBE_ACCURACIES` that some epoch recorded.

    Reads `learning_rate_histories`: one entry per learning rate tried (`base_learning_rate`, `learning_rate`,
    `epochs`), each epoch a record with `epoch` and its accuracies (fractions; None where not measured).
    """
    curves = {}
    for name, _ in PROBE_ACCURACIES:
        for history in results.get("learning_rate_histories") or []:
            label = f"base lr {history['base_learning_rate']:g} (lr {history['learning_rate']:.3g})"
            points = [
                (record["epoch"], record[name])
                for record in history["epochs"]
                if isinstance(record.get(name), int | float) and math.isfinite(record[name])
            ]
            if points:
                curves.setdefault(name, {})[label] = ([epoch for epoch, _ in points], [value for _, value in points])
    return curves


def plot_probe_curves(results: Mapping, path: str, log: logging.Logger = logger) -> str | None:
    """The probe's accuracy against epochs, one curve per learning rate and one panel per kind of accuracy
    (`PROBE_ACCURACIES`); returns the path, or None without matplotlib (one log line) or without histories."""
    pyplot = import_pyplot()
    if pyplot is None:
        warn_missing_matplotlib("probe accuracy", log)
        return None
    curves = probe_accuracy_curves(results)
    if not curves:
        return None
    figure, axes = pyplot.subplots(
        1, len(curves), figsize=(len(curves) * PANEL_INCHES[0], PANEL_INCHES[1]), layout="constrained", squeeze=False
    )
    titles = dict(PROBE_ACCURACIES)
    for axis, (name, by_learning_rate) in zip(axes[0], curves.items(), strict=True):
        for label, (epochs, accuracies) in by_learning_rate.items():
            axis.plot(epochs, accuracies, marker="." if len(epochs) < 30 else None, label=label)
        axis.set(title=titles[name], xlabel="epoch", ylim=(0, 1))
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.legend(fontsize="x-small")
    if isinstance(results.get("top1_accuracy"), int | float):
        figure.suptitle(
            f"linear probe: validation top-1 {100 * results['top1_accuracy']:.2f} % at lr "
            f"{results.get('learning_rate', float('nan')):.3g}",
            fontsize=9,
        )
    return save_figure(pyplot, figure, path)
