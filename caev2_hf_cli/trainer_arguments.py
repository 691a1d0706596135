# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""The transformers `TrainingArguments` of the Trainer scripts (`run_finetune.py`, `run_semantic_segmentation.py`,
`run_object_detection.py`, `run_instance_segmentation.py`): read in the same parse as the script's own arguments,
their values checked before the class is built (it accepts a batch size of 0 or a negative learning rate, and the run
then fails with a traceback or trains on nonsense; it refuses bf16 without a GPU in a line that names no flag), and
the output folder checked after."""

import dataclasses
import sys

from .checks import check_positive
from .errors import UserError
from .outputs import OutputFolderArguments, check_output_dir, resolve_resume_checkpoint
from .parsing import answer_help, build_arguments, read_arguments


def read_trainer_arguments(
    argv: list[str] | None, script_classes: tuple, description: str, epilog: str
) -> tuple[tuple, OutputFolderArguments, dict]:
    """(the script's own argument instances, the output-folder arguments, every value by name) from one parse.

    `--help` is answered first, from the script's classes: importing TrainingArguments imports torch (about 2 s),
    so a request for help or a bad value of the script's own never waits for it."""
    argv = sys.argv[1:] if argv is None else argv
    own_classes = (*script_classes, OutputFolderArguments)
    answer_help(argv, own_classes, description, epilog)
    from transformers import TrainingArguments  # after the help, which must not wait for torch

    values = read_arguments((*own_classes, TrainingArguments), argv, description)
    instances = tuple(build_arguments(cls, values) for cls in own_classes)
    return instances[:-1], instances[-1], values


def build_training_arguments(values: dict, output_folder: OutputFolderArguments):
    """`TrainingArguments` from `read_trainer_arguments`' values, each checked first; then the output folder, which
    must not hold another run unless resuming or overwriting, and the checkpoint to resume from (`latest` becomes
    the newest complete checkpoint-N of output_dir). Raises `UserError`."""
    from transformers import TrainingArguments

    effective = effective_values(TrainingArguments, values)
    check_training_values(effective)
    check_bf16_support(effective)
    try:
        training_args = build_arguments(TrainingArguments, values)
    except ValueError as error:  # TrainingArguments' own checks (strategies, precision on this machine, ...)
        raise UserError(str(error).strip().splitlines()[0]) from None
    check_output_dir(
        training_args.output_dir, output_folder.overwrite_output_dir, training_args.resume_from_checkpoint
    )
    training_args.resume_from_checkpoint = resolve_resume_checkpoint(
        training_args.resume_from_checkpoint, training_args.output_dir
    )
    return training_args


def effective_values(cls: type, values: dict) -> dict:
    """The value each field of `cls` will have: the given one, else its default."""
    defaults = {item.name: item.default for item in dataclasses.fields(cls) if item.default is not dataclasses.MISSING}
    return {**defaults, **{name: value for name, value in values.items() if name in defaults}}


def check_training_values(values: dict) -> None:
    """Refuses TrainingArguments values no run can use, naming the flag and the range."""
    check_positive(
        per_device_train_batch_size=values["per_device_train_batch_size"],
        per_device_eval_batch_size=values["per_device_eval_batch_size"],
        gradient_accumulation_steps=values["gradient_accumulation_steps"],
        learning_rate=values["learning_rate"],
        adam_epsilon=values["adam_epsilon"],
        logging_steps=values["logging_steps"],
        save_steps=values["save_steps"],
        eval_steps=values["eval_steps"],
        save_total_limit=values["save_total_limit"],
        eval_accumulation_steps=values["eval_accumulation_steps"],
    )
    max_steps, epochs, warmup = values["max_steps"], values["num_train_epochs"], values["warmup_steps"]
    if max_steps == 0 or max_steps < -1:
        raise UserError(f"--max_steps {max_steps}: give the number of optimizer steps (1 or more), or leave it unset.")
    if max_steps == -1 and not epochs > 0:
        raise UserError(f"--num_train_epochs {epochs}: must be greater than 0 (or give --max_steps N).")
    if warmup < 0:
        raise UserError(f"--warmup_steps {warmup:g}: give 0 or more steps, or a fraction of the run below 1 (0.05).")
    for name in ("weight_decay", "max_grad_norm", "dataloader_num_workers"):
        if values[name] < 0:
            raise UserError(f"--{name} {values[name]}: must be 0 or more.")
    for name in ("adam_beta1", "adam_beta2", "label_smoothing_factor"):
        if not 0 <= values[name] < 1:
            raise UserError(f"--{name} {values[name]}: must lie in [0, 1).")


def check_bf16_support(values: dict) -> None:
    """Refuses `--bf16 true` (or `--bf16_full_eval`) where nothing computes in bfloat16, as TrainingArguments does
    (the COCO recipes set it for their GPUs), but naming the flag and the way out."""
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_cuda_available, is_torch_xla_available

    asked = [name for name in ("bf16", "bf16_full_eval") if values[name]]
    if not asked or values["use_cpu"] or is_torch_bf16_gpu_available() or is_torch_xla_available():
        return
    cuda = is_torch_cuda_available()
    machine = (
        "this machine's GPU does not compute in bfloat16 (Ampere or newer does)" if cuda else "this machine has no GPU"
    )
    raise UserError(
        f"--{asked[0]} true: {machine}. Give --{asked[0]} false to run in float32, or --use_cpu true for bfloat16 on "
        "the CPU."
    )
