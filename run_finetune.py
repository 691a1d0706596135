# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
r"""Fine-tune a pretrained CAE v2 encoder on image classification with the transformers Trainer (docs/method.md#recipes).

    python run_finetune.py configs/finetune-vit-base.yaml --model outputs/caev2-vit-base/final
    accelerate launch --num_processes 8 run_finetune.py configs/finetune-vit-base.yaml --learning_rate 1e-4
    python run_finetune.py --model my-encoder --train_dir data/train --validation_dir data/val --output_dir ft \
        --num_train_epochs 10 --mixup 0 --cutmix 0

Writes the fine-tuned model (a `CAEv2ForImageClassification` that `pipeline("image-classification")` runs) and
`results.json` with top-1 / top-5.

The arguments, this script's and every option of transformers' `TrainingArguments`, are parsed once and handed to
`main`; `--help` lists this script's own options without importing torch. A data source on the command line
replaces the YAML file's for its split (`caev2_hf_cli/classification.py`).
"""

import sys

from caev2_hf_cli.checks import check_model_path
from caev2_hf_cli.classification import AugmentationArguments, FineTuningModelArguments, ImageDataArguments
from caev2_hf_cli.parsing import answer_help, build_arguments, read_arguments, run_command


SCRIPT_ARGUMENT_CLASSES = (FineTuningModelArguments, ImageDataArguments, AugmentationArguments)


TRAINING_ARGUMENTS_HELP = """\
Every option of transformers' TrainingArguments is accepted too, on the command line or in the YAML file:
--output_dir, --num_train_epochs, --learning_rate, --per_device_train_batch_size, --weight_decay, --warmup_ratio,
--bf16, --eval_strategy, --save_strategy, --resume_from_checkpoint, ... They are listed, with their defaults, at
https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments (or run
`python -c "from transformers import TrainingArguments; help(TrainingArguments)"`)."""


def parse_and_check_arguments(argv: list[str] | None = None) -> tuple:
    """(model, data, augmentation, training arguments) from one parse, checked before the model or data are loaded.
    `--help` is answered first, from this script's own classes: importing TrainingArguments imports torch (about
    2 s), and building it transformers' integrations (2 s more), so this script's own arguments are checked first."""
    argv = sys.argv[1:] if argv is None else argv
    answer_help(argv, SCRIPT_ARGUMENT_CLASSES, __doc__, TRAINING_ARGUMENTS_HELP)
    from transformers import TrainingArguments  # after the help, which must not wait for torch

    values = read_arguments((*SCRIPT_ARGUMENT_CLASSES, TrainingArguments), argv, __doc__)
    model_args, data_args, augmentation_args = (build_arguments(cls, values) for cls in SCRIPT_ARGUMENT_CLASSES)
    check_model_path(model_args.model)
    data_args.check()
    return model_args, data_args, augmentation_args, build_arguments(TrainingArguments, values)


if __name__ == "__main__":  # parsed and checked before the heavy imports below
    ARGUMENTS = run_command(parse_and_check_arguments)

from transformers import TrainingArguments, set_seed

from caev2_hf.evaluation.classification.finetune import (
    build_finetune_trainer,
    build_finetune_transforms,
    build_training_streams,
    format_finetune_summary,
    load_finetune_model,
    train_and_evaluate,
)
from caev2_hf.evaluation.classification.frozen_encoder import read_preprocessing
from caev2_hf.evaluation.classification.labelled_data import open_labelled_datasets
from caev2_hf.evaluation.trainer_steps import resolve_max_steps, resolve_trainer_checkpoint


def main(
    model_args: FineTuningModelArguments,
    data_args: ImageDataArguments,
    augmentation_args: AugmentationArguments,
    training_args: TrainingArguments,
) -> dict:
    """Fine-tunes on arguments from `parse_and_check_arguments`; returns what results.json holds."""
    training_args.resume_from_checkpoint = resolve_trainer_checkpoint(
        training_args.resume_from_checkpoint, training_args.output_dir
    )
    set_seed(training_args.seed)
    train_source, validation_source = data_args.data_sources()
    train_dataset, validation_dataset, num_examples, class_names = open_labelled_datasets(
        train_source, validation_source
    )
    model = load_finetune_model(model_args, class_names)
    preprocessing = read_preprocessing(model, model_args.model)
    train_transform, eval_transform = build_finetune_transforms(preprocessing, augmentation_args)
    training_args.max_steps = resolve_max_steps(training_args, num_examples)  # a stream has no length
    train_stream, eval_stream = build_training_streams(
        train_dataset, validation_dataset, train_transform, eval_transform, training_args.seed
    )
    trainer = build_finetune_trainer(
        model, training_args, train_stream, eval_stream, model_args.layer_decay, augmentation_args
    )
    result = train_and_evaluate(trainer, len(class_names), num_examples)
    if trainer.is_world_process_zero():
        print(format_finetune_summary(result, model_args.model, training_args.output_dir))
    return result.to_json()


if __name__ == "__main__":
    run_command(main, *ARGUMENTS)
