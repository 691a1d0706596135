# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""What the Trainer-based jobs (fine-tuning, segmentation, detection) share: the length of a run in optimizer steps
and the checkpoint a run resumes from."""

import math
import os

from transformers import TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from caev2_hf_cli.errors import UserError


def resolve_max_steps(training_args: TrainingArguments, num_examples: int) -> int:
    """`--max_steps` when given, else the optimizer steps of `--num_train_epochs` over `num_examples` (at least 1).

    The Trainer cannot count epochs of a stream (it has no length), and the segmentation recipe counts iterations
    (160k at batch 16): either way the run is set by steps, one step taking the batch of every process and every
    accumulated micro-batch.
    """
    if training_args.max_steps > 0:
        return training_args.max_steps
    batch_size_per_step = (
        training_args.train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    )
    return max(1, math.floor(training_args.num_train_epochs * num_examples / batch_size_per_step))


def resolve_trainer_checkpoint(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """`latest` (or `true`, Trainer's word) is the newest `checkpoint-N` in `output_dir`, as in `run_pretrain.py`;
    a path must be a Trainer checkpoint."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint.lower() in ("latest", "true"):
        latest = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if latest is None:
            raise UserError(
                f"--resume_from_checkpoint {resume_from_checkpoint}: {output_dir} holds no checkpoint-N folder yet; "
                "start without it."
            )
        return latest
    if not os.path.isfile(os.path.join(resume_from_checkpoint, "trainer_state.json")):
        raise UserError(
            f"--resume_from_checkpoint {resume_from_checkpoint} is no Trainer checkpoint (no trainer_state.json "
            "there): give a checkpoint-N folder of the output_dir, or latest."
        )
    return resume_from_checkpoint
