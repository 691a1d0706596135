# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
r"""Object detection: transformers' LW-DETR with its ViT initialised from a CAE v2 encoder, trained with the Trainer
on COCO-format data and scored with pycocotools (docs/detection.md#lw-detr).

    python run_object_detection.py configs/demo-detection.yaml             # offline demo, minutes on a CPU
    accelerate launch --num_processes 8 run_object_detection.py configs/detection-lwdetr-small.yaml \
        --model outputs/caev2-vit-tiny/final --train_image_dir coco/train2017 \
        --train_annotation_file coco/annotations/instances_train2017.json --validation_image_dir coco/val2017 \
        --validation_annotation_file coco/annotations/instances_val2017.json --output_dir lwdetr-small-coco
    python run_object_detection.py configs/detection-lwdetr-small.yaml --model my-encoder \
        --dataset_name cppe-5 --output_dir lwdetr-cppe5

Writes the detector with its image processor (a folder `pipeline("object-detection")` runs), `results.json`
(mAP@[.5:.95], AP50, AP75, AP small / medium / large) and a model card whose model-index holds the mAP.

An output_dir that holds another run (results.json, a model, checkpoint-N folders) is refused unless the run is
resumed (--resume_from_checkpoint latest: the folder's newest complete checkpoint-N) or started afresh with
--overwrite_output_dir true, which deletes that run first; one a live run holds (its lock, output_dir/.run.lock) is
refused always. Ctrl-C names the checkpoint the same command with --resume_from_checkpoint latest continues from.

The arguments, this script's and every option of transformers' `TrainingArguments`, are parsed once and handed to
`main`; `--help` lists this script's own options without importing torch (`caev2_hf_cli/detection.py`).
"""

import json
import os

from caev2_hf_cli.detection import DetectionDataArguments, DetectionModelArguments, check_demo_encoder
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.outputs import OutputFolderArguments
from caev2_hf_cli.parsing import run_command
from caev2_hf_cli.trainer_arguments import build_training_arguments, read_trainer_arguments


SCRIPT_ARGUMENT_CLASSES = (DetectionModelArguments, DetectionDataArguments)


TRAINING_ARGUMENTS_HELP = """\
Every option of transformers' TrainingArguments is accepted too, on the command line or in the YAML file:
--output_dir, --num_train_epochs, --max_steps, --learning_rate (the projector's and decoder's), --weight_decay,
--per_device_train_batch_size, --max_grad_norm, --bf16, --eval_strategy, --save_strategy, --resume_from_checkpoint
(a checkpoint-N folder, or latest), ... (`python -c "from transformers import TrainingArguments;
help(TrainingArguments)"`)."""


def parse_and_check_arguments(argv: list[str] | None = None) -> tuple:
    """(model, data, output folder, training arguments) from one parse, every path and value checked before the
    model code is imported: this script's own first, then TrainingArguments' values and the output folder."""
    (model_args, data_args), output_folder, values = read_trainer_arguments(
        argv, SCRIPT_ARGUMENT_CLASSES, __doc__, TRAINING_ARGUMENTS_HELP
    )
    check_demo_encoder(model_args.model, data_args.demo_data)  # first: model_args.check() would not name the demo
    model_args.check()
    data_args.check()
    return model_args, data_args, output_folder, build_training_arguments(values, output_folder)


if __name__ == "__main__":  # parsed and checked before the heavy imports below
    ARGUMENTS = run_command(parse_and_check_arguments)

import torch
from transformers import AutoImageProcessor, LwDetrForObjectDetection, TrainingArguments, set_seed

from caev2_hf.evaluation.detection.coco import CocoSplit, open_detection_splits
from caev2_hf.evaluation.detection.lwdetr import (
    build_lwdetr_from_caev2,
    build_lwdetr_image_processor,
)
from caev2_hf.evaluation.detection.metrics import evaluate_coco, random_detections
from caev2_hf.evaluation.detection.outputs import summary_line, write_detection_card, write_results
from caev2_hf.evaluation.detection.training import (
    DetectionCollator,
    DetectionDataset,
    DetrCocoMetrics,
    LwDetrTrainer,
    build_lwdetr_parameter_groups,
    build_train_transform,
)
from caev2_hf.evaluation.trainer_steps import hold_output_dir, resolve_max_steps


def build_model(model_args: DetectionModelArguments, train: CocoSplit, validation: CocoSplit):
    """(model, image processor, what the ViT started from): LW-DETR around a CAE v2 encoder, or a folder this script
    wrote, whose classes must be the data's."""
    if [category["name"] for category in validation.categories] != [c["name"] for c in train.categories]:
        raise UserError(
            f"The held-out split's categories {[c['name'] for c in validation.categories]} differ from the training "
            f"split's {[c['name'] for c in train.categories]}: both splits need the same categories list."
        )
    if is_lwdetr_folder(model_args.model):
        model = LwDetrForObjectDetection.from_pretrained(model_args.model)
        if model.config.id2label != train.id2label:
            raise UserError(
                f"--model {model_args.model} detects {list(model.config.id2label.values())}, the data has "
                f"{list(train.id2label.values())}: start from a CAE v2 encoder instead."
            )
        return model, AutoImageProcessor.from_pretrained(model_args.model), f"the LW-DETR folder {model_args.model}"
    try:
        model, report = build_lwdetr_from_caev2(
            model_args.model, model_args.lwdetr_size, train.id2label, model_args.image_size,
            model_args.backbone_overrides, **(model_args.config_overrides or {}),
        )  # fmt: skip
    except (ValueError, TypeError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    print(report.summary(), flush=True)
    return model, build_lwdetr_image_processor(report.encoder_config, model_args.image_size), model_args.model


def is_lwdetr_folder(model: str) -> bool:
    path = os.path.join(model, "config.json")
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as file:
        return json.load(file).get("model_type") == "lw_detr"


def main(
    model_args: DetectionModelArguments,
    data_args: DetectionDataArguments,
    output_folder: OutputFolderArguments,
    training_args: TrainingArguments,
) -> dict:
    """Trains and evaluates on arguments from `parse_and_check_arguments`, holding the output folder throughout;
    returns what results.json holds."""
    if model_args.torch_num_threads is not None:
        torch.set_num_threads(model_args.torch_num_threads)
    with hold_output_dir(training_args, output_folder.overwrite_output_dir) as interrupts:
        set_seed(training_args.seed)
        with training_args.main_process_first(desc="writing the demo data"):  # one writer a node, then the others
            train, validation = open_detection_splits(
                data_args, training_args.seed, write_demo=training_args.local_process_index == 0
            )
        model, processor, encoder = build_model(model_args, train, validation)
        vit = model.config.backbone_config
        train_dataset = DetectionDataset(
            train,
            build_train_transform(model_args.image_size, vit.patch_size * vit.num_windows_side),
            training_args.seed,
        )
        eval_dataset = DetectionDataset(validation)
        training_args.max_steps = resolve_max_steps(training_args, len(train_dataset))
        training_args.batch_eval_metrics = True  # detections gathered batch by batch, scored once
        groups = build_lwdetr_parameter_groups(
            model, training_args.learning_rate, model_args.encoder_learning_rate, training_args.weight_decay,
            model_args.layer_decay, model_args.component_decay,
        )  # fmt: skip
        optimizer = torch.optim.AdamW(
            groups, betas=(training_args.adam_beta1, training_args.adam_beta2), eps=training_args.adam_epsilon
        )
        trainer = LwDetrTrainer(
            model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
            data_collator=DetectionCollator(processor), processing_class=processor, optimizers=(optimizer, None),
            compute_metrics=DetrCocoMetrics(processor, validation, model_args.top_k), ema_decay=model_args.ema_decay,
        )  # fmt: skip
        trainer.add_callback(interrupts)
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        metrics = trainer.evaluate()  # with the weight average when there is one
        with trainer.ema_weights():
            trainer.save_model()  # the averaged weights, as the authors report and release them
        trainer.save_state()
        results = {name.removeprefix("eval_"): value for name, value in metrics.items() if name.startswith("eval_map")}
        results |= {
            "lwdetr_size": model_args.lwdetr_size, "encoder": encoder, "data": data_args.source_name,
            "num_train_images": len(train_dataset), "num_eval_images": len(eval_dataset),
            "num_missing_images": train.num_missing_images + validation.num_missing_images,
            "max_steps": training_args.max_steps, "ema_decay": model_args.ema_decay,
        }  # fmt: skip
        if data_args.random_baseline:
            baseline = evaluate_coco(validation.ground_truth, random_detections(validation.ground_truth, seed=0))
            results["random_baseline_map"], results["random_baseline_map_50"] = baseline["map"], baseline["map_50"]
        if trainer.is_world_process_zero():
            write_results(training_args.output_dir, results)
            name = data_args.eval_result_name or data_args.source_name
            write_detection_card(training_args.output_dir, model_args.lwdetr_size, encoder, name, results)
        print(summary_line(results, training_args.output_dir), flush=True)
        return results


if __name__ == "__main__":
    run_command(main, *ARGUMENTS)
