# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Training `CAEv2MaskRCNN` with the transformers `Trainer` on the authors' 1x recipe (docs/detection.md#mask-r-cnn):
their augmentation in torchvision v2 before the model's own multi-scale resize, the step schedule counted in the
Trainer's epochs, box and mask AP from pycocotools while evaluating, and detector folders that reload."""

import torch
from accelerate.utils import gather_object
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvF
from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput

from .coco import CocoSplit
from .maskrcnn import build_step_schedule, write_mask_rcnn_config
from .metrics import CocoEvaluator, instances_to_coco
from .training import DetectionDataset, EpochCallback, RandomSizeCrop, readable_examples


def build_maskrcnn_train_transform(
    flip_probability: float, crop_probability: float, crop_short_sides: list[int], crop_sides: list[int], max_size: int
) -> v2.Compose:
    """The authors' pipeline up to their final resize, which the model's transform does (`min_size`): a flip, then
    with `crop_probability` DETR's crop (shorter side resized to one of `crop_short_sides`, longer at most
    `max_size`; a crop of height and width drawn in `crop_sides`, which may hold no object); boxes the crop leaves
    under a pixel are dropped with their labels and masks."""
    crop = v2.Compose(
        [v2.RandomShortestSize(list(crop_short_sides), max_size=max_size, antialias=True), RandomSizeCrop(*crop_sides)]
    )
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(flip_probability),
            v2.RandomApply([crop], crop_probability),
            v2.SanitizeBoundingBoxes(),
        ]
    )


class InstanceSegmentationDataset(DetectionDataset):
    """A `CocoSplit`'s examples as torchvision's detection models read them: `{"image": uint8 (3, H, W), "image_id",
    "target": {"boxes": (N, 4) x1 y1 x2 y2, "labels": 1 ... K (0 is the background), "masks": (N, H, W) uint8}}`,
    crowd regions left out, after the training augmentation when there is one (drawn per example, epoch and seed,
    as `DetectionDataset`'s). Unreadable images give None, which the collator drops."""

    with_masks = True

    def __getitem__(self, index: int) -> dict | None:
        sample = self.read(index)
        if sample is None:
            return None
        image_id, pixels, target = sample
        boxes = tvF.convert_bounding_box_format(target["boxes"], new_format=tv_tensors.BoundingBoxFormat.XYXY)
        target = {
            "boxes": boxes.as_subclass(torch.Tensor),
            "labels": target["labels"] + 1,
            "masks": target["masks"].as_subclass(torch.Tensor),
        }
        return {"image": pixels, "image_id": image_id, "target": target}


def collate_instances(examples: list[dict | None]) -> dict:
    """Lists, not stacked tensors: torchvision's detectors take images of any sizes and batch them themselves."""
    examples = readable_examples(examples)
    return {
        "images": [example["image"] for example in examples],
        "targets": [example["target"] for example in examples],
        "image_ids": [example["image_id"] for example in examples],
    }


def model_images(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """uint8 images (moved to the device as such: a quarter of the bytes) as the [0, 1] floats the model reads."""
    return [image.float().div_(255) for image in images]


class MaskRCNNTrainer(Trainer):
    """`Trainer` for `CAEv2MaskRCNN`: the loss is the sum of torchvision's five (each logged beside it), the lr
    follows `build_step_schedule` with its drops at the starts of `lr_drop_epochs` of the Trainer's own epochs,
    evaluation scores boxes and masks with pycocotools on `eval_split`, and saved folders carry the detector's
    `config.json` so `load_mask_rcnn` reloads them.

    Args:
        eval_split: The held-out split whose ground truth scores the predictions.
        class_names: The detector's classes (model label `i + 1` is `class_names[i]`), written into saved folders.
        lr_drop_epochs, lr_drop_factor, warmup_start_factor: The step schedule (`--warmup_steps` sets the warmup).
    """

    def __init__(
        self,
        *args,
        eval_split: CocoSplit,
        class_names: list[str],
        lr_drop_epochs: list[int],
        lr_drop_factor: float = 0.1,
        warmup_start_factor: float = 0.001,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.args.remove_unused_columns = False  # the collator's keys are no arguments of the model's forward
        self.add_callback(EpochCallback())
        self.eval_split, self.class_names = eval_split, class_names
        self.lr_drop_epochs, self.lr_drop_factor = lr_drop_epochs, lr_drop_factor
        self.warmup_start_factor = warmup_start_factor
        self.steps_per_epoch: int | None = None
        self.loss_sums: dict[str, torch.Tensor] = {}
        self.num_summed = 0

    # ---- Training

    def compute_loss(self, model, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        losses = model(model_images(inputs["images"]), inputs["targets"])
        for name, value in losses.items():
            self.loss_sums[name] = self.loss_sums.get(name, 0) + value.detach()
        self.num_summed += 1
        loss = sum(losses.values())
        return (loss, losses) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """A training log gets the mean of each of the five losses since the last log (over every process), and as
        `learning_rate` the heads' (the Trainer would show the first group's: the embeddings', layer-decayed)."""
        if "loss" in logs and self.num_summed:
            for name, total in self.loss_sums.items():
                logs[name] = round(self.accelerator.reduce(total / self.num_summed, reduction="mean").item(), 4)
            self.loss_sums, self.num_summed = {}, 0
        if "learning_rate" in logs:  # the first group's lr at the step just taken, over its layer-decay scale
            logs["learning_rate"] /= self.optimizer.param_groups[0].get("lr_scale", 1.0)
        super().log(logs, start_time)

    def set_initial_training_values(self, args, dataloader):
        """As the Trainer's; remembers its optimizer steps per epoch, which the schedule's drops are counted in."""
        values = super().set_initial_training_values(args, dataloader)
        self.steps_per_epoch = values[1]
        return values

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None:
            milestones = [epoch * self.steps_per_epoch for epoch in self.lr_drop_epochs]
            self.lr_scheduler = build_step_schedule(
                optimizer or self.optimizer, self.args.get_warmup_steps(num_training_steps), milestones,
                self.lr_drop_factor, self.warmup_start_factor,
            )  # fmt: skip
        return self.lr_scheduler

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """As the Trainer's (the detector's state dict as `model.safetensors`), plus its `config.json`."""
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            write_mask_rcnn_config(self.model, output_dir or self.args.output_dir, self.class_names)

    # ---- Evaluation

    def evaluation_loop(
        self, dataloader, description: str, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ) -> EvalLoopOutput:
        """Box and mask AP of the model's detections on `dataloader`, as `eval_map`, `eval_segm_map`, ...: each
        process predicts its share with process 0's BatchNorm statistics (without SyncBatchNorm, as on CPU processes,
        each process's drift apart), and the results are gathered, an image counted once."""
        self.callback_handler.eval_dataloader = dataloader
        model = self.model.eval()
        if self.args.world_size > 1:  # BatchNorm statistics as the saved model has them (rank 0's), on every process
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)
        predictions = {}
        for batch in dataloader:
            batch = self._prepare_inputs(batch)
            with torch.no_grad():
                outputs = model(model_images(batch["images"]))
            for image_id, detections in zip(batch["image_ids"], outputs, strict=True):
                predictions[image_id] = instances_to_coco(image_id, detections, self.eval_split.label_to_category_id)
            self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)
        if self.args.world_size > 1:  # the sampler repeats images to even out the processes: keyed by image
            predictions = dict(gather_object(list(predictions.items())))
        evaluator = CocoEvaluator(self.eval_split.ground_truth, ("bbox", "segm"))
        evaluator.add([result for results in predictions.values() for result in results])
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in evaluator.compute().items()}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=len(predictions))
