#!/usr/bin/env python
# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Wall and CPU time of the README's offline demos, run as the README writes them, with the figures they print and
the conditions they ran under (machine, torch threads, load average before and after).

Each demo runs in a fresh interpreter in one work folder, in order, so that later demos find the pretraining demo's
`demo_output/final` as the README's readers do. CPU seconds (user + system of the command and its loader workers)
are what other jobs on a shared machine disturb least when the command runs one torch thread; with more threads on a
busy machine they grow too (a thread waiting for its partner spins). `OMP_NUM_THREADS` is removed from the demos'
environment unless `--omp_num_threads` sets it, so torch uses the threads a user's shell gives it. From the
repository root:

    PYTHONPATH=. python benchmarks/bench_demos.py --output_json demos.json   # every demo: 15-25 min on 2 shared cores
    PYTHONPATH=. python benchmarks/bench_demos.py --demos pretrain --torch_num_threads 2

`torch_num_threads` in the results is what the command sets (its flag or its config), null for torch's default
(the machine's cores, `torch_threads_by_default`). Figures read back: the pretraining demo's final loss, the
picture's cosine similarities, the segmentation, detection and instance-segmentation demos' held-out scores (with
their chance baselines), the probes' top-1 and their own `runtime_seconds`.
"""

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PROBE_DATA = ["--train_dir", "digits/train", "--validation_dir", "digits/validation"]


def read_json(path: str) -> dict:
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}


def pretraining_figures(output: str) -> dict:
    found = re.search(r"Done\. Final loss ([0-9]+\.[0-9]+)", output)
    return {"final_loss": float(found.group(1))} if found else {}


def visualize_figures(output: str) -> dict:
    found = re.search(
        r"cosine to the teacher: visible (-?[0-9]+\.[0-9]+), masked (-?[0-9]+\.[0-9]+), \[CLS\] (-?[0-9]+\.[0-9]+)",
        output,
    )
    return dict(zip(("visible", "masked", "cls"), map(float, found.groups()), strict=True)) if found else {}


def best_constant_miou(num_images: int = 64, image_size: int = 64, seed: int = 0) -> float:
    """mIoU of the best constant prediction on the segmentation demo's held-out images (the script's seed + 1_000_003):
    predicting class c everywhere scores IoU = its pixel share for c and 0 for every other class present."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from caev2_hf.evaluation.segmentation.data import make_demo_segmentation

    masks = [np.asarray(example["annotation"]) for example in make_demo_segmentation(num_images, image_size, seed)]
    counts = np.bincount(np.concatenate([mask.ravel() for mask in masks]))
    present = np.count_nonzero(counts)
    return float(counts.max() / counts.sum() / present)


def segmentation_figures(output: str) -> dict:
    results = read_json("demo_output/segmentation/results.json")
    figures = {key: results[key] for key in ("mean_iou", "overall_accuracy", "per_category_iou") if key in results}
    return {**figures, "best_constant_mean_iou": best_constant_miou(seed=1_000_003)}


def detection_figures(output: str) -> dict:
    results = read_json("demo_output/detection/results.json")
    keys = ("map", "map_50", "random_baseline_map", "random_baseline_map_50")
    return {key: results[key] for key in keys if key in results}


def instance_segmentation_figures(output: str) -> dict:
    results = read_json("demo_output/instance-segmentation/results.json")
    keys = ("map", "segm_map", "map_50", "segm_map_50", "random_baseline_map", "random_baseline_segm_map")
    return {key: results[key] for key in keys if key in results}


def probe_figures(folder: str) -> Callable[[str], dict]:
    def read(output: str) -> dict:
        results = read_json(f"{folder}/results.json")
        return {key: results[key] for key in ("top1_accuracy", "runtime_seconds", "epochs") if key in results}

    return read


@dataclass
class Demo:
    """One README command: what follows `python` (paths relative to the repository root are made absolute)."""

    command: list[str]
    readme: str  # the command as the README writes it
    figures: Callable[[str], dict] = lambda output: {}
    takes_threads: bool = False  # the script has --torch_num_threads
    prepare: Callable[[], None] = lambda: None
    extra: list[str] = field(default_factory=list)


def write_sample_photo() -> None:
    from PIL import Image
    from sklearn.datasets import load_sample_image

    Image.fromarray(load_sample_image("china.jpg")).save("china.jpg")


def write_digits() -> None:
    if not os.path.isdir("digits"):
        sys.path.insert(0, str(ROOT))
        from caev2_hf.study.offline_data import write_digits as write

        write("digits", image_size=64)  # what configs/paper/mini.yaml probes on: 1,500 train / 297 validation


def console(function: str) -> list[str]:
    """A console command as the script `pip install` writes for it runs it."""
    return [
        "-c",
        f"import sys; sys.argv[0] = 'caev2-{function}'; from caev2_hf_commands import {function}; {function}()",
    ]


PROBE_README = (
    "python run_linear_probe.py --model demo_output/final --train_dir digits/train --validation_dir digits/validation "
    "--batch_size 256"
)


def probe_command(output_dir: str, *options: str) -> list[str]:
    """The linear probe on the pretraining demo's encoder and scikit-learn's digits (one process, no workers)."""
    return ["run_linear_probe.py", "--model", "demo_output/final", *PROBE_DATA, "--batch_size", "256", *options,
            "--output_dir", output_dir, "--num_workers", "0"]  # fmt: skip


DEMOS = {
    "pretrain": Demo(
        ["run_pretrain.py", "--config", "configs/demo.yaml"],
        "python run_pretrain.py --config configs/demo.yaml",
        pretraining_figures,
        takes_threads=True,
    ),
    "visualize": Demo(
        [
            *console("visualize"),
            "--model",
            "demo_output/final",
            "--image",
            "china.jpg",
            "--output_dir",
            "pictures",
            "--mask_min_num_patches",
            "4",
        ],
        "caev2-visualize --model demo_output/final --image china.jpg --output_dir pictures --mask_min_num_patches 4",
        visualize_figures,
        prepare=write_sample_photo,
    ),
    "segmentation": Demo(
        ["run_semantic_segmentation.py", "configs/demo-segmentation.yaml"],
        "python run_semantic_segmentation.py configs/demo-segmentation.yaml",
        segmentation_figures,
        takes_threads=True,
    ),
    "detection": Demo(
        ["run_object_detection.py", "configs/demo-detection.yaml"],
        "python run_object_detection.py configs/demo-detection.yaml",
        detection_figures,
        takes_threads=True,
    ),
    "instance_segmentation": Demo(
        ["run_instance_segmentation.py", "configs/demo-instance-segmentation.yaml"],
        "python run_instance_segmentation.py configs/demo-instance-segmentation.yaml",
        instance_segmentation_figures,
        takes_threads=True,
    ),
    "probe_fast": Demo(
        probe_command("probe_fast", "--protocol", "fast", "--cache_dir", "probe_features"),
        f"{PROBE_README} --protocol fast --cache_dir probe_features --output_dir probe_fast",
        probe_figures("probe_fast"),
        prepare=write_digits,
    ),
    "probe_fast_cached": Demo(
        probe_command("probe_fast_cached", "--protocol", "fast", "--cache_dir", "probe_features"),
        "the same again, with the features its first run cached",
        probe_figures("probe_fast_cached"),
        prepare=write_digits,
    ),
    "probe_official": Demo(
        probe_command("probe_official"),
        f"{PROBE_README} --output_dir probe_official",
        probe_figures("probe_official"),
        prepare=write_digits,
    ),
    "study": Demo(
        [*console("study"), "run", "configs/paper/mini.yaml", "--output_dir", "outputs/mini"],
        "caev2-study run configs/paper/mini.yaml --output_dir outputs/mini",
    ),
}


def absolute(argument: str) -> str:
    """A path into the repository (a script, a config) made absolute, so the demos can run in any folder."""
    return str(ROOT / argument) if (ROOT / argument).is_file() else argument


def describe_machine(environment: dict) -> dict:
    """The CPU, and torch's version and default thread count as the demos' environment gives them."""
    model = ""
    if os.path.isfile("/proc/cpuinfo"):
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = found.group(1) if found else ""
    code = "import torch; print(torch.__version__, torch.get_num_threads())"
    torch_version, threads = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    ).stdout.split()
    return {
        "cpu_model": model or platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch_version,
        "torch_threads_by_default": int(threads),
    }


def configured_threads(command: list[str], override: int | None) -> int | None:
    """The torch threads a command runs with when set: `--torch_num_threads`, else its YAML config's value."""
    if override is not None:
        return override
    import yaml

    configs = [part for part in command if part.endswith(".yaml") and os.path.isfile(part)]
    return (yaml.safe_load(Path(configs[0]).read_text()) or {}).get("torch_num_threads") if configs else None


def run_demo(name: str, demo: Demo, args: argparse.Namespace, environment: dict) -> dict:
    demo.prepare()
    command = [absolute(part) for part in demo.command] + demo.extra
    if args.torch_num_threads is not None and demo.takes_threads:
        command += ["--torch_num_threads", str(args.torch_num_threads)]
    load_before = os.getloadavg()
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, *command], env=environment, capture_output=True, text=True)
    wall = time.perf_counter() - started
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = completed.stdout + completed.stderr
    result = {
        "readme_command": demo.readme,
        "command": ["python", *command],
        "returncode": completed.returncode,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(
            usage_after.ru_utime + usage_after.ru_stime - usage_before.ru_utime - usage_before.ru_stime, 1
        ),
        "load_average_before": [round(load, 2) for load in load_before],
        "load_average_after": [round(load, 2) for load in os.getloadavg()],
        "torch_num_threads": configured_threads(command, args.torch_num_threads if demo.takes_threads else None),
        "figures": demo.figures(output),
    }
    if completed.returncode != 0:
        result["output_tail"] = output[-3000:]
    print(
        f"{name:18s} exit {completed.returncode}  wall {result['wall_seconds']:7.1f} s  "
        f"CPU {result['cpu_seconds']:7.1f} s"
        f"  load {result['load_average_before'][0]:.2f} -> {result['load_average_after'][0]:.2f}  "
        f"{json.dumps(result['figures'])}",
        flush=True,
    )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demos", nargs="+", choices=list(DEMOS), default=list(DEMOS), help="Run in this order.")
    parser.add_argument("--work_dir", help="Where the demos run and write (default: a temporary folder).")
    parser.add_argument(
        "--torch_num_threads", type=int, help="Passed to the scripts that take it, over their config's value."
    )
    parser.add_argument("--omp_num_threads", type=int, help="OMP_NUM_THREADS for the demos (default: unset).")
    parser.add_argument("--output_json", help="Also write the results here.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    environment = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    environment.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    if args.omp_num_threads is not None:
        environment["OMP_NUM_THREADS"] = str(args.omp_num_threads)
    results = {"machine": describe_machine(environment), "omp_num_threads": args.omp_num_threads, "demos": {}}
    output_json = os.path.abspath(args.output_json) if args.output_json else None
    with tempfile.TemporaryDirectory(prefix="caev2_bench_demos_") as scratch:
        work_dir = args.work_dir or scratch
        os.makedirs(work_dir, exist_ok=True)
        previous = os.getcwd()
        os.chdir(work_dir)
        try:
            for name in args.demos:
                results["demos"][name] = run_demo(name, DEMOS[name], args, environment)
                if output_json:
                    Path(output_json).write_text(json.dumps(results, indent=2))
        finally:
            os.chdir(previous)
    return results


if __name__ == "__main__":
    main()
