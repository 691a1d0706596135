# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""What the Trainer-based jobs (fine-tuning, segmentation, detection) share: the length of a run in optimizer steps,
and a fresh start in an output folder that held another run."""

import math

from transformers import TrainingArguments

from caev2_hf_cli.outputs import clear_previous_run


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


def start_in_output_dir(training_args: TrainingArguments, overwrite_output_dir: bool) -> None:
    """With `--overwrite_output_dir` and no resume, the previous run's results, model and checkpoints are deleted
    (by the main process, before the others go on), so nothing of it is taken for this run's, nor resumed."""
    if not overwrite_output_dir or training_args.resume_from_checkpoint:
        return
    with training_args.main_process_first(local=False, desc="clearing the output folder"):
        if training_args.process_index == 0:
            clear_previous_run(training_args.output_dir)
