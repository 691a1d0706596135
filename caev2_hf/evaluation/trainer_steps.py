# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""What the Trainer-based jobs (fine-tuning, segmentation) share: the length of a run in optimizer steps."""

import math

from transformers import TrainingArguments


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
