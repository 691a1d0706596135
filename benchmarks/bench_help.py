#!/usr/bin/env python
# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Wall time and length of every command-line entry point's `--help` (issue 13: under 3 s each).

Each command runs in a fresh interpreter (as a user types it) `--repeats` times; the best and the median wall time
are reported, with the CPU time of the best run (user + system, which other jobs on a shared machine do not
inflate the way they inflate wall time) and the number of lines printed. Run from the repository root:

    python benchmarks/bench_help.py --repeats 3 --output_json help.json
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
COMMANDS = {
    "run_pretrain.py": ["run_pretrain.py"],
    "run_linear_probe.py": ["run_linear_probe.py"],
    "run_finetune.py": ["run_finetune.py"],
    "caev2_hf.hub": ["-m", "caev2_hf.hub"],
    "caev2_hf.hub.convert_official_checkpoint": ["-m", "caev2_hf.hub.convert_official_checkpoint"],
    "caev2_hf.hub.model_card": ["-m", "caev2_hf.hub.model_card"],
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
    parser.add_argument("--output_json", help="Also write the figures here.")
    args = parser.parse_args(argv)
    results = {name: time_help(COMMANDS[name], args.repeats) for name in args.only or COMMANDS}
    print(f"{'command':45s} {'best s':>7s} {'median s':>9s} {'CPU s':>6s} {'lines':>6s}")
    for name, figures in results.items():
        print(
            f"{name:45s} {figures['best_s']:7.2f} {figures['median_s']:9.2f} {figures['cpu_s']:6.2f} "
            f"{figures['lines']:6d}"
        )
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
