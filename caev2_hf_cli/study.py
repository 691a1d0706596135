# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Arguments of `python -m caev2_hf.study {list,run,report} STUDY.yaml [--output_dir DIR] ...` (docs/studies.md)."""

import os
import sys
from dataclasses import dataclass, field

from .errors import UserError
from .parsing import parse_arguments


STUDY_COMMANDS = ("list", "run", "report")
USAGE = """\
python -m caev2_hf.study list   configs/paper/table1-supervision.yaml [--output_dir outputs/paper]
python -m caev2_hf.study run    configs/paper/mini.yaml --output_dir outputs/mini      # launch what is missing
python -m caev2_hf.study run    configs/paper/table1-supervision.yaml --launcher true  # print the commands
python -m caev2_hf.study report configs/paper/mini.yaml --output_dir outputs/mini      # ours beside the paper's"""


@dataclass
class StudyArguments:
    """Which study, where its runs live, and how `run` starts its scripts."""

    study: str = field(metadata={"help": "Study file: a table or figure of the paper (configs/paper/*.yaml)."})
    output_dir: str = field(
        default="outputs/paper",
        metadata={
            "help": "Folder of the runs, one subfolder each; studies sharing it share the runs they have in common."
        },
    )
    launcher: bool = field(
        default=False,
        metadata={"help": "run: print the missing steps' commands (a shell script, for a cluster scheduler) instead."},
    )
    launch_command: str | None = field(
        default=None,
        metadata={
            "help": "run: what starts each script, e.g. 'accelerate launch --num_processes 8' (default: this Python; "
            "with --launcher, 'accelerate launch')."
        },
    )
    stop_on_failure: bool = field(
        default=False, metadata={"help": "run: stop at the first failed step (default: go on with the other runs)."}
    )
    report_dir: str | None = field(
        default=None,
        metadata={"help": "report: where the Markdown, JSON and figure go (default: OUTPUT_DIR/reports)."},
    )

    def __post_init__(self) -> None:
        if not os.path.isfile(self.study):
            raise UserError(f"--study {self.study}: no such file. Give a study file, e.g. configs/paper/mini.yaml.")


def parse_study_command(argv: list[str] | None = None) -> tuple[str, StudyArguments]:
    """The command (list, run or report), then the study file (first, or --study) and the other arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        parse_arguments((StudyArguments,), ["--help"], description=USAGE)
    if not argv or argv[0] not in STUDY_COMMANDS:
        given = f" (got {argv[0]!r})" if argv else ""
        raise UserError(f"give a command first, {', '.join(STUDY_COMMANDS)}{given}: e.g. {USAGE.splitlines()[0]}")
    command, rest = argv[0], argv[1:]
    if rest and not rest[0].startswith("-"):  # the study file first, as a config is given to the scripts
        rest = ["--study", rest[0], *rest[1:]]
    (arguments,) = parse_arguments((StudyArguments,), rest, description=USAGE)
    return command, arguments
