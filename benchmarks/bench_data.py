#!/usr/bin/env python
# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Images/s of the pretraining data path alone: the very stream `run_pretrain.py` trains on (issue 11).

For each loader worker count it opens the data with `run_pretrain.open_train_stream` (the same `datasets` reader,
shard split, shuffle buffer, `PretrainBatchStream` workers that decode, crop to uint8 and mask, the same
`ResumableBatchStream`), skips each worker's first batch (process start, first decode, shuffle-buffer fill), then
times the next batches, epoch boundaries included. Separately it times the device half of the augmentation
(`augment_and_normalize`: flip, colour jitter, normalisation) on `--device`. The data are local JPEG webdataset shards
written with `write_demo_tar_shards` (shorter side `--source_image_size`, 375 px like most ImageNet images), an image
folder written with `write_demo_image_folder` (`--source folder`), or your own (`--data_files`, `--train_dir`).
`--batched_decode cuda` also times nvJPEG decoding plus augmentation on the GPU in the main process (an alternative
that is not wired into the loader). Run from the repository root (the package need not be installed):

    PYTHONPATH=. python benchmarks/bench_data.py --num_workers 0 2 --output_json data.json
    PYTHONPATH=. python benchmarks/bench_data.py --num_workers 14 --data_files 'shards/*.tar' --device cuda
"""

import argparse
import glob
import importlib.util
import json
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the repository root: no install needed

from caev2_hf import CAEV2_PRESETS, CAEv2Config  # noqa: E402
from caev2_hf.data import demo  # noqa: E402
from caev2_hf.data.device_augment import augment_and_normalize  # noqa: E402
from caev2_hf.data.transforms import PretrainCrop  # noqa: E402
from caev2_hf_cli.pretraining import PretrainingDataArguments  # noqa: E402


def throughput(
    num_workers: int, lanes: int, num_images: int, seconds: float, first_batches_seconds: float, cpu_used: float | None
) -> dict:
    """One loader measurement; `cpu_used` is the main process's and the workers' CPU time in the timed window."""
    return {
        "num_workers": num_workers,
        "effective_workers": lanes if num_workers else 0,
        "images_per_second": num_images / seconds,
        "num_images": num_images,
        "seconds": seconds,
        "first_batches_seconds": first_batches_seconds,
        "cpu_seconds": cpu_used,
        "images_per_cpu_second": num_images / cpu_used if cpu_used else None,
    }


def load_run_pretrain():
    """`run_pretrain.py` as a module (it is a script at the repository root, not part of the package)."""
    spec = importlib.util.spec_from_file_location("run_pretrain", REPO_ROOT / "run_pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_tar_shard(path: str) -> Iterator[bytes]:
    """The encoded `{key}.jpg` members of one webdataset shard (for `--batched_decode` only)."""
    with tarfile.open(path) as archive:
        for member in archive:
            if member.name.endswith(".jpg"):
                yield archive.extractfile(member).read()


def data_arguments(args: argparse.Namespace, source: dict, num_workers: int) -> PretrainingDataArguments:
    return PretrainingDataArguments(
        **source,
        dataloader_num_workers=num_workers,
        shuffle_buffer_size=args.shuffle_buffer_size,
        dataloader_prefetch_factor=args.prefetch_factor,
        crop_min_scale=args.crop_min_scale,
        color_jitter=args.color_jitter,
    )


def cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU time of these processes so far (Linux /proc; None elsewhere): what the data path costs in
    cores, whatever else the machine runs at the same time."""
    try:
        total = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def loader_pids(stream) -> list[int]:
    """The main process and the stream's loader workers."""
    workers = getattr(stream._batches, "_workers", [])
    return [os.getpid(), *(worker.pid for worker in workers)]


def measure_stream(args: argparse.Namespace, config: CAEv2Config, source: dict, num_workers: int) -> dict:
    """`run_pretrain.open_train_stream` for one process: one batch per worker skipped, then the timed batches."""
    run_pretrain = load_run_pretrain()
    started = time.perf_counter()
    stream = run_pretrain.open_train_stream(
        data_arguments(args, source, num_workers), config, args.seed, args.batch_size, 0, 1
    )
    lanes = max(1, stream.dataloader.num_workers)
    for _ in range(lanes):
        next(stream)
    first_batches_seconds = time.perf_counter() - started
    num_batches, num_images, num_skipped = args.batches_per_worker * lanes, 0, 0
    pids = loader_pids(stream)
    cpu_started, started = cpu_seconds(pids), time.perf_counter()
    for _ in range(num_batches):
        batch = next(stream)
        num_images += batch["pixel_values"].shape[0]
        num_skipped += int(batch["num_skipped_images"])
    seconds, cpu_ended = time.perf_counter() - started, cpu_seconds(pids)
    cpu_used = cpu_ended - cpu_started if cpu_started is not None and cpu_ended is not None else None
    epoch_at_end = stream.position.epoch
    del stream  # stops the workers before the next measurement starts its own
    return {
        **throughput(num_workers, lanes, num_images, seconds, first_batches_seconds, cpu_used),
        "num_skipped_images": num_skipped,
        "epoch_at_end": epoch_at_end,
        "batch_keys": sorted(batch),
    }


class MaskingCollator:
    """The previous path's collator: stacks the workers' uint8 crops and draws a mask per image in the worker that
    collates (the package has kept no copy; the pretraining stream now masks in its own lanes)."""

    def __init__(self, mask_generator: Callable, seed: int) -> None:
        self.mask_generator, self.seed, self.num_calls = mask_generator, seed, 0

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.num_calls])
        self.num_calls += 1
        return {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "bool_masked_pos": torch.from_numpy(np.stack([self.mask_generator(rng) for _ in examples])),
            "num_skipped_images": torch.tensor(sum(example["num_skipped"] for example in examples)),
        }


def open_previous_stream(args: argparse.Namespace, config: CAEv2Config, source: dict, num_workers: int):
    """The data path before issue 11, for comparison (`--previous_path on`): a per-epoch loader whose workers decode,
    crop, flip and jitter on the host (`build_labelled_image_loader` with `build_random_crop_transform`), batches of
    the workers' images with `MaskingCollator`; an image folder streamed by `datasets`' imagefolder as one shard."""
    import datasets

    from caev2_hf.data.loader import build_labelled_image_loader, iterate_forever
    from caev2_hf.data.masking import build_mask_generator
    from caev2_hf.data.sources import open_image_dataset
    from caev2_hf.data.transforms import build_random_crop_transform

    if "train_dir" in source:
        dataset = datasets.load_dataset("imagefolder", data_dir=source["train_dir"], split="train", streaming=True)
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
    else:
        dataset = open_image_dataset(**source)
    transform = build_random_crop_transform(config.image_size, (args.crop_min_scale, 1.0), args.color_jitter)
    grid_side = config.image_size // config.patch_size
    masks = build_mask_generator((grid_side, grid_side), config.num_masking_patches, PretrainingDataArguments())
    collator = MaskingCollator(masks, seed=args.seed)
    loader = build_labelled_image_loader(dataset, transform, collator, args.batch_size, num_workers, args.seed,
                                       shuffle_buffer_size=args.shuffle_buffer_size)  # fmt: skip
    return iterate_forever(loader), loader


def measure_previous_path(args: argparse.Namespace, config: CAEv2Config, source: dict, num_workers: int) -> dict:
    """`measure_stream`'s timing on `open_previous_stream`."""
    started = time.perf_counter()
    batches, loader = open_previous_stream(args, config, source, num_workers)
    lanes = max(1, loader.num_workers)
    for _ in range(lanes):
        next(batches)
    first_batches_seconds = time.perf_counter() - started
    pids = [os.getpid(), *(worker.pid for worker in getattr(loader._iterator, "_workers", []))]
    num_batches, num_images = args.batches_per_worker * lanes, 0
    cpu_started, started = cpu_seconds(pids), time.perf_counter()
    for _ in range(num_batches):
        num_images += next(batches)["pixel_values"].shape[0]
    seconds, cpu_ended = time.perf_counter() - started, cpu_seconds(pids)
    cpu_used = cpu_ended - cpu_started if cpu_started is not None and cpu_ended is not None else None
    del batches, loader
    return throughput(num_workers, lanes, num_images, seconds, first_batches_seconds, cpu_used)


def measure_device_augmentation(args: argparse.Namespace, config: CAEv2Config, device: str) -> dict:
    """The device half: a pinned uint8 batch with its parameters copied over, flipped, jittered, normalised."""
    crop = PretrainCrop(config.image_size, color_jitter=args.color_jitter)
    generator = torch.Generator().manual_seed(args.seed)
    pixels = torch.randint(0, 256, (args.batch_size, 3, config.image_size, config.image_size), dtype=torch.uint8,
                           generator=generator)  # fmt: skip
    parameters = [crop.draw_parameters((500, 375)) for _ in range(args.batch_size)]
    batch = {
        "pixel_values": pixels,
        "flip": torch.tensor([flip for _, flip, _, _ in parameters]),
        "jitter_factors": torch.stack([factors for _, _, factors, _ in parameters]),
        "jitter_order": torch.stack([order for _, _, _, order in parameters]),
    }
    if torch.device(device).type == "cuda":
        batch = {key: value.pin_memory() for key, value in batch.items()}

    def run() -> torch.Tensor:
        inputs = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        return augment_and_normalize(inputs.pop("pixel_values"), config.image_mean, config.image_std, **inputs)

    run()
    synchronize(device)
    repeats = max(2, args.batches_per_worker)
    started = time.perf_counter()
    for _ in range(repeats):
        output = run()
    synchronize(device)
    seconds = time.perf_counter() - started
    return {
        "device": device,
        "images_per_second": repeats * args.batch_size / seconds,
        "ms_per_batch": 1000 * seconds / repeats,
        "output_dtype": str(output.dtype),
    }


def measure_batched_decode(args: argparse.Namespace, config: CAEv2Config, shards: list[str], device: str) -> dict:
    """Decoding a batch of encoded files at once (nvJPEG on "cuda"), then the host pretraining augmentation per image
    on the same device: an alternative to decoding in loader workers. Masks are left out (workers draw them cheaply)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from caev2_hf.data.transforms import build_random_crop_transform

    transform = build_random_crop_transform(config.image_size)
    encoded = [
        torch.frombuffer(bytearray(data), dtype=torch.uint8) for path in shards for data in read_tar_shard(path)
    ]

    def run_batch(index: int) -> torch.Tensor:
        files = [encoded[(index * args.batch_size + offset) % len(encoded)] for offset in range(args.batch_size)]
        images = decode_jpeg(files, mode=ImageReadMode.RGB, device=device)
        return torch.stack([transform(image) for image in images])

    run_batch(0)  # nvJPEG handle, kernels
    synchronize(device)
    num_batches = args.batches_per_worker * 4
    started = time.perf_counter()
    for index in range(num_batches):
        batch = run_batch(1 + index)
    synchronize(device)
    seconds = time.perf_counter() - started
    return {
        "device": device,
        "images_per_second": num_batches * args.batch_size / seconds,
        "num_images": num_batches * args.batch_size,
        "seconds": seconds,
        "batch_shape": list(batch.shape),
    }


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(CAEV2_PRESETS), default="base", help="image size and mask count")
    parser.add_argument("--num_workers", type=int, nargs="+", default=[0, 2], help="loader workers (0: main process)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches_per_worker", type=int, default=8, help="timed batches per worker")
    parser.add_argument("--source", choices=["tar", "folder"], default="tar", help="what to write when no data given")
    parser.add_argument("--num_shards", type=int, default=16, help="tar shards written (at least the worker count)")
    parser.add_argument("--images_per_shard", type=int, default=32)
    parser.add_argument("--source_image_size", type=int, default=375, help="shorter side (most of ImageNet: 375)")
    parser.add_argument("--shard_dir", default=None, help="where data are written (default: a temporary folder)")
    parser.add_argument("--data_files", nargs="+", default=None, help="your own .tar/.parquet shards (globs allowed)")
    parser.add_argument("--train_dir", default=None, help="your own image folder")
    parser.add_argument("--shuffle_buffer_size", type=int, default=PretrainingDataArguments.shuffle_buffer_size)
    parser.add_argument("--prefetch_factor", type=int, default=PretrainingDataArguments.dataloader_prefetch_factor)
    parser.add_argument("--crop_min_scale", type=float, default=0.4)
    parser.add_argument("--color_jitter", type=float, default=0.4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the device half of the augmentation is timed")  # fmt: skip
    parser.add_argument("--batched_decode", choices=["off", "cpu", "cuda"], default="off", help="also time this path")
    parser.add_argument("--previous_path", choices=["off", "on"], default="off",
                        help="also time the data path before issue 11 (host augmentation, per-epoch loader), per count")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    if args.batched_decode == "cuda" and not torch.cuda.is_available():
        parser.error("--batched_decode cuda needs a CUDA device.")
    if args.batched_decode != "off" and (args.data_files or args.train_dir or args.source != "tar"):
        parser.error("--batched_decode reads the tar shards this script writes: leave out --data_files/--train_dir.")
    return args


def write_json(path: str | None, result: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as file:
            json.dump(result, file, indent=2)


def try_measure(label: str, measure: Callable[..., dict], *measure_args) -> dict:
    """Runs one measurement; a failure (e.g. too small a /dev/shm for many workers) is recorded, not raised."""
    try:
        measured = measure(*measure_args)
        per_core = measured.get("images_per_cpu_second")
        per_core = f" ({per_core:.1f} per CPU-second of its processes)" if per_core else ""
        print(f"{label}: {measured['images_per_second']:.1f} images/s{per_core}", flush=True)
    except Exception as error:
        measured = {"error": f"{type(error).__name__}: {error}"}
        print(f"{label} failed: {measured['error']}", flush=True)
    return measured


def prepare_source(args: argparse.Namespace, data_dir: str) -> tuple[dict, list[str]]:
    """(the data source as `PretrainingDataArguments` fields, the tar shards written); writes the demo data if needed."""
    if args.data_files:
        return {"data_files": sorted(path for pattern in args.data_files for path in glob.glob(pattern))}, []
    if args.train_dir:
        return {"train_dir": args.train_dir}, []
    num_images = args.num_shards * args.images_per_shard
    if args.source == "folder":
        folder = os.path.join(data_dir, "images")
        if not os.path.isdir(folder):
            demo.write_demo_image_folder(folder, num_images, args.source_image_size, args.seed)
        return {"train_dir": folder}, []
    shards = demo.write_demo_tar_shards(
        data_dir, args.num_shards, args.images_per_shard, image_size=args.source_image_size, seed=args.seed
    )
    return {"data_files": shards}, shards


def data_megabytes(source: dict) -> float:
    paths = source.get("data_files") or [
        os.path.join(root, name) for root, _, names in os.walk(source["train_dir"]) for name in names
    ]
    return sum(os.path.getsize(path) for path in paths) / 2**20


def run_benchmark(args: argparse.Namespace, data_dir: str) -> dict:
    """Prepares the data, then measures each worker count (the JSON is rewritten after each, in case of a kill)."""
    config = CAEv2Config.from_preset(args.preset)
    started = time.perf_counter()
    source, shards = prepare_source(args, data_dir)
    settings = {key: value for key, value in vars(args).items() if key != "output_json"}
    result = {**settings, "data_seconds": time.perf_counter() - started, "cpu_count": os.cpu_count(), "loader": []}
    result["data_megabytes"] = data_megabytes(source)
    for num_workers in args.num_workers:
        if args.previous_path == "on":
            label = f"previous data path, {num_workers} workers"
            measured = try_measure(label, measure_previous_path, args, config, source, num_workers)
            result.setdefault("previous_loader", []).append({"num_workers": num_workers, **measured})
        measured = try_measure(f"data path, {num_workers} workers", measure_stream, args, config, source, num_workers)
        result["loader"].append({"num_workers": num_workers, **measured})
        write_json(args.output_json, result)
    label = f"device augmentation on {args.device}"
    result["device_augmentation"] = try_measure(label, measure_device_augmentation, args, config, args.device)
    write_json(args.output_json, result)
    if args.batched_decode != "off":
        label = f"batched decode + augmentation on {args.batched_decode}"
        result["batched_decode_result"] = try_measure(
            label, measure_batched_decode, args, config, shards, args.batched_decode
        )
        write_json(args.output_json, result)
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # Loader workers run one intra-op thread each; so does the main process here (it only receives batches), which
    # also keeps `--num_workers 0` a one-core figure rather than a thread-contention one.
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if args.shard_dir:
            return run_benchmark(args, args.shard_dir)
        with tempfile.TemporaryDirectory(prefix="caev2_bench_data_") as data_dir:
            return run_benchmark(args, data_dir)
    finally:
        torch.set_num_threads(num_threads)


if __name__ == "__main__":
    main()
