# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""The paper as a runnable plan (docs/studies.md): a study file lists the rows of a table or the points of a figure,
one pretraining setting each with the evaluations it reports and the paper's numbers; `python -m caev2_hf.study`
lists, runs and reports them."""

from .actions import list_study, report_study, run_study


__all__ = ["list_study", "report_study", "run_study"]
