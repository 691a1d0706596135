#!/usr/bin/env python
# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Throughput and peak memory of a UperNet + CAE v2 training step (issue 14's target: ViT-B, 512 x 512, batch 16,
bf16, in images/s) on synthetic batches.

The timed step is what `run_semantic_segmentation.py` runs per iteration: the UperNet forward (backbone with relative
position bias and multi-scale neck, decode head and auxiliary head) with both losses under autocast, backward, and
the layer-decay AdamW step with the poly schedule. Only the data are synthetic. From the repository root:

    PYTHONPATH=. python benchmarks/bench_segmentation.py --preset base --batch_size 16 --precision bf16 \
        --output_json segmentation_base_bf16.json
    PYTHONPATH=. python benchmarks/bench_segmentation.py --preset tiny-cpu --device cpu     # CPU check, seconds
"""

import argparse
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: no install needed


from benchmarks.step_timing import describe_environment, time_steps, write_json  # noqa: E402
from caev2_hf import CAEV2_PRESETS, CAEv2Config  # noqa: E402
from caev2_hf.evaluation.segmentation.model import load_segmentation_model  # noqa: E402
from caev2_hf.evaluation.segmentation.trainer import build_poly_schedule  # noqa: E402
from caev2_hf.optim import build_layer_decay_optimizer  # noqa: E402


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# A CPU-sized check of the harness: 4 blocks of width 64 on 64 px crops.
TINY_CPU = {
    "image_size": 64, "patch_size": 16, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
    "intermediate_size": 128,
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=[*sorted(CAEV2_PRESETS), "tiny-cpu"], default="base")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--crop_size", type=int, default=None, help="default 512 (64 for tiny-cpu)")
    parser.add_argument("--num_labels", type=int, default=150)
    parser.add_argument("--precision", choices=sorted(DTYPES), default="bf16", help="autocast dtype")
    parser.add_argument("--attn_implementation", choices=["eager", "sdpa"], default="sdpa")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up includes compiling)")
    parser.add_argument("--device", default=None, help="default cuda when available, else cpu")
    parser.add_argument("--warmup_steps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", default=None)
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace, crop_size: int):
    """UperNet on a random CAE v2 encoder of the preset, with the recipe's heads (channels = encoder width)."""
    if args.preset == "tiny-cpu":
        config = CAEv2Config(**TINY_CPU)
    else:
        config = CAEv2Config.from_preset(args.preset)
    id2label = {index: str(index) for index in range(args.num_labels)}
    model, _ = load_segmentation_model(
        None, args.num_labels, id2label, crop_size, drop_path_rate=0.1, random_encoder_config=config
    )
    model.backbone.set_attn_implementation(args.attn_implementation)
    return model


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    crop_size = args.crop_size or (64 if args.preset == "tiny-cpu" else 512)
    model = build_model(args, crop_size).to(device).train()
    optimizer = build_layer_decay_optimizer(model, 1e-4, 0.05, 0.65, model.config.backbone_config.num_hidden_layers)
    scheduler = build_poly_schedule(optimizer, 1500, 160_000)
    step_model = torch.compile(model) if args.compile else model
    pixel_values = torch.randn(args.batch_size, 3, crop_size, crop_size, device=device)
    labels = torch.randint(0, args.num_labels, (args.batch_size, crop_size, crop_size), device=device)
    labels[:, : crop_size // 8] = 255  # some ignored pixels, as ADE20K's "other"
    autocast = torch.autocast(device.type, dtype=DTYPES[args.precision], enabled=args.precision != "fp32")

    def step() -> float:
        with autocast:
            loss = step_model(pixel_values=pixel_values, labels=labels).loss
        loss = loss * (labels != 255).sum() / labels.numel()  # the recipe's all-pixel normalisation
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    timing = time_steps(step, args.warmup_steps, args.steps, device)
    result = {
        "preset": args.preset,
        "batch_size": args.batch_size,
        "crop_size": crop_size,
        "precision": args.precision,
        "attn_implementation": args.attn_implementation,
        "compile": args.compile,
        "images_per_second": 1000 * args.batch_size / timing["step_ms"],
        **timing,
        **describe_environment(device),
    }
    print(
        f"{args.preset} UperNet, batch {args.batch_size} at {crop_size} px, {args.precision}: "
        f"{result['images_per_second']:.1f} images/s, {result['step_ms']:.1f} ms/step",
        flush=True,
    )
    write_json(args.output_json, result)
    return result


if __name__ == "__main__":
    main()
