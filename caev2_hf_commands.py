# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""The console commands `pip install` puts on the PATH (setup.py's entry points): `caev2-visualize`, `caev2-hub`,
`caev2-convert-checkpoint`, `caev2-model-cards` and `caev2-study`.

Each parses and checks its arguments with the light `caev2_hf_cli` package and only then imports `caev2_hf` (torch
and the model code, a few seconds), so `--help` and a bad argument answer at once. `python -m caev2_hf.visualize`,
`python -m caev2_hf.hub`, `python -m caev2_hf.hub.convert_official_checkpoint`, `python -m caev2_hf.hub.model_card`
and `python -m caev2_hf.study` are the same commands, slower to start. Like the `run_*.py` scripts, this module sits above both packages.
"""

import importlib
import sys
from collections.abc import Callable

from caev2_hf_cli.hub import parse_convert_arguments, parse_model_card_arguments, parse_publish_arguments
from caev2_hf_cli.parsing import run_command
from caev2_hf_cli.study import parse_study_command
from caev2_hf_cli.visualize import parse_visualize_arguments


def parse_then_run(parse: Callable, implementation: str) -> None:
    """`parse()`'s arguments, then the implementation module's `main(arguments)` (`main(*arguments)` for a tuple, as
    the scripts' `run_command(main, *ARGUMENTS)`); its return value is the exit status."""
    arguments = run_command(parse)
    main = importlib.import_module(implementation).main  # torch and the model code, after the parse
    sys.exit(run_command(main, *(arguments if isinstance(arguments, tuple) else (arguments,))))


def visualize() -> None:
    parse_then_run(parse_visualize_arguments, "caev2_hf.visualize")


def hub() -> None:
    parse_then_run(parse_publish_arguments, "caev2_hf.hub.publish")


def convert_checkpoint() -> None:
    parse_then_run(parse_convert_arguments, "caev2_hf.hub.convert_official_checkpoint")


def model_cards() -> None:
    parse_then_run(parse_model_card_arguments, "caev2_hf.hub.model_card")


def study() -> None:
    parse_then_run(parse_study_command, "caev2_hf.study.__main__")
