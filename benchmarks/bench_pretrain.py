#!/usr/bin/env python
# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Throughput, peak memory and MFU of the CAE v2 pretraining step on synthetic batches.

The timed step is `caev2_hf.pretraining.step.PretrainingStep`, built by the factory `run_pretrain.py` builds its own
with (`build_pretraining_step`: fused AdamW, lr schedule and step tracker, prepared by the same Accelerator): a
pinned uint8 batch and its block masks copied to the device without blocking, normalised there, the student
forward (encoder on [CLS] + visible patches, regressor, head) and the frozen teacher forward under Accelerate's
autocast, backward, grad-norm clipping and the AdamW step. Only the data are synthetic. Run from the repository root (the package need not be installed):

    PYTHONPATH=. python benchmarks/bench_pretrain.py --preset base --batch_size 256 --precision bf16 \
        --attn_implementation sdpa --compile --output_json base_bf16_sdpa_compiled.json
    PYTHONPATH=. python benchmarks/bench_pretrain.py --preset tiny --precision fp32 --batch_size 8
"""

import argparse
import importlib.util
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: no install needed
sys.path.insert(1, str(Path(__file__).resolve().parent))  # bench_data, for write_json

import transformers  # noqa: E402
from bench_data import write_json  # noqa: E402

from caev2_hf import CAEV2_PRESETS, CAEv2Config, CAEv2ForPreTraining  # noqa: E402
from caev2_hf.data.masking import build_mask_generator  # noqa: E402
from caev2_hf.pretraining.schedule import compute_training_schedule  # noqa: E402
from caev2_hf.pretraining.step import PretrainingStep, build_accelerator, build_pretraining_step  # noqa: E402
from caev2_hf.pretraining.step_tracking import unwrap_optimizer  # noqa: E402
from caev2_hf_cli.pretraining import COMPILE_MODES, PretrainingArguments, PretrainingDataArguments  # noqa: E402


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # Accelerate's names
# Dense (no 2:4 sparsity) tensor-core peaks from NVIDIA's datasheets, by device-name fragment, first match wins.
# "fp32" is plain fp32 arithmetic: PyTorch keeps TF32 off for matmuls by default.
DEVICE_PEAK_FLOPS = (
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 51.2e12}),
    ("H100", {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12}),
    ("H200", {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12}),
)
# The recipe's optimizer settings (docs/method.md#recipes); the lr is the recipe's peak whatever the batch, since
# what is timed must not depend on where the schedule stands.
RECIPE = {"learning_rate": 1.5e-3, "min_learning_rate": 0.0, "weight_decay": 0.05, "max_grad_norm": 3.0}


# ---- FLOP count of one step. Matmuls only (2 * m * n * k per product); norms, softmax, GELU and the loss are left
# out, as in the usual MFU convention. Backward costs twice the forward, so a step costs 3 x the student forward;
# the frozen teacher only runs forward. For ViT-B/16 at 50% mask this gives 93.0 GFLOPs per image with a 1-layer
# regressor and 108.1 with the preset's 4 layers (student forward 19.2 / 24.3 GFLOPs, teacher 35.3).


def linear_flops(num_tokens: int, in_features: int, out_features: int) -> int:
    return 2 * num_tokens * in_features * out_features


def attention_flops(num_queries: int, num_keys: int, width: int) -> int:
    """Scores `Q K^T` and the weighted sum `A V`, all heads together: two products of `q x k x width`."""
    return 2 * linear_flops(num_queries, num_keys, width)


def transformer_layer_flops(num_queries: int, num_keys: int, width: int, intermediate_size: int) -> int:
    """q and o projections and the MLP run on the queries; k and v projections on the key/value tokens."""
    projections = 2 * linear_flops(num_queries, width, width) + 2 * linear_flops(num_keys, width, width)
    mlp = linear_flops(num_queries, width, intermediate_size) + linear_flops(num_queries, intermediate_size, width)
    return projections + mlp + attention_flops(num_queries, num_keys, width)


def count_student_forward_flops(config: CAEv2Config) -> dict[str, int]:
    """Per-image forward FLOPs of the student, by module (docs/method.md#forward-pass)."""
    num_patches, num_masked = config.num_patches, config.num_masking_patches
    encoder_tokens = 1 + num_patches - num_masked  # [CLS] + visible
    width, regressor_width = config.hidden_size, config.regressor_hidden_size
    patch_dim = config.num_channels * config.patch_size**2
    encoder_layer = transformer_layer_flops(encoder_tokens, encoder_tokens, width, config.intermediate_size)
    # Mask queries attend to visible latents + queries (all patches, no [CLS]).
    regressor_layer = transformer_layer_flops(
        num_masked, num_patches, regressor_width, config.regressor_intermediate_size
    )
    projected = width != regressor_width
    return {
        "patch_embedding": linear_flops(num_patches, patch_dim, width),  # every patch is embedded, then gathered
        "encoder": config.num_hidden_layers * encoder_layer,
        "latent_projection": linear_flops(encoder_tokens, width, regressor_width) if projected else 0,
        "regressor": config.regressor_num_hidden_layers * regressor_layer,
        "head": linear_flops(1 + num_patches, regressor_width, config.target_hidden_size),
    }


def count_teacher_forward_flops(teacher_config) -> dict[str, int]:
    """Per-image forward FLOPs of the CLIP vision tower, with the projection applied to every token (docs/method.md#head-and-targets)."""
    num_patches = (teacher_config.image_size // teacher_config.patch_size) ** 2
    tokens, width = 1 + num_patches, teacher_config.hidden_size
    patch_dim = teacher_config.num_channels * teacher_config.patch_size**2
    layer = transformer_layer_flops(tokens, tokens, width, teacher_config.intermediate_size)
    return {
        "patch_embedding": linear_flops(num_patches, patch_dim, width),
        "encoder": teacher_config.num_hidden_layers * layer,
        "projection": linear_flops(tokens, width, teacher_config.projection_dim),
    }


def count_step_flops(config: CAEv2Config, use_teacher: bool = True, masks_per_image: int = 1) -> dict[str, int]:
    """Per-image FLOPs of a training step: 3 x student forward (forward + backward) for each of the image's
    `masks_per_image` views, + 1 x teacher forward."""
    student = sum(count_student_forward_flops(config).values())
    teacher = sum(count_teacher_forward_flops(config.teacher_config).values()) if use_teacher else 0
    return {"student_forward": student, "teacher_forward": teacher, "total": 3 * masks_per_image * student + teacher}


def detect_peak_flops(device: torch.device, precision: str) -> float | None:
    """The datasheet dense peak of a known GPU for `precision`, else None (pass --peak_tflops)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks[precision] for fragment, peaks in DEVICE_PEAK_FLOPS if fragment in name), None)


def measure_matmul_flops(device: torch.device, precision: str, size: int = 8192, repeats: int = 20) -> float | None:
    """Dense matmul FLOP/s this device reaches at `precision` on square `size` products: a measured ceiling for MFU
    beside the datasheet's (clocks, power and the library decide what a chip really gives). CUDA only."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(size, size, device=device, dtype=DTYPES[precision]) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return repeats * 2 * size**3 / (time.perf_counter() - started)


# ---- Where the time goes: the step's parts as profiler ranges.

STEP_PARTS = ("teacher", "caev2", "latent_projection", "regressor", "head")  # CAEv2ForPreTraining's children


def open_range(name: str, ranges: dict):
    def hook(*_):
        ranges[name] = torch.profiler.record_function(name)
        ranges[name].__enter__()

    return hook


def close_range(name: str, ranges: dict):
    def hook(*_):
        ranges.pop(name).__exit__(None, None, None)

    return hook


def add_part_ranges(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list:
    """Forward hooks that open and close one profiler range per part of the model, and step hooks for the
    optimizer. Under torch.compile the forward hooks are traced into the graph, so only eager steps are split by
    part; a compiled step is described by its kernels."""
    ranges, handles = {}, []
    for name in STEP_PARTS:
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):
            handles.append(module.register_forward_pre_hook(open_range(f"forward/{name}", ranges)))
            handles.append(module.register_forward_hook(close_range(f"forward/{name}", ranges)))
    handles.append(optimizer.register_step_pre_hook(open_range("optimizer", ranges)))
    handles.append(optimizer.register_step_post_hook(close_range("optimizer", ranges)))
    return handles


# Kernel families by name fragment, first match wins (cuBLAS/CUTLASS GEMMs, flash/cuDNN attention, Triton kernels
# that inductor generated, the fused optimizer and foreach clipping, cuDNN convolutions (their sgemm too), copies).
KERNEL_FAMILIES = (
    ("attention", ("flash", "fmha", "attention", "attn", "cudnn_generated_fort_native_sdpa")),
    ("optimizer_and_clipping", ("adam", "multi_tensor", "foreach", "norm_kernel")),
    ("convolution", ("conv", "implicit")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "scaled_mm", "wgmma", "sm90")),
    ("triton_fused", ("triton",)),
    ("copy", ("memcpy", "memset", "copy", "cat")),
)


# The profiler also puts op and range names (`aten::mm`, `## Call CompiledFxGraph ... ##`) on the device timeline;
# they span kernels already counted, so only the kernels themselves are summed. On the CPU, ops are the unit.
PART_RANGES = ("forward/", "optimizer", "step")
ANNOTATION_PREFIXES = ("aten::", "##", "CompiledFunction", "Optimizer.", "Torch-Compiled", *PART_RANGES)


def is_kernel(event, on_gpu: bool) -> bool:
    if on_gpu:
        return event.device_type == torch.autograd.DeviceType.CUDA and not event.key.startswith(ANNOTATION_PREFIXES)
    return not event.key.startswith(PART_RANGES)


def kernel_family(name: str) -> str:
    lowered = name.lower()
    return next((family for family, fragments in KERNEL_FAMILIES if any(f in lowered for f in fragments)), "other")


def profile_steps(step: PretrainingStep, batches: list[dict], compiled: bool, num_steps: int = 2) -> dict:
    """Device (else CPU) milliseconds per step for each part, the rest of the step (backward, clipping, loss,
    copies), and the 15 most expensive kernels."""
    device = step.accelerator.device
    on_gpu = device.type == "cuda"
    model, optimizer = step.accelerator.unwrap_model(step.model), unwrap_optimizer(step.optimizer)
    handles = [] if compiled else add_part_ranges(model, optimizer)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_gpu:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    synchronize(device)
    with torch.profiler.profile(activities=activities) as profiler:
        for index in range(num_steps):
            with torch.profiler.record_function("step"):
                step(batches[index % len(batches)])
        synchronize(device)
    for handle in handles:
        handle.remove()
    time_of = (lambda e: e.device_time_total) if on_gpu else (lambda e: e.cpu_time_total)
    self_time = (lambda e: e.self_device_time_total) if on_gpu else (lambda e: e.self_cpu_time_total)
    events = profiler.key_averages()
    totals = {event.key: time_of(event) / 1000 / num_steps for event in events}
    parts = {name: totals[name] for name in totals if name.startswith("forward/") or name == "optimizer"}
    kernels = [event for event in events if is_kernel(event, on_gpu)]
    step_ms = sum(time_of(event) for event in kernels) / 1000 / num_steps if on_gpu else totals.get("step", 0.0)
    families: dict[str, float] = {}
    for event in kernels if on_gpu else []:
        family = kernel_family(event.key)
        families[family] = families.get(family, 0.0) + time_of(event) / 1000 / num_steps
    return {
        "clock": "device" if on_gpu else "cpu",
        "step_ms": step_ms,
        "parts_ms": parts,
        "rest_of_step_ms": step_ms - sum(parts.values()),
        "top_kernels_ms": [
            {"name": event.key, "ms": self_time(event) / 1000 / num_steps}
            for event in sorted(kernels, key=self_time, reverse=True)[:15]
        ],
        "kernel_families_ms": dict(sorted(families.items(), key=lambda item: -item[1])),
        "kernel_launches_per_step": sum(event.count for event in kernels) / num_steps,
    }


# ---- The benchmark.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(CAEV2_PRESETS), default="base")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--precision", choices=sorted(DTYPES), default="bf16", help="autocast dtype and teacher dtype")
    parser.add_argument("--attn_implementation", choices=["eager", "sdpa", "flash_attention_2"], default="sdpa")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up includes compiling)")
    parser.add_argument(
        "--compile_mode",
        choices=COMPILE_MODES,
        default=None,
        help="torch.compile mode (--torch_compile_mode of run_pretrain.py); implies --compile",
    )
    parser.add_argument("--teacher", choices=["on", "off"], default="on", help="off: pass random target_features")
    parser.add_argument(
        "--masks_per_image", type=int, default=1, help="teacher amortisation: student views per teacher pass"
    )
    parser.add_argument(
        "--teacher_patch_embedding",
        choices=["matmul", "conv"],
        default="matmul",
        help="matmul: as run_pretrain.py runs it; conv: CLIP's own Conv2d (cuDNN), for an A/B row in the same call",
    )
    parser.add_argument("--warmup_steps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--peak_tflops", type=float, default=None, help="dense peak TFLOP/s for MFU (default: H100/H200)"
    )
    parser.add_argument("--sync_debug", choices=["on", "off"], default="on", help="count host syncs in one CUDA step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", default=None)
    parser.add_argument(
        "--profile",
        choices=["on", "off"],
        default="off",
        help="on: after timing, profile 2 steps (torch.profiler): time per part of the step and the top kernels",
    )
    args = parser.parse_args(argv)
    args.compile = args.compile or args.compile_mode is not None
    if args.steps < 1 or args.warmup_steps < 0 or args.batch_size < 1 or args.masks_per_image < 1:
        parser.error("--steps, --batch_size and --masks_per_image must be at least 1, --warmup_steps at least 0.")
    if args.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        parser.error("--attn_implementation flash_attention_2 needs the flash_attn package, which is not installed.")
    if args.precision == "fp16" and not torch.cuda.is_available():
        parser.error("--precision fp16 runs on CUDA only (CPU autocast and GradScaler are bf16/fp32 paths).")
    return args


def build_step(args: argparse.Namespace, output_dir: str) -> PretrainingStep:
    """The training script's step for the preset, from its factory (`build_pretraining_step`); a random teacher
    kept in the step's precision, as `load_teacher(dtype=...)` leaves it."""
    training_args = PretrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=args.batch_size, mixed_precision=MIXED_PRECISION[args.precision],
        torch_compile=args.compile, torch_compile_mode=args.compile_mode, report_to="none",
        max_steps=args.warmup_steps + args.steps + 1, warmup_steps=1,
        max_grad_norm=RECIPE["max_grad_norm"], learning_rate=RECIPE["learning_rate"],
        learning_rate_batch_size=args.batch_size, min_learning_rate=RECIPE["min_learning_rate"],
        weight_decay=RECIPE["weight_decay"], masks_per_image=args.masks_per_image,
        max_consecutive_skipped_steps=10**9,
    )  # fmt: skip
    accelerator = build_accelerator(training_args)
    config = CAEv2Config.from_preset(
        args.preset, use_random_teacher=True, attn_implementation=args.attn_implementation
    )
    model = CAEv2ForPreTraining(config)
    if args.teacher_patch_embedding == "conv":
        restore_teacher_conv2d(model)
    model.teacher.to(DTYPES[args.precision])
    schedule = compute_training_schedule(
        args.batch_size, 1, accelerator.num_processes, training_args.learning_rate,
        training_args.learning_rate_batch_size, max_steps=training_args.max_steps, warmup_steps=1,
    )  # fmt: skip
    step = build_pretraining_step(accelerator, model, training_args, schedule)
    step.model.train()
    return step


def restore_teacher_conv2d(model: CAEv2ForPreTraining) -> None:
    """Put back CLIP's plain `nn.Conv2d` patch embedding (sharing the teacher's parameters) in place of the
    `CAEv2PatchConv2d` matmul: the "before" of that change, measured in the same call as the "after"."""
    embeddings = model.teacher.model.vision_model.embeddings
    matmul = embeddings.patch_embedding
    size = matmul.kernel_size
    # Built on the meta device: drawing weights of its own would shift the random stream (drop path) of the row.
    conv = torch.nn.Conv2d(
        matmul.in_channels, matmul.out_channels, size, size, bias=matmul.bias is not None, device="meta"
    )
    conv.weight, conv.bias = matmul.weight, matmul.bias
    embeddings.patch_embedding = conv


def build_synthetic_batches(
    config: CAEv2Config, batch_size: int, device: torch.device, seed: int, teacher: str, masks_per_image: int = 1
) -> list[dict]:
    """Two loader-like batches (random uint8 pixels, `masks_per_image` block masks per image), pinned when the
    device is a GPU; with the teacher off, random unit-norm targets stand in for its output."""
    generator, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    grid_side = config.image_size // config.patch_size
    mask_generator = build_mask_generator(
        (grid_side, grid_side), config.num_masking_patches, PretrainingDataArguments()
    )
    shape = (batch_size, config.num_channels, config.image_size, config.image_size)
    batches = []
    for _ in range(2):
        batch = {
            "pixel_values": torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator),
            "bool_masked_pos": torch.from_numpy(
                np.stack([mask_generator(rng) for _ in range(masks_per_image * batch_size)])
            ),
        }
        if teacher == "off":
            targets = torch.randn(batch_size, 1 + config.num_patches, config.target_hidden_size, generator=generator)
            batch["target_features"] = F.normalize(targets, dim=-1)
        batch = {k: v.pin_memory() if device.type == "cuda" else v for k, v in batch.items()}
        batch["num_skipped_images"] = torch.zeros((), dtype=torch.int64)
        batches.append(batch)
    return batches


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_host_syncs(step: PretrainingStep, batch: dict) -> list[str]:
    """Runs one step under CUDA's sync debug mode; one `file:line: message` per host synchronisation in it."""
    if step.accelerator.device.type != "cuda":
        return []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # The mode announces itself once ("... is a prototype feature ..."): that notice is not a sync of the step.
    syncs = [w for w in caught if "synchroniz" in str(w.message) and "prototype feature" not in str(w.message)]
    return [f"{Path(w.filename).name}:{w.lineno}: {str(w.message).splitlines()[0]}" for w in syncs]


def count_dynamo_graphs() -> dict[str, int]:
    """Graphs torch.compile has built and graph breaks it has met so far, in this process."""
    counters = torch._dynamo.utils.counters
    return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values())}


def time_steps(step: PretrainingStep, batches: list[dict], warmup_steps: int, steps: int) -> dict:
    """Warm-up (compilation, allocator, cuDNN choices), then `steps` steps between two device synchronisations.

    With --compile, graphs built during the timed steps would mean recompilation (shapes are meant to be static).
    """
    started = time.perf_counter()
    device = step.accelerator.device
    for index in range(warmup_steps):
        step(batches[index % len(batches)])
    synchronize(device)
    warmup_seconds, graphs_after_warmup = time.perf_counter() - started, count_dynamo_graphs()["graphs"]
    started = time.perf_counter()
    for index in range(steps):
        loss = step(batches[index % len(batches)]).loss.detach()
    synchronize(device)
    elapsed = time.perf_counter() - started
    dynamo = {
        **count_dynamo_graphs(),
        "graphs_built_in_timed_steps": count_dynamo_graphs()["graphs"] - graphs_after_warmup,
    }
    return {"warmup_seconds": warmup_seconds, "elapsed_seconds": elapsed, "final_loss": float(loss), "dynamo": dynamo}


def peak_memory_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def run_benchmark(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = True  # fixed shapes every step: let cuDNN pick the patch-embedding kernel once
    with tempfile.TemporaryDirectory() as output_dir:
        step = build_step(args, output_dir)
    device, config = step.accelerator.device, step.accelerator.unwrap_model(step.model).config
    batches = build_synthetic_batches(config, args.batch_size, device, args.seed, args.teacher, args.masks_per_image)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing = time_steps(step, batches, args.warmup_steps, args.steps)
    host_syncs = count_host_syncs(step, batches[0]) if args.sync_debug == "on" else None
    profile = profile_steps(step, batches, compiled=args.compile) if args.profile == "on" else None
    flops = count_step_flops(config, use_teacher=args.teacher == "on", masks_per_image=args.masks_per_image)
    images_per_second = args.steps * args.batch_size / timing["elapsed_seconds"]  # unique images
    peak_flops = args.peak_tflops * 1e12 if args.peak_tflops else detect_peak_flops(device, args.precision)
    achieved_flops = flops["total"] * images_per_second
    matmul_flops = measure_matmul_flops(device, args.precision)
    return {
        **{key: value for key, value in vars(args).items() if key != "output_json"},
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "images_per_second": images_per_second,
        "student_samples_per_second": images_per_second * args.masks_per_image,
        "step_ms": 1000 * timing["elapsed_seconds"] / args.steps,
        "warmup_seconds": timing["warmup_seconds"],
        "peak_memory_mib": peak_memory_mib(device),
        "flops_per_image": flops,
        "achieved_tflops": achieved_flops / 1e12,
        "peak_tflops": peak_flops / 1e12 if peak_flops else None,
        "mfu": achieved_flops / peak_flops if peak_flops else None,
        "measured_matmul_tflops": matmul_flops / 1e12 if matmul_flops else None,
        "mfu_of_measured_matmul": achieved_flops / matmul_flops if matmul_flops else None,
        "final_loss": timing["final_loss"],
        "loss_is_finite": math.isfinite(timing["final_loss"]),
        "host_syncs_in_step": host_syncs,
        "profile": profile,
        "dynamo": timing["dynamo"],
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": sys.version.split()[0],
        },
    }


def format_summary(result: dict) -> str:
    memory = f"{result['peak_memory_mib'] / 1024:.1f} GiB" if result["peak_memory_mib"] is not None else "n/a"
    mfu = f"{100 * result['mfu']:.1f}% of the datasheet peak" if result["mfu"] is not None else "n/a"
    if result["mfu_of_measured_matmul"] is not None:
        mfu += (
            f", {100 * result['mfu_of_measured_matmul']:.1f}% of the measured "
            f"{result['measured_matmul_tflops']:.0f} TFLOP/s dense matmul"
        )
    return (
        f"{result['preset']} {result['precision']} {result['attn_implementation']} compile={result['compile']} "
        f"teacher={result['teacher']}{' (Conv2d patch embedding)' if result['teacher_patch_embedding'] == 'conv' else ''} "
        f"batch={result['batch_size']} on "
        f"{result['device_name']}: {result['images_per_second']:.1f} images/s, {result['step_ms']:.1f} ms/step, "
        f"peak memory {memory}, MFU {mfu} ({result['flops_per_image']['total'] / 1e9:.1f} GFLOPs/image, "
        f"{result['achieved_tflops']:.1f} TFLOP/s), loss {result['final_loss']:.4f}, "
        f"warm-up {result['warmup_seconds']:.1f} s"
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run_benchmark(args)
    print(format_summary(result))
    if result["host_syncs_in_step"]:
        print(f"host syncs in one step: {result['host_syncs_in_step']}")
    if result["profile"]:
        profile = result["profile"]
        parts = ", ".join(f"{name} {ms:.1f}" for name, ms in profile["parts_ms"].items())
        print(
            f"{profile['clock']} ms per step: {profile['step_ms']:.1f} = {parts}, rest {profile['rest_of_step_ms']:.1f}"
        )
        if profile["kernel_families_ms"]:
            families = ", ".join(f"{name} {ms:.1f}" for name, ms in profile["kernel_families_ms"].items())
            print(f"kernel ms per step by family: {families}; {profile['kernel_launches_per_step']:.0f} kernels")
        for kernel in profile["top_kernels_ms"][:10]:
            print(f"  {kernel['ms']:7.2f} ms  {kernel['name'][:110]}")
    write_json(args.output_json, result)
    return result


if __name__ == "__main__":
    main()
