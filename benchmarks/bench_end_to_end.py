#!/usr/bin/env python
# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Images/s of `run_pretrain.py` end to end: its own `main()` (data stream, loader workers, device augmentation,
compiled step, logging, checkpoints) for `--warmup_steps + --steps` updates on local data, timed over the last
`--steps` updates only, so compilation and the loaders' start are left out (issue 11).

The timed window starts after update `--warmup_steps` and ends after the last update, each end at a device
synchronisation; `data_wait_seconds` is the time the loop spent waiting for batches inside it. With `--synthetic on`
the same loop runs a second time on two pre-built pinned batches (the same shapes, masks and augmentation parameters)
instead of the data stream: the ratio of the two figures is the share of the step's speed the data path delivers.
The teacher has random weights (no download; its cost does not depend on them), held in bf16 on CUDA as
`load_teacher` holds it. The data are local JPEG webdataset shards written with `write_demo_tar_shards` (shorter side
375 px), or your own (`--data_files`, `--train_dir`). Run from the repository root:

    PYTHONPATH=. python benchmarks/bench_end_to_end.py --preset base --batch_size 256 --precision bf16 --compile \
        --num_workers 14 --num_shards 32 --images_per_shard 256 --warmup_steps 30 --steps 300 --synthetic on \
        --output_json end_to_end.json
"""

import argparse
import contextlib
import glob
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the repository root: no install needed
sys.path.insert(1, str(Path(__file__).resolve().parent))  # bench_data, for write_json

from bench_data import write_json  # noqa: E402

from caev2_hf import CAEV2_PRESETS, CAEv2Config  # noqa: E402
from caev2_hf.data import demo  # noqa: E402
from caev2_hf.data.masking import build_mask_generator  # noqa: E402
from caev2_hf.data.pretraining_stream import ResumableBatchStream, StreamPosition  # noqa: E402
from caev2_hf.data.transforms import PretrainCrop  # noqa: E402
from caev2_hf.pretraining.step import PretrainingStep  # noqa: E402
from caev2_hf_cli.pretraining import PretrainingDataArguments  # noqa: E402


MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def load_run_pretrain():
    spec = importlib.util.spec_from_file_location("run_pretrain", REPO_ROOT / "run_pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Timer:
    """Wraps the step and the stream of `run_pretrain`: time of the updates after the warm-up, and data waits."""

    def __init__(self, warmup_calls: int, total_calls: int) -> None:
        self.warmup_calls, self.total_calls = warmup_calls, total_calls
        self.calls, self.started, self.ended, self.data_wait, self.first_call = 0, None, None, 0.0, None
        self.call_times: list[float] = []  # host time at each timed call: long gaps are stalls (no device sync)

    def step(self, original):
        def timed_step(step, batch):
            if self.calls == 0:
                self.first_call = time.perf_counter()
            if self.calls == self.warmup_calls:
                synchronize()
                self.started = time.perf_counter()
            if self.started is not None and self.ended is None:
                self.call_times.append(time.perf_counter())
            outputs = original(step, batch)
            self.calls += 1
            if self.calls == self.total_calls:
                synchronize()
                self.ended = time.perf_counter()
            return outputs

        return timed_step

    def next_batch(self, original):
        def timed_next(stream):
            waiting = time.perf_counter()
            batch = original(stream)
            if self.started is not None and self.ended is None:
                self.data_wait += time.perf_counter() - waiting
            return batch

        return timed_next


class SyntheticStream:
    """Two pre-built batches in turn, shaped as the data stream's (uint8 pixels, masks, augmentation parameters)."""

    def __init__(self, config: CAEv2Config, batch_size: int, seed: int) -> None:
        generator, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
        grid_side = config.image_size // config.patch_size
        crop = PretrainCrop(config.image_size)
        mask_generator = build_mask_generator(
            (grid_side, grid_side), config.num_masking_patches, PretrainingDataArguments()
        )
        self.batches = []
        for _ in range(2):
            parameters = [crop.draw_parameters((500, 375)) for _ in range(batch_size)]
            shape = (batch_size, 3, config.image_size, config.image_size)
            batch = {
                "pixel_values": torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator),
                "bool_masked_pos": torch.from_numpy(np.stack([mask_generator(rng) for _ in range(batch_size)])),
                "flip": torch.tensor([flip for _, flip, _, _ in parameters]),
                "jitter_factors": torch.stack([factors for _, _, factors, _ in parameters]),
                "jitter_order": torch.stack([order for _, _, _, order in parameters]),
                "num_skipped_images": torch.tensor(0),
            }
            if torch.cuda.is_available():
                batch = {key: value.pin_memory() for key, value in batch.items()}
            self.batches.append(batch)
        self.position = StreamPosition.start(num_lanes=1)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        self.position.batches += 1
        return dict(self.batches[self.position.batches % 2])


def pretrain_arguments(args: argparse.Namespace, source: list[str], output_dir: str) -> list[str]:
    overrides = {"use_random_teacher": True, "attn_implementation": args.attn_implementation,
                 **json.loads(args.config_overrides)}  # fmt: skip
    total = args.warmup_steps + args.steps
    return [
        "--model_preset", args.preset, "--config_overrides", json.dumps(overrides), *source,
        "--dataloader_num_workers", str(args.num_workers), "--shuffle_buffer_size", str(args.shuffle_buffer_size),
        "--dataloader_prefetch_factor", str(args.prefetch_factor),
        "--per_device_train_batch_size", str(args.batch_size), "--learning_rate_batch_size", str(args.batch_size),
        "--max_steps", str(total), "--warmup_steps", str(max(1, total // 10)), "--logging_steps", str(args.logging_steps),
        "--save_steps", str(total), "--save_total_limit", "1", "--mixed_precision", MIXED_PRECISION[args.precision],
        "--torch_compile", str(args.compile), "--report_to", "none", "--output_dir", output_dir, "--seed", str(args.seed),
    ]  # fmt: skip


def run_once(args: argparse.Namespace, source: list[str], output_dir: str, synthetic: bool) -> dict:
    """One `run_pretrain.main` run under the timer; with `synthetic`, its data stream replaced by `SyntheticStream`."""
    run_pretrain = load_run_pretrain()
    timer = Timer(args.warmup_steps, args.warmup_steps + args.steps)
    original_build_model = run_pretrain.build_model

    def build_model(*build_args, **build_kwargs):
        model = original_build_model(*build_args, **build_kwargs)
        teacher = getattr(model, "teacher", None)
        if teacher is not None and torch.cuda.is_available() and args.precision != "fp32":
            teacher.to(torch.bfloat16 if args.precision == "bf16" else torch.float16)  # as load_teacher(dtype=...)
        return model

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(PretrainingStep, "__call__", timer.step(PretrainingStep.__call__)))
        stack.enter_context(mock.patch.object(run_pretrain, "build_model", build_model))
        if synthetic:
            config = CAEv2Config.from_preset(args.preset, **json.loads(args.config_overrides))
            stream = SyntheticStream(config, args.batch_size, args.seed)
            stack.enter_context(mock.patch.object(run_pretrain, "open_train_stream", lambda *a, **k: stream))
            stack.enter_context(
                mock.patch.object(SyntheticStream, "__next__", timer.next_batch(SyntheticStream.__next__))
            )
        else:
            original_next = ResumableBatchStream.__next__
            stack.enter_context(mock.patch.object(ResumableBatchStream, "__next__", timer.next_batch(original_next)))
        started = time.perf_counter()
        run_pretrain.main(*run_pretrain.parse_and_check_arguments(pretrain_arguments(args, source, output_dir)))
        total_seconds = time.perf_counter() - started
    seconds = timer.ended - timer.started
    gaps = np.diff([*timer.call_times, timer.ended]) if timer.call_times else np.zeros(1)
    return {
        "median_step_seconds": float(np.median(gaps)),
        "max_step_seconds": float(gaps.max()),  # an epoch-boundary stall shows here
        "images_per_second": args.steps * args.batch_size / seconds,
        "seconds": seconds,
        "updates_timed": args.steps,
        "warmup_seconds": timer.started - timer.first_call,
        "data_wait_seconds": timer.data_wait,
        "data_wait_fraction": timer.data_wait / seconds,
        "run_seconds": total_seconds,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(CAEV2_PRESETS), default="base")
    parser.add_argument("--config_overrides", default="{}", help="JSON of CAEv2Config fields, e.g. a smaller model")
    parser.add_argument("--attn_implementation", choices=["eager", "sdpa", "flash_attention_2"], default="sdpa")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--precision", choices=sorted(MIXED_PRECISION), default="bf16")
    parser.add_argument("--compile", action="store_true", help="torch_compile in run_pretrain.py (warm-up compiles)")
    parser.add_argument("--num_workers", type=int, default=14, help="dataloader_num_workers")
    parser.add_argument("--warmup_steps", type=int, default=30, help="updates run before the timed window")
    parser.add_argument("--steps", type=int, default=300, help="updates timed")
    parser.add_argument("--logging_steps", type=int, default=50)
    parser.add_argument("--num_shards", type=int, default=32, help="tar shards written when no data are given")
    parser.add_argument("--images_per_shard", type=int, default=256)
    parser.add_argument("--source_image_size", type=int, default=375)
    parser.add_argument("--shuffle_buffer_size", type=int, default=10_000)
    parser.add_argument("--prefetch_factor", type=int, default=2, help="dataloader_prefetch_factor")
    parser.add_argument("--data_files", nargs="+", default=None, help="your own .tar/.parquet shards (globs allowed)")
    parser.add_argument("--train_dir", default=None, help="your own image folder")
    parser.add_argument("--data_dir", default=None, help="where shards are written (default: a temporary folder)")
    parser.add_argument("--synthetic", choices=["on", "off"], default="on", help="also time the loop on fixed batches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup_steps < 1:
        parser.error("--steps and --warmup_steps must be at least 1 (the window starts after a warm-up update).")
    return args


def run_benchmark(args: argparse.Namespace, work_dir: str) -> dict:
    if args.data_files:
        source = ["--data_files", *sorted(path for pattern in args.data_files for path in glob.glob(pattern))]
    elif args.train_dir:
        source = ["--train_dir", args.train_dir]
    else:
        shards = demo.write_demo_tar_shards(
            os.path.join(work_dir, "shards"), args.num_shards, args.images_per_shard, args.source_image_size, args.seed
        )
        source = ["--data_files", *shards]
    result = {key: value for key, value in vars(args).items() if key != "output_json"}
    result.update(
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        cpu_count=os.cpu_count(),
        versions={"torch": torch.__version__},
    )
    result["end_to_end"] = run_once(args, source, os.path.join(work_dir, "data_run"), synthetic=False)
    print(f"end to end: {result['end_to_end']['images_per_second']:.1f} images/s", flush=True)
    write_json(args.output_json, result)
    if args.synthetic == "on":
        result["synthetic"] = run_once(args, source, os.path.join(work_dir, "synthetic_run"), synthetic=True)
        result["end_to_end_share_of_synthetic"] = (
            result["end_to_end"]["images_per_second"] / result["synthetic"]["images_per_second"]
        )
        print(f"synthetic batches: {result['synthetic']['images_per_second']:.1f} images/s; end to end "
              f"{100 * result['end_to_end_share_of_synthetic']:.1f}% of it", flush=True)  # fmt: skip
        write_json(args.output_json, result)
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.data_dir:
        return run_benchmark(args, args.data_dir)
    with tempfile.TemporaryDirectory(prefix="caev2_bench_end_to_end_") as work_dir:
        return run_benchmark(args, work_dir)


if __name__ == "__main__":
    main()
