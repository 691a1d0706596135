#!/usr/bin/env python
# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Throughput of an LW-DETR training step on a CAE v2 encoder (issue 23's target: LW-DETR-small from a CAE v2 ViT-Tiny
encoder at 640 x 640, in images/s; bf16 on a GPU, fp32 on a CPU) on synthetic batches.

The timed step is what `run_object_detection.py` runs per iteration: the LW-DETR forward with its Hungarian-matched
losses (13 query groups in training), backward, clipping at 0.1, the AdamW step over the authors' parameter groups and
the weight-average update. The ViT holds a random ViT-Tiny encoder's first blocks; only the data are synthetic (a few
boxes per image). From the repository root:

    PYTHONPATH=. python benchmarks/bench_detection.py --size small --batch_size 16 --precision bf16 \
        --output_json detection_small_bf16.json
    PYTHONPATH=. python benchmarks/bench_detection.py --device cpu --precision fp32 --batch_size 2 --steps 3
"""

import argparse
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: no install needed

from transformers import LwDetrForObjectDetection  # noqa: E402

from benchmarks.step_timing import describe_environment, time_steps, write_json  # noqa: E402
from caev2_hf import CAEv2Config, CAEv2Model  # noqa: E402
from caev2_hf.evaluation.detection.lwdetr import (  # noqa: E402
    LWDETR_SIZES,
    build_lwdetr_config,
    check_enough_proposals,
    load_encoder_into_lwdetr,
)
from caev2_hf.evaluation.detection.training import ModelEma, build_lwdetr_parameter_groups  # noqa: E402


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NUM_LABELS = 80  # COCO's classes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(LWDETR_SIZES), default="small")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=640)
    parser.add_argument("--boxes_per_image", type=int, default=7, help="COCO averages about 7 objects an image")
    parser.add_argument("--precision", choices=sorted(DTYPES), default="bf16", help="autocast dtype")
    parser.add_argument("--attn_implementation", choices=["eager", "sdpa"], default="sdpa")
    parser.add_argument("--device", default=None, help="default cuda when available, else cpu")
    parser.add_argument("--warmup_steps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", default=None)
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace) -> LwDetrForObjectDetection:
    """The size's LW-DETR with its ViT taken from a random CAE v2 encoder of the preset the authors start from."""
    encoder_config = CAEv2Config.from_preset(LWDETR_SIZES[args.size].encoder_preset)
    id2label = {index: str(index) for index in range(NUM_LABELS)}
    config = build_lwdetr_config(args.size, id2label, encoder_config, args.image_size)
    check_enough_proposals(config, args.image_size)
    config._attn_implementation = args.attn_implementation
    model = LwDetrForObjectDetection(config)
    load_encoder_into_lwdetr(model, CAEv2Model(encoder_config).state_dict(), encoder_config, "a random encoder")
    return model


def synthetic_labels(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Per image, boxes of random centre and size in normalised (cx, cy, w, h) and random classes."""
    labels = []
    for _ in range(args.batch_size):
        centres = torch.rand(args.boxes_per_image, 2, device=device) * 0.6 + 0.2
        sizes = torch.rand(args.boxes_per_image, 2, device=device) * 0.3 + 0.05
        classes = torch.randint(0, NUM_LABELS, (args.boxes_per_image,), device=device)
        labels.append({"class_labels": classes, "boxes": torch.cat([centres, sizes], dim=1)})
    return labels


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(args).to(device).train()
    groups = build_lwdetr_parameter_groups(model, 1e-4, 1.5e-4, 1e-4, 0.8, 0.7)
    optimizer = torch.optim.AdamW(groups)
    ema = ModelEma(model, 0.9997)
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    pixel_mask = torch.ones(args.batch_size, args.image_size, args.image_size, dtype=torch.long, device=device)
    labels = synthetic_labels(args, device)
    autocast = torch.autocast(device.type, dtype=DTYPES[args.precision], enabled=args.precision != "fp32")

    def step() -> torch.Tensor:
        with autocast:
            loss = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)
        return loss.detach()

    timing = time_steps(step, args.warmup_steps, args.steps, device)
    result = {
        "size": args.size,
        "encoder": f"CAE v2 ViT-{LWDETR_SIZES[args.size].encoder_preset.capitalize()} (random weights)",
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "precision": args.precision,
        "attn_implementation": args.attn_implementation,
        "images_per_second": 1000 * args.batch_size / timing["step_ms"],
        **timing,
        **describe_environment(device),
    }
    print(
        f"LW-DETR-{args.size}, batch {args.batch_size} at {args.image_size} px, {args.precision} on {device.type}: "
        f"{result['images_per_second']:.2f} images/s, {result['step_ms']:.0f} ms/step",
        flush=True,
    )
    write_json(args.output_json, result)
    return result


if __name__ == "__main__":
    main()
