# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Training LW-DETR with the transformers `Trainer` the way the authors train it (docs/detection.md#the-recipe):
their augmentation in torchvision v2, the image processor for targets and padding, their parameter groups (layer
decay on the ViT, a slower decoder), an exponential moving average of the weights, and COCO metrics while evaluating.

The recipe, from Atten4Vis/LW-DETR (`datasets/coco.py` `make_coco_transforms_square_div_64`, `util/get_param_dicts.py`,
`models/backbone/backbone.py` `get_named_param_lr_pairs`, `util/utils.py` `ModelEma`, `main.py`).
"""

import contextlib
import os
from functools import partial
from types import SimpleNamespace

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvF
from transformers import EvalPrediction, LwDetrForObjectDetection, Trainer, TrainerCallback
from transformers.conversion_mapping import get_checkpoint_conversion_mapping
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from transformers.utils import SAFE_WEIGHTS_NAME, logging

from ...data.decoding import decode_rgb_image
from ...files import write_atomically
from .coco import CocoFormatError, CocoSplit, annotation_masks
from .lwdetr import SIZE_MULTIPLE, square_sizes
from .metrics import CocoEvaluator, detections_to_coco


logger = logging.get_logger(__name__)

# ---- Augmentation: the authors' `square_resize_div_64` pipeline, its sizes scaled to the run's resolution

REFERENCE_SIZE = 640  # the recipe's sizes are given for 640 px
CROP_SHORT_SIDES = (400, 500, 600)  # the crop branch's shorter side before cropping, at 640
CROP_SIDES = (384, 600)  # its crop's side range, at 640


class RandomSizeCrop(v2.Transform):
    """A crop of random width and height in `[min_size, max_size]` (each at most the image's), at a random place:
    DETR's `RandomSizeCrop`, which torchvision v2 lacks. Boxes, masks and images are cropped alike."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list) -> dict:
        height, width = v2.query_size(flat_inputs)
        crop_height = int(torch.randint(min(self.min_size, height), min(height, self.max_size) + 1, ()))
        crop_width = int(torch.randint(min(self.min_size, width), min(width, self.max_size) + 1, ()))
        top = int(torch.randint(0, height - crop_height + 1, ()))
        left = int(torch.randint(0, width - crop_width + 1, ()))
        return {"top": top, "left": left, "height": crop_height, "width": crop_width}

    def transform(self, inpt, params: dict):
        return self._call_kernel(tvF.crop, inpt, **params)


def square_resize(sizes: list[int]) -> v2.Transform:
    """Resize to a square of a size drawn from `sizes`, the aspect ratio not kept (the authors' `SquareResize`)."""
    return v2.RandomChoice([v2.Resize((size, size), antialias=True) for size in sizes])


def build_train_transform(image_size: int, multiple: int = SIZE_MULTIPLE) -> v2.Compose:
    """Flip; then, half the time each, a square resize to one of `square_sizes`, or a resize of the shorter side, a
    random crop and the square resize; boxes that the crop empties are dropped with their labels."""
    scale = image_size / REFERENCE_SIZE
    sizes = square_sizes(image_size, multiple)
    crop = v2.Compose(
        [
            v2.RandomShortestSize([round(side * scale) for side in CROP_SHORT_SIDES], antialias=True),
            RandomSizeCrop(*(round(side * scale) for side in CROP_SIDES)),
            square_resize(sizes),
        ]
    )
    return v2.Compose(
        [v2.RandomHorizontalFlip(), v2.RandomChoice([square_resize(sizes), crop]), v2.SanitizeBoundingBoxes()]
    )


# ---- Examples and batches


class DetectionDataset(torch.utils.data.Dataset):
    """A `CocoSplit`'s examples as `{"image": uint8 (3, H, W), "target": {"image_id", "annotations"}, "augmented"}`
    with model labels (0 ... K-1) as `category_id`, crowd regions left out, after `transform` (the training
    augmentation; without one, the collator square-resizes the image as `pipeline()` does).

    The augmentation of example `i` in epoch `e` is drawn from its own seed `(seed, e, i)`, not from the global
    random state, so a resumed run augments as the uninterrupted one did (the loader reads batches ahead of the
    checkpoint that records the global state); `LwDetrTrainer` sets the epoch.

    An image that cannot be decoded, or whose size differs from its annotation's, gives None: the collator drops it
    and the log names it, once per reading. With `only_annotated_images`, images without any annotation are left out
    (mmdetection's `filter_empty_gt`, which the Mask R-CNN recipe trains with).
    """

    with_masks = False  # subclasses that train on instance masks carry them through the augmentation

    def __init__(
        self,
        split: CocoSplit,
        transform: v2.Transform | None = None,
        seed: int = 0,
        only_annotated_images: bool = False,
    ) -> None:
        self.examples, self.transform, self.seed, self.epoch = split.examples, transform, seed, 0
        self.labels = {category_id: label for label, category_id in enumerate(split.label_to_category_id)}
        annotated = split.ground_truth.imgToAnns
        self.positions = [  # the examples this dataset reads, by their position in the split
            position
            for position, image in enumerate(split.examples.images)
            if annotated.get(image["id"]) or not only_annotated_images
        ]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> dict | None:
        sample = self.read(index)
        if sample is None:
            return None
        image_id, pixels, target = sample
        return {"image": pixels, "target": coco_target(image_id, target), "augmented": self.transform is not None}

    def read(self, index: int) -> tuple[int, torch.Tensor, dict] | None:
        """(image id, uint8 pixels, `{"boxes": BoundingBoxes, "labels"[, "masks": Mask]}`) after the augmentation,
        or None for an image that cannot be used."""
        example = self.examples[self.positions[index]]
        image, reason = decode_rgb_image(example["image"])
        if image is None or image.size != (example["width"], example["height"]):
            reason = reason or f"{image.width}x{image.height} px, annotated as {example['width']}x{example['height']}"
            logger.warning(f"Skipping image {example['image_id']} ({describe_image(example['image'])}): {reason}.")
            return None
        annotations = [item for item in example["annotations"] if not item.get("iscrowd")]
        boxes = torch.tensor([item["bbox"] for item in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes = tv_tensors.BoundingBoxes(boxes, format="XYWH", canvas_size=(image.height, image.width))
        labels = torch.tensor([self.labels[item["category_id"]] for item in annotations], dtype=torch.int64)
        pixels, target = tv_tensors.Image(tvF.pil_to_tensor(image)), {"boxes": boxes, "labels": labels}
        if self.with_masks:
            target["masks"] = tv_tensors.Mask(
                torch.from_numpy(annotation_masks(annotations, image.height, image.width))
            )
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]))
                pixels, target = self.transform(pixels, target)
        return example["image_id"], pixels.as_subclass(torch.Tensor), target


def coco_target(image_id: int, target: dict) -> dict:
    """Boxes and labels back to the COCO annotations the image processor reads (`category_id` = model label)."""
    boxes = tvF.convert_bounding_box_format(target["boxes"], new_format=tv_tensors.BoundingBoxFormat.XYWH)
    annotations = [
        {"bbox": box, "category_id": label, "area": box[2] * box[3], "iscrowd": 0}
        for box, label in zip(boxes.tolist(), target["labels"].tolist(), strict=True)
    ]
    return {"image_id": image_id, "annotations": annotations}


def describe_image(image) -> str:
    if isinstance(image, dict):
        return image.get("path") or "image bytes"
    return image if isinstance(image, str) else type(image).__name__


def readable_examples(examples: list[dict | None]) -> list[dict]:
    """A batch's examples without the unreadable images (`None`, named in the log); a batch of none is an error."""
    examples = [example for example in examples if example is not None]
    if not examples:
        raise CocoFormatError("Every image of a batch was unreadable (see the warnings above): fix or remove them.")
    return examples


class DetectionCollator:
    """Batches through the image processor: rescaling and normalisation, boxes to normalised (cx, cy, w, h), padding
    to the batch's largest image with a `pixel_mask`. Augmented (training) images keep their size; the others
    (evaluation) are square-resized to the processor's size, as the authors evaluate and `pipeline()` predicts.
    `labels[i]["orig_size"]` is then the image's own size, where predictions are scored."""

    def __init__(self, image_processor) -> None:
        self.image_processor = image_processor

    def __call__(self, examples: list[dict | None]) -> dict:
        examples = readable_examples(examples)
        batch = self.image_processor(
            images=[example["image"] for example in examples],
            annotations=[example["target"] for example in examples],
            do_resize=not examples[0]["augmented"],
            return_tensors="pt",
        )
        return {"pixel_values": batch["pixel_values"], "pixel_mask": batch["pixel_mask"], "labels": batch["labels"]}


# ---- Optimisation


def vit_layer_id(name: str, num_layers: int) -> int:
    """Depth of a ViT tensor for layer decay: 0 for the patch embedding and position table, i + 1 for block i."""
    if name.startswith("embeddings."):
        return 0
    if name.startswith("encoder.layer."):
        return int(name.split(".")[2]) + 1
    return num_layers + 1


def build_lwdetr_parameter_groups(
    model: LwDetrForObjectDetection,
    learning_rate: float,
    encoder_learning_rate: float,
    weight_decay: float,
    layer_decay: float,
    component_decay: float = 1.0,
) -> list[dict]:
    """The authors' groups (`get_param_dict`): the ViT at `encoder_learning_rate x layer_decay^(L + 1 - depth) x
    component_decay^2`, without weight decay on 1-D tensors and the position table; the decoder at
    `learning_rate x component_decay`; everything else (projector, queries, heads) at `learning_rate`."""
    vit = model.model.backbone.backbone
    num_layers = vit.config.num_hidden_layers
    vit_ids = {id(parameter) for parameter in vit.parameters()}
    decoder_ids = {id(parameter) for parameter in model.model.decoder.parameters()}
    groups: dict[tuple[float, float], dict] = {}

    def add(name: str, parameter: torch.Tensor, lr: float, decay: float) -> None:
        group = groups.setdefault((lr, decay), {"params": [], "names": [], "lr": lr, "weight_decay": decay})
        group["params"].append(parameter)
        group["names"].append(name)

    for name, parameter in vit.named_parameters():
        if parameter.requires_grad:
            scale = layer_decay ** (num_layers + 1 - vit_layer_id(name, num_layers)) * component_decay**2
            exempt = parameter.ndim <= 1 or name == "embeddings.position_embeddings"
            add(f"vit.{name}", parameter, encoder_learning_rate * scale, 0.0 if exempt else weight_decay)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and id(parameter) not in vit_ids:
            lr = learning_rate * component_decay if id(parameter) in decoder_ids else learning_rate
            add(name, parameter, lr, weight_decay)
    return list(groups.values())


class ModelEma:
    """An exponential moving average of every tensor of a model's state (the authors' `ModelEma`): after each update
    `ema = decay * ema + (1 - decay) * weights`; integer buffers are copied."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                self.shadow[name].lerp_(tensor.detach(), 1 - self.decay)
            else:
                self.shadow[name].copy_(tensor)

    @contextlib.contextmanager
    def applied_to(self, model: torch.nn.Module):
        """The averaged weights in `model` inside the block, its own weights back after it."""
        own = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def save(self, path: str) -> None:
        write_atomically(path, partial(save_file, {name: tensor.contiguous() for name, tensor in self.shadow.items()}))

    def load(self, path: str) -> None:
        loaded = load_file(path)
        for name, tensor in self.shadow.items():
            tensor.copy_(loaded[name])


EMA_FILE = "ema.safetensors"


class EmaCallback(TrainerCallback):
    """Keeps a `ModelEma` of the model through a `Trainer` run: updated after every optimiser step, written as
    `ema.safetensors` into every checkpoint, read back from the checkpoint a resumed run starts from."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.ema: ModelEma | None = None
        self.resume_from: str | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.ema = ModelEma(model, self.decay)
        if self.resume_from is None:
            return
        path = os.path.join(self.resume_from, EMA_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{self.resume_from} holds no {EMA_FILE}: resume with the same EMA setting.")
        self.ema.load(path)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update(model)

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            self.ema.save(os.path.join(folder, EMA_FILE))


# ---- Evaluation


# Every output but logits and boxes stays out of evaluation: the metric reads those two, in this order.
LWDETR_EVAL_IGNORE_KEYS = [
    "loss_dict", "auxiliary_outputs", "init_reference_points", "last_hidden_state", "intermediate_hidden_states",
    "intermediate_reference_points", "enc_outputs_class", "enc_outputs_coord_logits", "hidden_states", "attentions",
    "cross_attentions",
]  # fmt: skip


class DetrCocoMetrics:
    """`compute_metrics` for `Trainer(..., args=TrainingArguments(batch_eval_metrics=True))`: each batch's top
    `top_k` detections per image, in original-image pixels, go to a `CocoEvaluator`; the last batch returns the
    COCO metrics. Predictions must be `(logits, pred_boxes)` (`LWDETR_EVAL_IGNORE_KEYS`)."""

    def __init__(self, image_processor, split: CocoSplit, top_k: int = 100) -> None:
        self.image_processor, self.top_k = image_processor, top_k
        self.label_to_category_id = split.label_to_category_id
        self.evaluator = CocoEvaluator(split.ground_truth, ("bbox",))

    def __call__(self, evaluation: EvalPrediction, compute_result: bool = False) -> dict[str, float] | None:
        logits, pred_boxes = evaluation.predictions
        targets = evaluation.label_ids
        sizes = torch.stack([target["orig_size"] for target in targets]).cpu()
        outputs = SimpleNamespace(logits=logits.float(), pred_boxes=pred_boxes.float())
        results = self.image_processor.post_process_object_detection(
            outputs, threshold=0.0, target_sizes=sizes, top_k=self.top_k
        )
        for target, result in zip(targets, results, strict=True):
            image_id = int(target["image_id"].reshape(-1)[0])
            self.evaluator.add(
                detections_to_coco(
                    image_id, result["scores"], result["labels"], result["boxes"], self.label_to_category_id
                )
            )
        return self.evaluator.compute() if compute_result else None


class EpochCallback(TrainerCallback):
    """Tells the training dataset which epoch begins (`DetectionDataset.set_epoch`), before its loader starts."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(int(state.epoch or 0))


class LwDetrTrainer(Trainer):
    """`Trainer` that evaluates LW-DETR on its logits and boxes only and, with `ema_decay`, keeps the authors' weight
    average and evaluates (and, through `ema_weights()`, saves) with it, as they report."""

    def __init__(self, *args, ema_decay: float | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The collator reads `DetectionDataset`'s keys, which are no arguments of the model: keep them.
        self.args.remove_unused_columns = False
        self.add_callback(EpochCallback())
        self.ema_callback = EmaCallback(ema_decay) if ema_decay else None
        if self.ema_callback is not None:
            self.add_callback(self.ema_callback)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        if self.ema_callback is not None:
            self.ema_callback.resume_from = resume_from_checkpoint or None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """As the Trainer's, but under the names `from_pretrained` would give: transformers saves LW-DETR's ViT
        attention under its legacy names (`attention.attention.query`, ...), which the Trainer's own loading leaves
        unloaded with only a warning, so a resumed run would restart those weights. Strict: nothing may be left out."""
        weights_file = os.path.join(resume_from_checkpoint, SAFE_WEIGHTS_NAME)
        if not os.path.isfile(weights_file):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        renamings = [
            (renaming.source_patterns[0], renaming.target_patterns[0])
            for renaming in get_checkpoint_conversion_mapping(self.model.config.model_type) or []
        ]
        state_dict = {}
        for name, tensor in load_file(weights_file).items():
            for legacy, current in renamings:
                name = name.replace(legacy, current)
            state_dict[name] = tensor
        (model or self.model).load_state_dict(state_dict, strict=True)

    def ema_weights(self):
        """Context in which the model holds the averaged weights (a no-op without EMA or before training)."""
        ema = self.ema_callback.ema if self.ema_callback is not None else None
        return ema.applied_to(self.model) if ema is not None else contextlib.nullcontext(self.model)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        ignore_keys = LWDETR_EVAL_IGNORE_KEYS if ignore_keys is None else ignore_keys
        with self.ema_weights():
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
