# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
r"""Object detection and instance segmentation: torchvision's Mask R-CNN on a CAE v2 encoder, trained with the
Trainer on the authors' COCO 1x recipe and scored with pycocotools, box AP and mask AP (docs/detection.md#mask-r-cnn).

    python run_instance_segmentation.py configs/demo-instance-segmentation.yaml      # offline demo, minutes on a CPU
    accelerate launch --num_processes 8 run_instance_segmentation.py configs/maskrcnn-vit-base-1x.yaml \
        --model outputs/caev2-vit-base/final --per_device_train_batch_size 4     # COCO in coco/, batch 32 as the paper
    python run_instance_segmentation.py configs/maskrcnn-vit-small-1x.yaml --model my-encoder \
        --train_image_dir data/train --train_annotation_file data/train.json --validation_image_dir data/val \
        --validation_annotation_file data/val.json --output_dir maskrcnn-mydata

Writes the detector (`model.safetensors` and a `config.json` that `load_mask_rcnn` reads), `results.json` (box AP and
mask AP: @[.5:.95], AP50, AP75, small / medium / large) and a model card whose model-index holds both.

An output_dir that holds another run (results.json, a model, checkpoint-N folders) is refused unless the run is
resumed (--resume_from_checkpoint latest: the folder's newest complete checkpoint-N) or started afresh with
--overwrite_output_dir true, which deletes that run first; one a live run holds (its lock, output_dir/.run.lock) is
refused always. Ctrl-C names the checkpoint the same command with --resume_from_checkpoint latest continues from.

The arguments, this script's and every option of transformers' `TrainingArguments`, are parsed once and handed to
`main`; `--help` lists this script's own options without importing torch (`caev2_hf_cli/instance_segmentation.py`
and the data options of `caev2_hf_cli/detection.py`).
"""

from caev2_hf_cli.detection import DetectionDataArguments, check_demo_encoder
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.instance_segmentation import MaskRCNNAugmentationArguments, MaskRCNNModelArguments
from caev2_hf_cli.outputs import OutputFolderArguments
from caev2_hf_cli.parsing import run_command
from caev2_hf_cli.trainer_arguments import build_training_arguments, read_trainer_arguments


SCRIPT_ARGUMENT_CLASSES = (MaskRCNNModelArguments, MaskRCNNAugmentationArguments, DetectionDataArguments)


TRAINING_ARGUMENTS_HELP = """\
Every option of transformers' TrainingArguments is accepted too, on the command line or in the YAML file:
--output_dir, --num_train_epochs, --max_steps, --learning_rate, --weight_decay, --warmup_steps (linear from
--warmup_start_factor), --per_device_train_batch_size, --bf16, --eval_strategy, --save_strategy,
--resume_from_checkpoint (a checkpoint-N folder, or latest), ... (`python -c "from transformers import
TrainingArguments; help(TrainingArguments)"`). --lr_scheduler_type is not read: the schedule is the recipe's steps."""


def parse_and_check_arguments(argv: list[str] | None = None) -> tuple:
    """(model, augmentation, data, output folder, training arguments) from one parse, every path and value checked
    before the model code is imported: this script's own first, then TrainingArguments' values and the output
    folder."""
    (model_args, augmentation_args, data_args), output_folder, values = read_trainer_arguments(
        argv, SCRIPT_ARGUMENT_CLASSES, __doc__, TRAINING_ARGUMENTS_HELP
    )
    check_demo_encoder(model_args.model, data_args.demo_data)  # first: model_args.check() would not name the demo
    model_args.check()
    data_args.check()
    training_args = build_training_arguments(values, output_folder)
    return model_args, augmentation_args, data_args, output_folder, training_args


if __name__ == "__main__":  # parsed and checked before the heavy imports below
    ARGUMENTS = run_command(parse_and_check_arguments)

import torch
from transformers import TrainingArguments, set_seed

from caev2_hf.evaluation.detection.coco import CocoSplit, check_instance_masks, open_detection_splits
from caev2_hf.evaluation.detection.maskrcnn import CAEv2MaskRCNN, is_mask_rcnn_folder, load_encoder, load_mask_rcnn
from caev2_hf.evaluation.detection.maskrcnn_training import (
    InstanceSegmentationDataset,
    MaskRCNNTrainer,
    build_maskrcnn_train_transform,
    collate_instances,
)
from caev2_hf.evaluation.detection.metrics import evaluate_coco, random_detections
from caev2_hf.evaluation.detection.outputs import mask_rcnn_summary_line, write_mask_rcnn_card, write_results
from caev2_hf.evaluation.trainer_steps import hold_output_dir
from caev2_hf.optim import build_layer_decay_optimizer


def open_splits(data_args: DetectionDataArguments, seed: int, write_demo: bool) -> tuple[CocoSplit, CocoSplit]:
    """The data's (training, held-out) splits, both with the same categories and a mask on every annotation."""
    train, validation = open_detection_splits(data_args, seed, write_demo)
    names = [[category["name"] for category in split.categories] for split in (train, validation)]
    if names[0] != names[1]:
        raise UserError(
            f"The held-out split's categories {names[1]} differ from the training split's {names[0]}: both splits "
            "need the same categories list."
        )
    for split, name in ((train, "the training data"), (validation, "the held-out data")):
        check_instance_masks(split, name)
    return train, validation


def build_model(model_args: MaskRCNNModelArguments, class_names: list[str]) -> tuple[CAEv2MaskRCNN, str]:
    """(detector, what its backbone started from): a new Mask R-CNN on a CAE v2 encoder, or a folder this script
    wrote, whose classes must be the data's."""
    if is_mask_rcnn_folder(model_args.model):
        model, folder_classes = load_mask_rcnn(model_args.model)
        if folder_classes != class_names:
            raise UserError(
                f"--model {model_args.model} detects {folder_classes}, the data has {class_names}: start from a CAE "
                "v2 encoder instead."
            )
        return model.train(), f"the Mask R-CNN folder {model_args.model}"
    try:
        encoder, report = load_encoder(
            model_args.model, model_args.drop_path_rate, model_args.relative_position_bias, model_args.out_indices,
            max(model_args.min_size),
        )  # fmt: skip
        model = CAEv2MaskRCNN(
            encoder, len(class_names) + 1, model_args.min_size, model_args.max_size, model_args.box_loss,
            model_args.fpn_channels, model_args.box_batch_size_per_image,
        )  # fmt: skip
    except (ValueError, TypeError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    print(report, flush=True)  # where each part's weights come from
    return model, model_args.model


def main(
    model_args: MaskRCNNModelArguments,
    augmentation_args: MaskRCNNAugmentationArguments,
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
            train, validation = open_splits(data_args, training_args.seed, training_args.local_process_index == 0)
        class_names = list(train.id2label.values())
        model, encoder = build_model(model_args, class_names)
        if training_args.world_size > 1 and training_args.device.type != "cpu":  # the authors' SyncBN (neck, box head)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # torch has none for CPU processes
        transform = build_maskrcnn_train_transform(
            augmentation_args.horizontal_flip_probability, augmentation_args.detr_crop_probability,
            augmentation_args.detr_crop_resize, augmentation_args.detr_crop_size, model.transform.max_size,
        )  # fmt: skip
        # As mmdetection's `filter_empty_gt`: training reads only images with annotations; evaluation reads them all.
        train_dataset = InstanceSegmentationDataset(train, transform, training_args.seed, only_annotated_images=True)
        optimizer = build_layer_decay_optimizer(
            model, training_args.learning_rate, training_args.weight_decay, model_args.layer_decay,
            model.encoder.config.num_hidden_layers, betas=(training_args.adam_beta1, training_args.adam_beta2),
            eps=training_args.adam_epsilon,
        )  # fmt: skip
        trainer = MaskRCNNTrainer(
            model=model, args=training_args, train_dataset=train_dataset,
            eval_dataset=InstanceSegmentationDataset(validation), data_collator=collate_instances,
            optimizers=(optimizer, None), eval_split=validation, class_names=class_names,
            lr_drop_epochs=model_args.lr_drop_epochs, lr_drop_factor=model_args.lr_drop_factor,
            warmup_start_factor=model_args.warmup_start_factor,
        )  # fmt: skip
        trainer.add_callback(interrupts)
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        metrics = trainer.evaluate()
        trainer.save_model()
        trainer.save_state()
        results = summarize(metrics, trainer, encoder, data_args, train, validation)
        if trainer.is_world_process_zero():
            write_results(training_args.output_dir, results)
            name = data_args.eval_result_name or data_args.source_name
            write_mask_rcnn_card(training_args.output_dir, encoder, name, results)
            print(mask_rcnn_summary_line(results, training_args.output_dir), flush=True)
        return results


def summarize(
    metrics: dict, trainer: MaskRCNNTrainer, encoder: str, data_args: DetectionDataArguments, train, validation
) -> dict:
    """results.json: box AP (`map`, `map_50`, ...) and mask AP (`segm_map`, ...), what was trained on what, and
    with `--random_baseline` the AP of random boxes whose masks are their boxes, a score that cannot have learned."""
    results = {name.removeprefix("eval_"): value for name, value in metrics.items() if "map" in name}
    results |= {
        "encoder": encoder, "data": data_args.source_name, "num_train_images": len(trainer.train_dataset),
        "num_train_images_without_annotations": len(train.examples) - len(trainer.train_dataset),
        "num_eval_images": len(validation.examples),
        "num_missing_images": train.num_missing_images + validation.num_missing_images,
        "max_steps": trainer.state.max_steps, "epochs": trainer.state.epoch,
    }  # fmt: skip
    if data_args.random_baseline:
        baseline = random_detections(validation.ground_truth, seed=0, with_masks=True)
        for iou_type, prefix in (("bbox", ""), ("segm", "segm_")):
            scores = evaluate_coco(validation.ground_truth, baseline, iou_type)
            results[f"random_baseline_{prefix}map"] = scores["map"]
            results[f"random_baseline_{prefix}map_50"] = scores["map_50"]
    return results


if __name__ == "__main__":
    run_command(main, *ARGUMENTS)
