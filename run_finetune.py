# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
r"""Fine-tune a pretrained CAE v2 encoder on image classification with the transformers Trainer (docs/method.md#recipes).

    python run_finetune.py configs/finetune-vit-base.yaml --model outputs/caev2-vit-base/final
    accelerate launch --num_processes 8 run_finetune.py configs/finetune-vit-base.yaml --learning_rate 1e-4
    python run_finetune.py --model my-encoder --train_dir data/train --validation_dir data/val --output_dir ft \
        --num_train_epochs 10 --mixup 0 --cutmix 0

Writes the fine-tuned model (a `CAEv2ForImageClassification` that `pipeline("image-classification")` runs) and
`results.json` with top-1 / top-5.
"""

from caev2_hf.cli import check_model_path, parse_arguments_with_config, parse_known_arguments_with_config, run_main
from caev2_hf.evaluation.arguments import AugmentationArguments, FineTuningModelArguments
from caev2_hf.evaluation.data_arguments import ImageDataArguments


TRAINING_ARGUMENTS_HELP = """\
Every option of transformers' TrainingArguments is accepted too, on the command line or in the YAML file:
--output_dir, --num_train_epochs, --learning_rate, --per_device_train_batch_size, --weight_decay, --warmup_ratio,
--bf16, --eval_strategy, --save_strategy, --resume_from_checkpoint, ... They are listed, with their defaults, at
https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments (or run
`python -c "from transformers import TrainingArguments; help(TrainingArguments)"`)."""


def parse_and_check_script_arguments(argv: list[str] | None = None) -> tuple:
    """This script's own arguments (not TrainingArguments, which imports torch), checked before anything heavy."""
    model_args, data_args, augmentation_args = parse_known_arguments_with_config(
        (FineTuningModelArguments, ImageDataArguments, AugmentationArguments), argv, __doc__, TRAINING_ARGUMENTS_HELP
    )
    check_model_path(model_args.model)
    data_args.check()
    return model_args, data_args, augmentation_args


if __name__ == "__main__":  # `--help` and a bad argument are answered here, before torch is imported
    run_main(parse_and_check_script_arguments)

from transformers import TrainingArguments, set_seed

from caev2_hf.evaluation.classification.finetune import (
    build_finetune_trainer,
    build_finetune_transforms,
    build_training_streams,
    format_finetune_summary,
    load_finetune_model,
    resolve_trainer_checkpoint,
    train_and_evaluate,
)
from caev2_hf.evaluation.classification.frozen_encoder import read_preprocessing
from caev2_hf.evaluation.classification.labelled_data import open_labelled_datasets
from caev2_hf.evaluation.trainer_steps import resolve_max_steps


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, augmentation_args, training_args = parse_arguments_with_config(
        (FineTuningModelArguments, ImageDataArguments, AugmentationArguments, TrainingArguments), argv
    )
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
    run_main(main)
