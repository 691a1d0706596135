# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Fine-tune a pretrained CAE v2 encoder on image classification with the transformers Trainer (docs/method.md#recipes).

    python run_finetune.py configs/finetune-vit-base.yaml --model outputs/caev2-vit-base/final
    accelerate launch --num_processes 8 run_finetune.py configs/finetune-vit-base.yaml --learning_rate 1e-4
    python run_finetune.py --model my-encoder --train_dir data/train --validation_dir data/val --output_dir ft \
        --num_train_epochs 10 --mixup 0 --cutmix 0

Mixup / cutmix need timm (`pip install caev2_hf[timm]`). Writes the fine-tuned model (a
`CAEv2ForImageClassification` that `pipeline("image-classification")` runs) and `results.json` with top-1 / top-5.
"""

import json
import os
from dataclasses import dataclass, field

from transformers import Trainer, TrainingArguments, set_seed

from caev2_hf.cli import parse_arguments_with_config
from caev2_hf.evaluation.finetune import (
    build_finetune_trainer,
    build_finetune_transforms,
    build_training_streams,
    compute_max_steps,
    load_finetune_model,
)
from caev2_hf.evaluation.frozen_encoder import read_preprocessing
from caev2_hf.evaluation.labelled_data import ImageDataArguments, open_labelled_datasets


@dataclass
class FineTuningModelArguments:
    model: str = field(metadata={"help": "Hub id or folder of a CAE v2 checkpoint (any head) to fine-tune."})
    layer_decay: float = field(default=0.75, metadata={"help": "lr scale decay per block from the head down."})
    drop_path_rate: float = field(default=0.1, metadata={"help": "Stochastic depth at the last block."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Replace a checkpoint head whose class count differs from the dataset's."}
    )


@dataclass
class AugmentationArguments:
    rand_augment_magnitude: int = field(default=9, metadata={"help": "RandAugment magnitude out of 10; 0 = off."})
    random_erasing: float = field(default=0.25, metadata={"help": "Random erasing probability."})
    mixup: float = field(default=0.8, metadata={"help": "Mixup alpha (0 = off); needs timm."})
    cutmix: float = field(default=1.0, metadata={"help": "CutMix alpha (0 = off); needs timm."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing (inside the mixup targets)."})


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, augmentation_args, training_args = parse_arguments_with_config(
        (FineTuningModelArguments, ImageDataArguments, AugmentationArguments, TrainingArguments), argv
    )
    set_seed(training_args.seed)
    train_source, validation_source = data_args.data_sources()
    train_dataset, validation_dataset, num_examples, class_names = open_labelled_datasets(
        train_source, validation_source
    )
    model = load_finetune_model(
        model_args.model, class_names, model_args.drop_path_rate, model_args.ignore_mismatched_sizes
    )
    preprocessing = read_preprocessing(model, model_args.model)
    train_transform, eval_transform = build_finetune_transforms(
        preprocessing.image_size, preprocessing.resize_size, preprocessing.image_mean, preprocessing.image_std,
        augmentation_args.rand_augment_magnitude, augmentation_args.random_erasing,
    )  # fmt: skip
    if training_args.max_steps <= 0:  # a stream has no length: epochs become steps
        step_batch = training_args.train_batch_size * training_args.gradient_accumulation_steps
        training_args.max_steps = compute_max_steps(
            num_examples, training_args.num_train_epochs, step_batch * training_args.world_size
        )
    train_stream, eval_stream = build_training_streams(
        train_dataset, validation_dataset, train_transform, eval_transform, training_args.seed
    )
    trainer = build_finetune_trainer(
        model, training_args, train_stream, eval_stream, model_args.layer_decay, augmentation_args.mixup,
        augmentation_args.cutmix, augmentation_args.label_smoothing,
    )  # fmt: skip
    return train_and_evaluate(trainer, training_args, len(class_names), num_examples)


def train_and_evaluate(
    trainer: Trainer, training_args: TrainingArguments, num_classes: int, num_examples: int
) -> dict:
    """Trains (resuming if asked), evaluates, saves model and state; writes and returns `results.json`'s values."""
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.save_model()
    trainer.save_state()  # trainer_state.json: the logged losses and metrics
    results = {
        "top1_accuracy": metrics["eval_top1_accuracy"],
        "top5_accuracy": metrics["eval_top5_accuracy"],
        "eval_loss": metrics["eval_loss"],
        "num_classes": num_classes,
        "num_train_examples": num_examples,
        "max_steps": training_args.max_steps,
    }
    if trainer.is_world_process_zero():
        with open(os.path.join(training_args.output_dir, "results.json"), "w") as file:
            json.dump(results, file, indent=2)
    return results


if __name__ == "__main__":
    main()
