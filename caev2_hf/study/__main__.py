# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""`python -m caev2_hf.study {list,run,report} STUDY.yaml [--output_dir DIR]` (docs/studies.md)."""

import logging
import sys

from caev2_hf_cli.parsing import run_command
from caev2_hf_cli.study import parse_study_command

from .actions import list_study, report_study, run_study
from .state import DONE


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns the exit status (1 when a launched step failed)."""
    command, arguments = parse_study_command(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if command == "list":
        print(list_study(arguments.study, arguments.output_dir))
        return 0
    if command == "report":
        for kind, path in report_study(arguments.study, arguments.output_dir, arguments.report_dir).items():
            print(f"{kind}: {path}")
        return 0
    outcome = run_study(
        arguments.study, arguments.output_dir, arguments.launch_command, arguments.launcher,
        arguments.stop_on_failure, echo=sys.stdout.buffer,
    )  # fmt: skip
    if arguments.launcher:
        print(outcome)
        return 0
    failed = [f"{step.run}: {step.name} ({state.detail})" for step, state in outcome if state.state != DONE]
    print(list_study(arguments.study, arguments.output_dir))
    if failed:
        print(f"{len(failed)} step(s) did not finish:\n  " + "\n  ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_command(main))
