# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""What the Trainer-based jobs (fine-tuning, semantic segmentation, LW-DETR and Mask R-CNN detection) share: the
length of a run in optimizer steps, and the run's hold on its output folder (the lock, a fresh start over another
run, Ctrl-C that stops the run and names the checkpoint to resume)."""

import contextlib
import math
import signal
import threading
from collections.abc import Iterator

from accelerate.utils import broadcast_object_list
from transformers import TrainerCallback, TrainingArguments

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


class InterruptAtNextStep(TrainerCallback):
    """Ctrl-C stops a Trainer run even when Python drops its KeyboardInterrupt.

    Python raises it wherever the main thread is when SIGINT arrives; raised inside a finaliser (an object's
    `__del__`, a weakref callback, as saving checkpoints runs many), it is printed as "Exception ignored" and training
    goes on. While `installed`, SIGINT is recorded before the usual KeyboardInterrupt is raised, and the next step (or
    evaluation step, or save) raises it again.
    """

    def __init__(self) -> None:
        self.interrupted = False

    def _on_sigint(self, signal_number, frame) -> None:
        self.interrupted = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator["InterruptAtNextStep"]:
        """SIGINT goes through this callback while the block runs, unless a handler other than Python's own is set
        (a caller's choice is kept) or this is not the main thread (signals cannot be handled there)."""
        if threading.current_thread() is not threading.main_thread() or (
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    def _raise_if_interrupted(self, *args, **kwargs) -> None:
        if self.interrupted:
            raise KeyboardInterrupt

    on_step_end = on_substep_end = on_prediction_step = on_save = on_evaluate = _raise_if_interrupted


@contextlib.contextmanager
def hold_output_dir(training_args: TrainingArguments, overwrite_output_dir: bool) -> Iterator[InterruptAtNextStep]:
    """A Trainer run's life in its output folder: the main process locks it (`caev2_hf.run_lock`; a folder a live run
    holds is refused on every process, before anything there is deleted), `start_in_output_dir` clears a previous
    run when overwriting, Ctrl-C names the checkpoint to resume, and the lock goes when the run ends. Yields the
    `InterruptAtNextStep` callback the run's Trainer takes (`trainer.add_callback`)."""
    is_main_process = training_args.process_index == 0
    lock = RunLock(training_args.output_dir) if is_main_process else None
    (refusal,) = broadcast_object_list([lock.try_acquire() if lock is not None else None])
    if refusal is not None:
        raise UserError(refusal)
    try:
        start_in_output_dir(training_args, overwrite_output_dir)
        interrupts = InterruptAtNextStep()
        with resume_hint_on_interrupt(training_args.output_dir, is_main_process), interrupts.installed():
            yield interrupts
    finally:
        if lock is not None:
            lock.release()
