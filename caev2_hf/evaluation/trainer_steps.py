# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""What the Trainer-based jobs (fine-tuning, semantic segmentation, LW-DETR and Mask R-CNN detection) share: the
length of a run in optimizer steps, and the run's hold on its output folder (the lock, a fresh start over another
run, the resume hint on Ctrl-C)."""

import contextlib
import math
from collections.abc import Iterator

from accelerate.utils import broadcast_object_list
from transformers import TrainingArguments

from caev2_hf_cli.errors import UserError
from caev2_hf_cli.outputs import clear_previous_run, resume_hint_on_interrupt

from ..run_lock import RunLock


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


@contextlib.contextmanager
def hold_output_dir(training_args: TrainingArguments, overwrite_output_dir: bool) -> Iterator[None]:
    """A Trainer run's life in its output folder: the main process locks it (`caev2_hf.run_lock`; a folder a live run
    holds is refused on every process, before anything there is deleted), `start_in_output_dir` clears a previous
    run when overwriting, Ctrl-C names the checkpoint to resume, and the lock goes when the run ends."""
    is_main_process = training_args.process_index == 0
    lock = RunLock(training_args.output_dir) if is_main_process else None
    (refusal,) = broadcast_object_list([lock.try_acquire() if lock is not None else None])
    if refusal is not None:
        raise UserError(refusal)
    try:
        start_in_output_dir(training_args, overwrite_output_dir)
        with resume_hint_on_interrupt(training_args.output_dir, is_main_process):
            yield
    finally:
        if lock is not None:
            lock.release()
