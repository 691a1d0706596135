#!/usr/bin/env python
# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Images/s of the pretraining data path alone: read, decode, crop, flip, jitter, collate and mask (issue 6).

It writes local JPEG tar shards (webdataset layout) with `caev2_hf.data.images.write_demo_tar_shards`, then, for each loader
worker count, times batches once every worker has delivered its first one. `--batched_decode cuda` also times nvJPEG
decoding plus the same augmentation on the GPU (`torchvision.io.decode_jpeg(device="cuda")`), batch by batch, in the
main process (`--batched_decode cpu`: the same with torchvision's CPU decoder, on one thread).
Run from the repository root (the package need not be installed; `datasets` is only needed for `--reader datasets`):

    PYTHONPATH=. python benchmarks/bench_data.py --num_workers 1 4 8 16 --output_json data.json
"""

import argparse
import json
import math
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: no install needed

from caev2_hf import CAEV2_PRESETS, CAEv2Config  # noqa: E402
from caev2_hf.data import images as data  # noqa: E402  imports `datasets` only to open streams: the GPU image has none
from caev2_hf.data.masking import MaskingCollator, build_mask_generator  # noqa: E402


def read_tar_shard(path: str) -> Iterator[dict]:
    """{"image": {"bytes", "path"}, "label"} per `{key}.jpg` + `{key}.cls` pair of one webdataset shard."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as archive:
        for member in archive:
            key, suffix = member.name.rsplit(".", 1)
            members.setdefault(key, {})[suffix] = archive.extractfile(member).read()
    for key, files in members.items():
        yield {"image": {"bytes": files["jpg"], "path": f"{path}/{key}.jpg"}, "label": int(files.get("cls", b"0"))}


class TarShardStream(torch.utils.data.IterableDataset):
    """Examples of tar shards, each loader worker reading its own shards `num_passes` times: what a `datasets`
    webdataset stream yields, without needing `datasets`."""

    def __init__(self, shards: list[str], num_passes: int = 1) -> None:
        self.shards, self.num_passes, self.epoch = list(shards), num_passes, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        worker = torch.utils.data.get_worker_info()
        shards = self.shards[worker.id :: worker.num_workers] if worker is not None else self.shards
        for _ in range(self.num_passes):
            for path in shards:
                yield from read_tar_shard(path)


def open_stream(args: argparse.Namespace, shards: list[str], num_passes: int):
    """The example stream: our tar reader, or the package's `datasets` path (`open_image_dataset`)."""
    if args.reader == "tar":
        return TarShardStream(shards, num_passes)
    dataset = data.open_image_dataset(data_files=shards)
    return dataset.repeat(num_passes) if num_passes > 1 else dataset


def build_loader(args: argparse.Namespace, config: CAEv2Config, shards: list[str], num_workers: int):
    """The training loader's pipeline on a stream long enough for warm-up plus the timed batches."""
    examples_per_pass = args.images_per_shard * max(1, len(shards) // max(1, num_workers))
    needed = (args.batches_per_worker + 1) * args.batch_size
    stream = open_stream(args, shards, math.ceil(needed / examples_per_pass))
    images = data.PretrainImageStream(stream, data.build_pretrain_transform(config.image_size), seed=args.seed)
    return torch.utils.data.DataLoader(
        images,
        batch_size=args.batch_size,
        collate_fn=MaskingCollator(build_mask_generator(config), seed=args.seed),
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
    )


def measure_loader(loader: torch.utils.data.DataLoader, num_workers: int, batches_per_worker: int) -> dict:
    """Skips one batch per worker (process start, imports, first decode), then times the next batches."""
    batches = iter(loader)
    for _ in range(max(1, num_workers)):
        next(batches)
    num_batches, num_images = batches_per_worker * max(1, num_workers), 0
    started = time.perf_counter()
    for _ in range(num_batches):
        batch = next(batches)
        num_images += batch["pixel_values"].shape[0]
    seconds = time.perf_counter() - started
    del batches  # stops the workers before the next measurement starts its own
    return {
        "num_workers": num_workers,
        "images_per_second": num_images / seconds,
        "num_images": num_images,
        "seconds": seconds,
    }


def measure_batched_decode(args: argparse.Namespace, config: CAEv2Config, shards: list[str], device: str) -> dict:
    """Decoding a batch of encoded files at once (nvJPEG on "cuda"), then the pretraining augmentation per image on
    the same device: the alternative to decoding in loader workers. Masks are left out (workers draw them cheaply)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    transform = data.build_pretrain_transform(config.image_size)
    encoded = [torch.frombuffer(bytearray(ex["image"]["bytes"]), dtype=torch.uint8) for ex in TarShardStream(shards)]

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
    parser.add_argument("--num_workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches_per_worker", type=int, default=8, help="timed batches per worker")
    parser.add_argument("--num_shards", type=int, default=16, help="at least the largest worker count")
    parser.add_argument("--images_per_shard", type=int, default=32)
    parser.add_argument("--source_image_size", type=int, default=375, help="shorter side (most of ImageNet: 375)")
    parser.add_argument("--shard_dir", default=None, help="where shards are written (default: a temporary folder)")
    parser.add_argument("--reader", choices=["tar", "datasets"], default="tar")
    parser.add_argument("--batched_decode", choices=["off", "cpu", "cuda"], default="off", help="also time this path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    if args.num_shards < max(args.num_workers):
        parser.error(f"--num_shards {args.num_shards} is below the largest worker count: workers would idle.")
    if args.batched_decode == "cuda" and not torch.cuda.is_available():
        parser.error("--batched_decode cuda needs a CUDA device.")
    return args


def write_json(path: str | None, result: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as file:
            json.dump(result, file, indent=2)


def measure_workers(args: argparse.Namespace, config: CAEv2Config, shards: list[str], num_workers: int) -> dict:
    loader = build_loader(args, config, shards, num_workers)
    return measure_loader(loader, num_workers, args.batches_per_worker)


def try_measure(label: str, measure: Callable[..., dict], *measure_args) -> dict:
    """Runs one measurement; a failure (e.g. too small a /dev/shm for many workers) is recorded, not raised."""
    try:
        measured = measure(*measure_args)
        print(f"{label}: {measured['images_per_second']:.1f} images/s", flush=True)
    except Exception as error:
        measured = {"error": f"{type(error).__name__}: {error}"}
        print(f"{label} failed: {measured['error']}", flush=True)
    return measured


def run_benchmark(args: argparse.Namespace, shard_dir: str) -> dict:
    """Writes the shards, then measures each worker count (the JSON is rewritten after each, in case of a kill)."""
    config = CAEv2Config.from_preset(args.preset)
    started = time.perf_counter()
    shards = data.write_demo_tar_shards(
        shard_dir,
        num_shards=args.num_shards,
        images_per_shard=args.images_per_shard,
        image_size=args.source_image_size,
        seed=args.seed,
    )
    settings = {key: value for key, value in vars(args).items() if key != "output_json"}
    result = {**settings, "shard_seconds": time.perf_counter() - started, "cpu_count": os.cpu_count(), "loader": []}
    result["shard_megabytes"] = sum(os.path.getsize(path) for path in shards) / 2**20
    for num_workers in args.num_workers:
        measured = try_measure(f"data path, {num_workers} workers", measure_workers, args, config, shards, num_workers)
        result["loader"].append({"num_workers": num_workers, **measured})
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
        with tempfile.TemporaryDirectory(prefix="caev2_bench_data_") as shard_dir:
            return run_benchmark(args, shard_dir)
    finally:
        torch.set_num_threads(num_threads)


if __name__ == "__main__":
    main()
