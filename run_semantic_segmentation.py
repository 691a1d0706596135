# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
r"""Semantic segmentation with UperNet on a CAE v2 backbone through the transformers Trainer (docs/segmentation.md).

    python run_semantic_segmentation.py configs/demo-segmentation.yaml          # offline demo, minutes on a CPU
    accelerate launch --num_processes 8 run_semantic_segmentation.py configs/segmentation-vit-base.yaml \
        --model outputs/caev2-vit-base/final
    python run_semantic_segmentation.py --model my-encoder --train_image_dir data/img/train \
        --train_annotation_dir data/ann/train --validation_image_dir data/img/val \
        --validation_annotation_dir data/ann/val --num_labels 21 --output_dir seg

Writes the UperNet model with its image processor (a folder that `pipeline("image-segmentation")` runs once
`caev2_hf` is imported) and `results.json` (mIoU, accuracies, per-class IoU); with --eval_result_name the mIoU also
goes into the folder's model card.

An output_dir that holds another run (results.json, a model, checkpoint-N folders) is refused unless the run is
resumed (--resume_from_checkpoint latest: the folder's newest complete checkpoint-N) or started afresh with
--overwrite_output_dir true, which deletes that run first; one a live run holds (its lock, output_dir/.run.lock) is
refused always. Ctrl-C names the checkpoint the same command with --resume_from_checkpoint latest continues from.

The arguments, this script's and every option of transformers' `TrainingArguments`, are parsed once and handed to
`main`; `--help` lists this script's own options without importing torch. A data source on the command line
replaces the YAML file's (`caev2_hf_cli/segmentation.py`).
"""

import os

from caev2_hf_cli.outputs import OutputFolderArguments
from caev2_hf_cli.parsing import run_command
from caev2_hf_cli.segmentation import SegmentationDataArguments, SegmentationModelArguments
from caev2_hf_cli.trainer_arguments import build_training_arguments, read_trainer_arguments


SCRIPT_ARGUMENT_CLASSES = (SegmentationModelArguments, SegmentationDataArguments)


TRAINING_ARGUMENTS_HELP = """\
Every option of transformers' TrainingArguments is accepted too, on the command line or in the YAML file:
--output_dir, --max_steps, --learning_rate, --per_device_train_batch_size, --weight_decay, --warmup_steps, --bf16,
--eval_strategy, --save_strategy, --resume_from_checkpoint, ... (`python -c "from transformers import
TrainingArguments; help(TrainingArguments)"`)."""


def parse_and_check_arguments(argv: list[str] | None = None) -> tuple:
    """(model, data, output folder, training arguments) from one parse, checked before the model or data are loaded:
    this script's own first, then TrainingArguments' values and the output folder."""
    (model_args, data_args), output_folder, values = read_trainer_arguments(
        argv, SCRIPT_ARGUMENT_CLASSES, __doc__, TRAINING_ARGUMENTS_HELP
    )
    model_args.check()
    data_args.check()
    return model_args, data_args, output_folder, build_training_arguments(values, output_folder)


if __name__ == "__main__":  # parsed and checked before the heavy imports below
    ARGUMENTS = run_command(parse_and_check_arguments)

import numpy as np
import torch
from transformers import TrainingArguments, set_seed

from caev2_hf.evaluation.segmentation.data import (
    SegmentationDataset,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    collate_segmentation_batch,
    open_segmentation_splits,
)
from caev2_hf.evaluation.segmentation.metrics import MeanIoUAccumulator
from caev2_hf.evaluation.segmentation.model import (
    add_classifier_dropout,
    build_random_encoder_config,
    build_segmentation_image_processor,
    load_segmentation_model,
)
from caev2_hf.evaluation.segmentation.trainer import SegmentationTrainer, build_poly_schedule
from caev2_hf.evaluation.trainer_steps import hold_output_dir, resolve_max_steps
from caev2_hf.files import write_json
from caev2_hf.hub.model_card import add_eval_results, build_eval_results
from caev2_hf.optim import build_layer_decay_optimizer


def main(
    model_args: SegmentationModelArguments,
    data_args: SegmentationDataArguments,
    output_folder: OutputFolderArguments,
    training_args: TrainingArguments,
) -> dict:
    """Trains and evaluates on arguments from `parse_and_check_arguments`, holding the output folder throughout;
    returns what results.json holds."""
    if model_args.torch_num_threads is not None:
        torch.set_num_threads(model_args.torch_num_threads)
    with hold_output_dir(training_args, output_folder.overwrite_output_dir) as interrupts:
        set_seed(training_args.seed)
        model_source = model_args.resolve_model()
        random_config = None
        if model_source is None:
            random_config = build_random_encoder_config(model_args.model_preset, model_args.config_overrides)
        model, encoder_source = load_segmentation_model(
            model_source, data_args.num_labels, data_args.id2label, data_args.crop_size, model_args.drop_path_rate,
            model_args.out_indices, model_args.decoder_channels, model_args.auxiliary_channels,
            model_args.auxiliary_loss_weight, model_args.relative_position_bias, model_args.position_table,
            data_args.ignore_index, random_config,
        )  # fmt: skip
        if model_args.model is not None and model_source is None:
            encoder_source = f"{model_args.model} not found. {encoder_source}"
        print(encoder_source, flush=True)
        add_classifier_dropout(model, model_args.classifier_dropout)
        if training_args.world_size > 1:  # the authors' SyncBN in the neck and heads
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

        train_rows, eval_rows = open_segmentation_splits(data_args, training_args.seed)
        backbone_config = model.config.backbone_config
        train_dataset = SegmentationDataset(
            train_rows,
            SegmentationTrainTransform(
                data_args.crop_size, data_args.resize_scale, data_args.ratio_range, backbone_config.image_mean,
                backbone_config.image_std, data_args.cat_max_ratio, True, data_args.photometric_distortion,
                data_args.reduce_labels, data_args.ignore_index,
            ),
        )  # fmt: skip
        eval_dataset = SegmentationDataset(
            eval_rows,
            SegmentationEvalTransform(
                data_args.resize_scale, backbone_config.image_mean, backbone_config.image_std, data_args.reduce_labels,
                data_args.ignore_index,
            ),
        )  # fmt: skip
        training_args.max_steps = resolve_max_steps(training_args, len(train_dataset))
        training_args.batch_eval_metrics = True  # confusion matrices summed batch by batch
        # The authors' groups (docs/segmentation.md): unlike fine-tuning's, [CLS] and the bias tables decay too.
        optimizer = build_layer_decay_optimizer(
            model, training_args.learning_rate, training_args.weight_decay, model_args.layer_decay,
            backbone_config.num_hidden_layers, betas=(training_args.adam_beta1, training_args.adam_beta2),
            eps=training_args.adam_epsilon,
        )  # fmt: skip
        scheduler = build_poly_schedule(
            optimizer, training_args.get_warmup_steps(training_args.max_steps), training_args.max_steps
        )
        metrics = MeanIoUAccumulator(data_args.num_labels, data_args.ignore_index)
        trainer = SegmentationTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=collate_segmentation_batch,
            processing_class=build_segmentation_image_processor(model, data_args.crop_size, data_args.reduce_labels),
            optimizers=(optimizer, scheduler),
            compute_metrics=metrics,
            num_labels=data_args.num_labels,
            crop_size=data_args.crop_size,
            eval_stride=data_args.eval_stride,
            eval_mode=data_args.eval_mode,
            loss_normalization=model_args.loss_normalization,
            ignore_index=data_args.ignore_index,
        )
        trainer.add_callback(interrupts)
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.evaluate()
        trainer.save_model()
        trainer.save_state()
        results = summarize_results(
            metrics.last_result, data_args, training_args, encoder_source, len(train_dataset), len(eval_dataset)
        )
        if trainer.is_world_process_zero():
            write_json(os.path.join(training_args.output_dir, "results.json"), results, indent=2)
            if data_args.eval_result_name:
                entries = build_eval_results(
                    {data_args.eval_result_name: round(100 * results["mean_iou"], 2)}, None, None
                )
                add_eval_results(training_args.output_dir, entries)
        print(
            f"mIoU {100 * results['mean_iou']:.2f} on {results['num_eval_images']} images "
            f"(pixel accuracy {100 * results['overall_accuracy']:.2f}); model and results.json in "
            f"{training_args.output_dir}",
            flush=True,
        )
        return results


def summarize_results(
    result: dict,
    data_args: SegmentationDataArguments,
    training_args: TrainingArguments,
    encoder: str,
    num_train: int,
    num_eval: int,
) -> dict:
    """results.json: the mean scores, IoU per class (null for a class absent from both predictions and masks)."""
    names = data_args.id2label
    per_class = {
        names[index]: (None if np.isnan(value) else float(value))
        for index, value in enumerate(result["per_category_iou"])
    }
    return {
        "mean_iou": result["mean_iou"],
        "mean_accuracy": result["mean_accuracy"],
        "overall_accuracy": result["overall_accuracy"],
        "per_category_iou": per_class,
        "num_labels": data_args.num_labels,
        "num_eval_images": num_eval,
        "num_train_images": num_train,
        "max_steps": training_args.max_steps,
        "encoder": encoder,
    }


if __name__ == "__main__":
    run_command(main, *ARGUMENTS)
