#!/usr/bin/env python
# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Fine-tuning on small images (issue 22): top-1 on scikit-learn's 8x8 digits of `run_finetune.py` with the ImageNet
recipe's defaults (the script's old `--help` example) and with `configs/finetune-small-images.yaml` (its example now),
beside the fast linear probe of the same encoder. Each run is the script's own command in a subprocess.

The encoder is the offline demo's (`configs/demo.yaml`, pretrained here in about 20 s unless --encoder names one): a
tiny encoder that learned a random teacher, so the figures say whether a recipe trains at all, not what CAE v2 is
worth. From the repository root:

    PYTHONPATH=. python benchmarks/bench_finetune_small_images.py --output_json finetune_small_images.json
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the repository root: no install needed

from caev2_hf.study.offline_data import write_digits  # noqa: E402


RUNS = {
    # the --help example before issue 22: the recipe's defaults, mixup and cutmix off
    "finetune_recipe_defaults": ["run_finetune.py", "--num_train_epochs", "10", "--mixup", "0", "--cutmix", "0"],
    "finetune_small_images_config": ["run_finetune.py", str(REPO_ROOT / "configs" / "finetune-small-images.yaml")],
    "probe_fast": ["run_linear_probe.py", "--protocol", "fast", "--batch_size", "256"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default="bench_finetune_small_images", help="data, encoder and run folders")
    parser.add_argument("--encoder", default=None, help="an encoder folder; default: pretrain the offline demo's")
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=list(RUNS))
    parser.add_argument("--output_json", default=None)
    return parser.parse_args(argv)


def run(command: list[str], cwd: Path) -> float:
    """Runs `python COMMAND` from the repository root; returns its wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *command], cwd=cwd, check=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    return round(time.perf_counter() - start, 1)


def main(args: argparse.Namespace) -> dict:
    work = Path(args.work_dir).resolve()
    digits = work / "digits"
    if not digits.is_dir():
        write_digits(str(digits), image_size=8)  # 1,500 train / 297 validation images, 8x8, 10 classes
    encoder = args.encoder
    if encoder is None:
        encoder = str(work / "demo_output" / "final")
        if not os.path.isdir(encoder):
            demo = [
                str(REPO_ROOT / "run_pretrain.py"),
                str(REPO_ROOT / "configs" / "demo.yaml"),
                "--report_to",
                "none",
            ]
            run([*demo, "--output_dir", str(work / "demo_output"), "--demo_dir", str(work / "demo_images")], work)
    data = ["--train_dir", str(digits / "train"), "--validation_dir", str(digits / "validation")]
    results = {"encoder": encoder, "data": "scikit-learn digits, 8x8, 1,500 train / 297 validation", "runs": {}}
    for name in args.runs:
        script, *options = RUNS[name]
        output_dir = work / name
        command = [str(REPO_ROOT / script), *options, "--model", encoder, *data, "--output_dir", str(output_dir)]
        command += ["--overwrite_output_dir", "true"]
        command += ["--cache_dir", str(work / "cache")] if script == "run_linear_probe.py" else ["--report_to", "none"]
        seconds = run(command, work)
        top1 = json.loads((output_dir / "results.json").read_text())["top1_accuracy"]
        results["runs"][name] = {"command": command, "top1_accuracy": top1, "wall_seconds": seconds}
        print(f"{name}: top-1 {100 * top1:.2f} % in {seconds} s", flush=True)
    results["environment"] = {
        "cpu_count": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average_after": os.getloadavg(),
    }
    return results


if __name__ == "__main__":
    arguments = parse_args()
    outcome = main(arguments)
    if arguments.output_json:
        Path(arguments.output_json).write_text(json.dumps(outcome, indent=2))
