#!/usr/bin/env python
# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Wall time and length of every command-line entry point's `--help` (issues 13 and 20: under 3 s each).

Each command runs in a fresh interpreter (as a user types it) `--repeats` times; the best and the median wall time
are reported, with the CPU time of the best run (user + system, which other jobs on a shared machine do not
inflate the way they inflate wall time) and the number of lines printed. The console commands (`caev2-hub`, ...) run
as the script `pip install` writes for them does (`from caev2_hf_commands import hub; hub()`), so they are timed
without an install. `--python_m` adds their `python -m caev2_hf.<module>` forms, which import torch before they
parse. Run from the repository root:

    PYTHONPATH=. python benchmarks/bench_help.py --repeats 5 --output_json help.json
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
CONSOLE_COMMANDS = {  # setup.py's entry points: name -> function of caev2_hf_commands
    "caev2-visualize": "visualize",
    "caev2-hub": "hub",
    "caev2-convert-checkpoint": "convert_checkpoint",
    "caev2-model-cards": "model_cards",
    "caev2-study": "study",
}
COMMANDS = {
    **{script: [script] for script in sorted(path.name for path in ROOT.glob("run_*.py"))},
    **{
        name: ["-c", f"from caev2_hf_commands import {function}; {function}()"]
        for name, function in CONSOLE_COMMANDS.items()
    },
}
PYTHON_M_COMMANDS = {
    f"python -m {module}": ["-m", module]
    for module in (
        "caev2_hf.visualize",
        "caev2_hf.hub",
        "caev2_hf.hub.convert_official_checkpoint",
        "caev2_hf.hub.model_card",
        "caev2_hf.study",
    )
}


def time_help(arguments: list[str], repeats: int) -> dict:
    """Best and median seconds of `python ARGS --help`, CPU seconds, and the lines it printed (it must exit 0)."""
    seconds, cpu_seconds, lines = [], [], 0
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, *arguments, "--help"], cwd=ROOT, capture_output=True, text=True, check=False
        )
        seconds.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_seconds.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        if result.returncode != 0:
            raise RuntimeError(f"{arguments} --help exited {result.returncode}:\n{result.stderr[-2000:]}")
        lines = len(result.stdout.splitlines())
    best = seconds.index(min(seconds))
    return {
        "best_s": round(seconds[best], 2),
        "median_s": round(statistics.median(seconds), 2),
        "cpu_s": round(cpu_seconds[best], 2),
        "lines": lines,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each command.")
    parser.add_argument("--only", nargs="*", choices=sorted(COMMANDS), help="A subset of the commands.")
    parser.add_argument("--python_m", action="store_true", help="Also the `python -m caev2_hf.<module>` forms.")
    parser.add_argument("--output_json", help="Also write the figures here.")
    args = parser.parse_args(argv)
    commands = {**COMMANDS, **(PYTHON_M_COMMANDS if args.python_m else {})}
    results = {name: time_help(commands[name], args.repeats) for name in args.only or commands}
    print(f"{'command':55s} {'best s':>7s} {'median s':>9s} {'CPU s':>6s} {'lines':>6s}")
    for name, figures in results.items():
        print(
            f"{name:55s} {figures['best_s']:7.2f} {figures['median_s']:9.2f} {figures['cpu_s']:6.2f} "
            f"{figures['lines']:6d}"
        )
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
