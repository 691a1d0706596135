# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""The pretraining step, and the Accelerator, optimizer and scheduler it runs with.

`run_pretrain.py` and `benchmarks/bench_pretrain.py` both build their step with `build_pretraining_step` and call
the same `PretrainingStep`, so a benchmark figure is the training script's figure (docs/design.md#training-loop).
"""

import os
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, TorchDynamoPlugin, send_to_device

from caev2_hf_cli.pretraining import PretrainingArguments

from ..data.device_augment import AUGMENTATION_KEYS, augment_and_normalize
from ..optim import build_parameter_groups
from .schedule import TrainingSchedule, build_lr_scheduler
from .step_tracking import StepTracker


MODEL_INPUTS = ("pixel_values", "bool_masked_pos")  # what goes to the device; labels and counters stay on the host


def build_accelerator(training_args: PretrainingArguments) -> Accelerator:
    """Devices, precision, accumulation, compilation and TensorBoard; unset options come from `accelerate launch`."""
    # Accelerate joins CPU processes into one group only when told (cpu=True); without this, `torchrun` on a machine
    # without GPUs starts independent runs that overwrite each other's checkpoints. (`accelerate launch --cpu
    # --num_processes N` starts one process, not N: torchrun is the CPU launcher.)
    launched_processes = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(
        cpu=launched_processes > 1 and not torch.cuda.is_available(),
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        mixed_precision=training_args.mixed_precision,
        log_with=None if training_args.report_to == "none" else training_args.report_to,
        project_config=ProjectConfiguration(
            project_dir=training_args.output_dir, logging_dir=os.path.join(training_args.output_dir, "logs")
        ),
        dynamo_plugin=TorchDynamoPlugin(backend="inductor", mode=training_args.torch_compile_mode or "default")
        if training_args.torch_compile
        else None,
        step_scheduler_with_optimizer=False,  # we step it once per update; Accelerate would step it per process
    )
    if accelerator.num_processes != launched_processes:
        raise RuntimeError(
            f"The launcher started {launched_processes} processes but Accelerate joined {accelerator.num_processes}: "
            "on a machine without CUDA, launch with `torchrun --nproc_per_node N run_pretrain.py ...` (`accelerate "
            "launch --cpu --num_processes N` starts only one process)."
        )
    return accelerator


def build_optimizer_and_scheduler(
    model: torch.nn.Module, training_args: PretrainingArguments, schedule: TrainingSchedule
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW without decay on 1-D tensors, fused on every device: besides being the fastest AdamW, the fused kernel
    lets StepTracker skip a non-finite update on the device (no host sync)."""
    optimizer = torch.optim.AdamW(
        build_parameter_groups(model, training_args.weight_decay),
        lr=schedule.learning_rate,
        betas=(training_args.adam_beta1, training_args.adam_beta2),
        eps=training_args.adam_epsilon,
        fused=True,
    )
    scheduler = build_lr_scheduler(
        optimizer, schedule, training_args.min_learning_rate, training_args.lr_scheduler_type
    )
    return optimizer, scheduler


@dataclass
class PretrainingStep:
    """One micro-batch of pretraining: copy to the device, normalise, forward, backward and, on the last micro-batch
    of an update, clip + AdamW + scheduler. Objects come prepared by `accelerator.prepare`.

    Teacher amortisation, off by default (docs/design.md#teacher): `masks_per_image = K > 1` runs the teacher once
    per image and the student on K masked views of it (the batch then holds K masks per image,
    `build_pretrain_loader(masks_per_image=K)`).
    """

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    tracker: StepTracker
    max_grad_norm: float | None
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    masks_per_image: int = 1

    def prepare_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """The model's keyword arguments on the device; pixels travel as uint8 (a quarter of float's bytes). When the
        batch carries per-image flip and colour-jitter parameters (`data.transforms.PretrainCrop`), they are applied
        there, batched, before the student's normalisation (docs/design.md#data-path)."""
        keys = (*MODEL_INPUTS, "target_features", *AUGMENTATION_KEYS)
        inputs = {key: batch[key] for key in keys if key in batch}
        inputs = send_to_device(inputs, self.accelerator.device, non_blocking=True)
        augmentation = {key: inputs.pop(key) for key in AUGMENTATION_KEYS if key in inputs}
        inputs["pixel_values"] = augment_and_normalize(
            inputs["pixel_values"], self.image_mean, self.image_std, **augmentation
        )
        return inputs

    @property
    def teacher(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model).teacher

    def share_teacher_pass(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """K views per image, one teacher pass: targets for the B images, then images and targets repeated K times
        to meet the batch's K x B masks (copy k of image b at row k * B + b)."""
        pixel_values, masks = inputs["pixel_values"], inputs["bool_masked_pos"]
        if masks.shape[0] != self.masks_per_image * pixel_values.shape[0]:
            raise ValueError(
                f"{masks.shape[0]} masks for {pixel_values.shape[0]} images: masks_per_image={self.masks_per_image} "
                "needs the loader to draw as many masks per image (build_pretrain_loader(masks_per_image=...))."
            )
        targets = inputs.get("target_features")
        if targets is None:
            targets = self.teacher(pixel_values)
        repeats = self.masks_per_image
        return {
            "pixel_values": pixel_values.repeat(repeats, 1, 1, 1),
            "bool_masked_pos": masks,
            "target_features": targets.repeat(repeats, 1, 1),
        }

    def __call__(self, batch: dict):
        accelerator, optimizer = self.accelerator, self.optimizer
        with accelerator.accumulate(self.model):
            inputs = self.prepare_inputs(batch)
            if self.masks_per_image > 1:
                inputs = self.share_teacher_pass(inputs)
            outputs = self.model(**inputs)
            accelerator.backward(outputs.loss)
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), self.max_grad_norm or float("inf"))
                self.tracker.skip_update_if_nonfinite(optimizer, grad_norm)
            optimizer.step()  # a no-op before the last micro-batch (Accelerate), or when the guard found NaN/inf
            if accelerator.sync_gradients:
                self.scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        self.tracker.record_batch(outputs, batch["num_skipped_images"])
        return outputs


def build_pretraining_step(
    accelerator: Accelerator, model: torch.nn.Module, training_args: PretrainingArguments, schedule: TrainingSchedule
) -> PretrainingStep:
    """The step `run_pretrain.py` trains with and `benchmarks/bench_pretrain.py` times: fused AdamW and the lr
    scheduler of `schedule` for `model`, all three prepared by `accelerator`, and a `StepTracker` counting from 0 (a
    resumed run loads its checkpoint into these prepared objects, then calls `tracker.restore_totals`)."""
    optimizer, scheduler = build_optimizer_and_scheduler(model, training_args, schedule)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    tracker = StepTracker(
        accelerator.device, schedule.effective_batch_size, training_args.max_consecutive_skipped_steps
    )
    config = accelerator.unwrap_model(model).config
    return PretrainingStep(
        accelerator, model, optimizer, scheduler, tracker, training_args.max_grad_norm, config.image_mean,
        config.image_std, masks_per_image=training_args.masks_per_image,
    )  # fmt: skip
