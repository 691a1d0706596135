# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Top-k accuracy as a local `evaluate` module, shipped inside the package so evaluation never reaches the Hub."""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Top-k accuracy: the fraction of examples whose reference label is among the first k ranked predictions.
Predictions are class indices ranked best first (e.g. `logits.topk(5).indices`), so a 1000-class evaluation sends
five integers per example instead of a thousand scores.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): Class indices per example, best first; at least `max(k)` of them, or
        every class when there are fewer classes than that.
    references (`list` of `int`): The true class of each example.
    k (`tuple` of `int`, *optional*, defaults to `(1, 5)`): The cut-offs to report.
Returns:
    `top{k}_accuracy` (`float` in [0, 1]) for each k.
Examples:
    >>> import evaluate
    >>> from caev2_hf.evaluation.metrics import ACCURACY_TOPK_PATH
    >>> metric = evaluate.load(ACCURACY_TOPK_PATH)
    >>> metric.compute(predictions=[[2, 0], [1, 2]], references=[0, 1], k=(1, 2))
    {'top1_accuracy': 0.5, 'top2_accuracy': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AccuracyTopk(evaluate.Metric):
    """Top-1 / top-5 accuracy of ranked class predictions."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k: tuple[int, ...] = (1, 5)) -> dict[str, float]:
        ranked = np.asarray(predictions, dtype=np.int64).reshape(len(references), -1)
        hits = ranked == np.asarray(references, dtype=np.int64)[:, None]
        return {f"top{cutoff}_accuracy": float(hits[:, :cutoff].any(axis=1).mean()) for cutoff in k}
