# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
r"""Fine-tune a pretrained CAE v2 encoder on image classification with the transformers Trainer (docs/method.md#recipes).

    python run_finetune.py configs/finetune-vit-base.yaml --model outputs/caev2-vit-base/final
    accelerate launch --num_processes 8 run_finetune.py configs/finetune-vit-base.yaml --learning_rate 1e-4
    python run_finetune.py configs/finetune-small-images.yaml --model my-encoder --train_dir data/train \
        --validation_dir data/val --output_dir ft   # small images / small data: the ImageNet recipe, lightened

Writes the fine-tuned model (a `CAEv2ForImageClassification` that `pipeline("image-classification")` runs) and
`results.json` with top-1 / top-5.

The defaults are the ImageNet recipe's (crops down to 8 % of an image, RandAugment, erasing, mixup / cutmix). On images
much smaller than the model's input they leave fine-tuning near chance, so the run warns; the small-images config
lightens them (benchmarks/bench_finetune_small_images.py measures both).

An output_dir that holds another run (results.json, a model, checkpoint-N folders) is refused unless the run is
resumed (--resume_from_checkpoint latest: the folder's newest complete checkpoint-N) or started afresh with
--overwrite_output_dir true, which deletes that run first; one a live run holds (its lock, output_dir/.run.lock) is
refused always. Ctrl-C names the checkpoint the same command with --resume_from_checkpoint latest continues from.

The arguments, this script's and every option of transformers' `TrainingArguments`, are parsed once and handed to
`main`; `--help` lists this script's own options without importing torch. A data source on the command line
replaces the YAML file's for its split (`caev2_hf_cli/classification.py`).
"""

from caev2_hf_cli.checks import check_encoder_folder, check_model_path
from caev2_hf_cli.classification import AugmentationArguments, FineTuningModelArguments, ImageDataArguments
from caev2_hf_cli.outputs import OutputFolderArguments
from caev2_hf_cli.parsing import run_command
from caev2_hf_cli.trainer_arguments import build_training_arguments, read_trainer_arguments


SCRIPT_ARGUMENT_CLASSES = (FineTuningModelArguments, ImageDataArguments, AugmentationArguments)


TRAINING_ARGUMENTS_HELP = """\
Every option of transformers' TrainingArguments is accepted too, on the command line or in the YAML file:
--output_dir, --num_train_epochs, --learning_rate, --per_device_train_batch_size, --weight_decay, --warmup_steps,
--bf16, --eval_strategy, --save_strategy, --resume_from_checkpoint, ... They are listed, with their defaults, at
https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments (or run
`python -c "from transformers import TrainingArguments; help(TrainingArguments)"`)."""


def parse_and_check_arguments(argv: list[str] | None = None) -> tuple:
    """(model, data, augmentation, output folder, training arguments) from one parse, checked before the model or
    data are loaded: this script's own first, then TrainingArguments' values and the output folder."""
    (model_args, data_args, augmentation_args), output_folder, values = read_trainer_arguments(
        argv, SCRIPT_ARGUMENT_CLASSES, __doc__, TRAINING_ARGUMENTS_HELP
    )
    check_model_path(model_args.model)
    check_encoder_folder(model_args.model, caev2_only=True)
    data_args.check()
    training_args = build_training_arguments(values, output_folder)
    return model_args, data_args, augmentation_args, output_folder, training_args


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
    warn_if_images_are_small,
)
from caev2_hf.evaluation.classification.frozen_encoder import read_preprocessing
from caev2_hf.evaluation.classification.labelled_data import open_labelled_datasets
from caev2_hf.evaluation.trainer_steps import hold_output_dir, resolve_max_steps


def main(
    model_args: FineTuningModelArguments,
    data_args: ImageDataArguments,
    augmentation_args: AugmentationArguments,
    output_folder: OutputFolderArguments,
    training_args: TrainingArguments,
) -> dict:
    """Fine-tunes on arguments from `parse_and_check_arguments`, holding the output folder throughout; returns what
    results.json holds."""
    with hold_output_dir(training_args, output_folder.overwrite_output_dir) as interrupts:
        set_seed(training_args.seed)
        train_source, validation_source = data_args.data_sources()
        train_dataset, validation_dataset, num_examples, class_names = open_labelled_datasets(
            train_source, validation_source
        )
        model = load_finetune_model(model_args, class_names)
        preprocessing = read_preprocessing(model, model_args.model)
        if training_args.process_index == 0:
            warn_if_images_are_small(train_dataset, preprocessing.image_size, augmentation_args)
        train_transform, eval_transform = build_finetune_transforms(preprocessing, augmentation_args)
        training_args.max_steps = resolve_max_steps(training_args, num_examples)  # a stream has no length
        train_stream, eval_stream = build_training_streams(
            train_dataset, validation_dataset, train_transform, eval_transform, training_args.seed
        )
        trainer = build_finetune_trainer(
            model, training_args, train_stream, eval_stream, model_args.layer_decay, augmentation_args
        )
        trainer.add_callback(interrupts)
        result = train_and_evaluate(trainer, len(class_names), num_examples)
    if trainer.is_world_process_zero():
        print(format_finetune_summary(result, model_args.model, training_args.output_dir))
    return result.to_json()


if __name__ == "__main__":
    run_command(main, *ARGUMENTS)
