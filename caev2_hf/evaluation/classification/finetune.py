# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Fine-tuning through the transformers `Trainer` (docs/method.md#recipes): layer-wise lr decay, mixup / cutmix, top-k metrics."""

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate
from torchvision.transforms import v2
from transformers import AutoConfig, AutoModelForImageClassification, EvalPrediction, Trainer, TrainingArguments
from transformers.utils import logging

from caev2_hf_cli.checks import describe_non_encoder, not_an_encoder_message
from caev2_hf_cli.classification import AugmentationArguments, FineTuningModelArguments
from caev2_hf_cli.errors import UserError

from ...data.decoding import decode_rgb_image
from ...data.loader import LabelledImageStream
from ...data.transforms import build_eval_transform
from ...files import write_json
from ...modeling_caev2 import CAEv2ForImageClassification
from ...optim import build_layer_decay_optimizer
from .frozen_encoder import EncoderPreprocessing
from .labelled_data import build_label_mappings
from .metrics import compute_topk_accuracy, format_topk_accuracy, rank_predictions, topk_notes


SHUFFLE_BUFFER_SIZE = 10_000  # examples held for shuffling a stream, as in pretraining
SMALL_IMAGE_UPSCALE = 2  # images enlarged more than this to the model's input count as small
SMALL_IMAGE_SETTINGS = {"crop_min_scale": 0.5, "rand_augment_magnitude": 0, "random_erasing": 0.0}

logger = logging.get_logger(__name__)


def token_parameter_names(model: CAEv2ForImageClassification) -> tuple[str, ...]:
    """The embeddings' own tensors ([CLS]): exempt from weight decay in fine-tuning, as BEiT's `no_weight_decay`."""
    embeddings = model.base_model.embeddings
    return tuple(
        f"{model.base_model_prefix}.embeddings.{name}" for name, _ in embeddings.named_parameters(recurse=False)
    )


def build_finetune_transforms(
    preprocessing: EncoderPreprocessing, augmentation: AugmentationArguments
) -> tuple[v2.Compose, v2.Compose]:
    """(train, eval) transforms to normalised float tensors, torchvision's versions of the official timm ones.

    Train: RandomResizedCrop (bicubic, area from `crop_min_scale` to 1) + flip + RandAugment (2 ops; magnitude out of
    10 as timm's `rand-m9`) + random erasing (per-pixel noise) after normalisation. Eval: resize 256/224 of the crop,
    centre crop.
    """
    image_size = preprocessing.image_size
    normalize = [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(preprocessing.image_mean, preprocessing.image_std),
    ]
    train = [
        v2.PILToTensor(),
        v2.RandomResizedCrop(
            image_size,
            scale=(augmentation.crop_min_scale, 1.0),
            interpolation=v2.InterpolationMode.BICUBIC,
            antialias=True,
        ),
        v2.RandomHorizontalFlip(),
    ]
    if augmentation.rand_augment_magnitude > 0:
        train.append(v2.RandAugment(num_ops=2, magnitude=augmentation.rand_augment_magnitude, num_magnitude_bins=11))
    train += normalize
    if augmentation.random_erasing > 0:
        train.append(v2.RandomErasing(p=augmentation.random_erasing, value="random"))
    eval_transform = v2.Compose([build_eval_transform(image_size, preprocessing.resize_size), *normalize])
    return v2.Compose(train), eval_transform


def warn_if_images_are_small(dataset, image_size: int, augmentation: AugmentationArguments) -> str | None:
    """Warns (and returns the warning) when the first training image is much smaller than the model's input and the
    augmentation is ImageNet's: a crop of 8 % of an 8x8 digit is 2x2 pixels, and RandAugment at full strength then
    leaves little of it, so fine-tuning stays at chance. The recipe stays as asked; the warning names the settings
    that suit small images (`SMALL_IMAGE_SETTINGS`)."""
    image, _ = decode_rgb_image(next(iter(dataset.take(1)))["image"])
    if image is None or min(image.size) * SMALL_IMAGE_UPSCALE > image_size:
        return None
    changes = {name: value for name, value in SMALL_IMAGE_SETTINGS.items() if getattr(augmentation, name) != value}
    if not changes:
        return None
    smallest = max(1, round(min(image.size) * augmentation.crop_min_scale**0.5))
    message = (
        f"The training images are small ({image.size[0]}x{image.size[1]}, the first one) for the model's "
        f"{image_size}x{image_size} input, and the recipe's augmentation is ImageNet's (a crop may keep "
        f"{smallest}x{smallest} pixels of an image): for small images start from configs/finetune-small-images.yaml, "
        f"or give at least {' '.join(f'--{name} {value:g}' for name, value in changes.items())}."
    )
    logger.warning(message)
    return message


def collate_classification_batch(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stream examples -> the model's inputs: `pixel_values` and `labels`."""
    return default_collate(
        [{"pixel_values": example["pixel_values"], "labels": example["label"]} for example in examples]
    )


class MixupCutmix:
    """Mixup or CutMix of a whole batch with smoothed soft targets: the recipe of timm's `Mixup` (batch mode, the
    official fine-tuning's), on torchvision's `v2.MixUp` / `v2.CutMix`.

    Each call draws lam ~ Beta(alpha, alpha) and, with both on, picks CutMix with `switch_probability` (timm's 0.5);
    CutMix's lam is the kept share of the image (timm's `correct_lam`). Each image is mixed with its neighbour in
    the batch (`roll(1)`; timm pairs it with its mirror, `flip(0)`, so it needs an even batch), which any batch size
    allows. The targets are `lam * y + (1 - lam) * y'` for one-hot labels, then smoothed: since smoothing is linear,
    that equals timm's mixture of smoothed targets (`1 - s + s/K` on the class, `s/K` off it).
    """

    def __init__(self, augmentation: AugmentationArguments, num_classes: int) -> None:
        transforms, probabilities = [], []
        if augmentation.mixup > 0:
            transforms.append(v2.MixUp(alpha=augmentation.mixup, num_classes=num_classes))
            probabilities.append(1.0 - augmentation.mixup_switch_probability)
        if augmentation.cutmix > 0:
            transforms.append(v2.CutMix(alpha=augmentation.cutmix, num_classes=num_classes))
            probabilities.append(augmentation.mixup_switch_probability)
        if not transforms:
            raise ValueError("MixupCutmix needs --mixup or --cutmix above 0.")
        self.transform = transforms[0] if len(transforms) == 1 else v2.RandomChoice(transforms, p=probabilities)
        self.label_smoothing, self.num_classes = augmentation.label_smoothing, num_classes

    def __call__(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, soft targets `(batch, num_classes)`) from images and class indices."""
        pixel_values, targets = self.transform(pixel_values, labels)
        return pixel_values, targets * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes


def build_mixup(augmentation: AugmentationArguments, num_classes: int) -> MixupCutmix | None:
    """The recipe's batch mixing (torchvision's MixUp / CutMix with smoothed targets), None when both are off."""
    if augmentation.mixup <= 0 and augmentation.cutmix <= 0:
        return None
    return MixupCutmix(augmentation, num_classes)


def build_classification_loss(label_smoothing: float) -> Callable:
    """`Trainer(compute_loss_func=...)`: cross-entropy on class indices (smoothed) or on mixup's soft targets.

    The per-example losses are summed and divided by the examples of the whole accumulated batch when the Trainer
    gives that count, so k accumulated batches of b match one batch of k x b.
    """

    def compute_loss(outputs, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None):
        logits = outputs["logits"].float()
        if labels.ndim == 2:  # mixup / cutmix targets, already smoothed
            losses = -(labels * logits.log_softmax(dim=-1)).sum(dim=-1)
        else:
            losses = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
        return losses.sum() / num_items_in_batch if num_items_in_batch is not None else losses.mean()

    return compute_loss


def build_topk_metrics(num_classes: int) -> Callable[[EvalPrediction], dict[str, float]]:
    """`Trainer(compute_metrics=...)`: top-1 / top-5 from the ranked predictions that `preprocess_logits_for_metrics`
    kept; a top-k that the class count makes meaningless (top-5 of 5 classes or fewer) is left out."""

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        ranked, labels = torch.as_tensor(prediction.predictions), torch.as_tensor(prediction.label_ids)
        accuracy = compute_topk_accuracy(ranked, labels, num_classes)
        return {name: value for name, value in accuracy.items() if value is not None}

    return compute_metrics


def preprocess_logits_for_metrics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Keep 5 class indices per example instead of all logits: evaluation memory stays small."""
    return rank_predictions(logits)


class CAEv2FineTuningTrainer(Trainer):
    """A Trainer that mixes training batches (mixup / cutmix) before the loss; evaluation batches stay clean."""

    def __init__(self, *args, mixup_fn: Callable | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mixup_fn = mixup_fn

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and self.mixup_fn is not None:
            pixel_values, labels = self.mixup_fn(inputs["pixel_values"], inputs["labels"])
            inputs = {**inputs, "pixel_values": pixel_values, "labels": labels}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def check_head_matches_dataset(config, num_classes: int, ignore_mismatched_sizes: bool) -> None:
    """Refuse a checkpoint whose classifier has another class count than the dataset, unless asked to replace it."""
    has_head = any(name.endswith("ForImageClassification") for name in config.architectures or [])
    if has_head and config.num_labels != num_classes and not ignore_mismatched_sizes:
        raise UserError(
            f"The checkpoint's classification head has {config.num_labels} classes but the dataset has {num_classes}: "
            "pass --ignore_mismatched_sizes true to train a new head."
        )


def load_finetune_model(model_args: FineTuningModelArguments, class_names: list[str]) -> CAEv2ForImageClassification:
    """The fine-tuning classifier from any CAE v2 checkpoint: mean of the patch tokens -> the encoder's final norm
    (BEiT's `fc_norm`, so it starts as the pretrained norm) -> Linear. Every parameter trains."""
    config = AutoConfig.from_pretrained(model_args.model)
    found = describe_non_encoder(config.model_type, config.architectures, caev2_only=True)
    if found is not None:  # a Hub id; a local folder was refused at parse time
        raise UserError(not_an_encoder_message(model_args.model, found, caev2_only=True))
    check_head_matches_dataset(config, len(class_names), model_args.ignore_mismatched_sizes)
    model = AutoModelForImageClassification.from_pretrained(
        model_args.model,
        classifier_pooling="mean",
        drop_path_rate=model_args.drop_path_rate,
        **build_label_mappings(class_names),
        problem_type="single_label_classification",
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    return model


def build_finetune_trainer(
    model: CAEv2ForImageClassification,
    args: TrainingArguments,
    train_dataset,
    eval_dataset,
    layer_decay: float,
    augmentation: AugmentationArguments,
) -> CAEv2FineTuningTrainer:
    """The Trainer of the official recipe: layer-decay AdamW, mixup / cutmix or label smoothing, top-k metrics."""
    if args.label_smoothing_factor > 0 or args.optim_args:
        raise UserError(
            "--label_smoothing_factor and --optim_args are not used here (the loss and the layer-decay AdamW are the "
            "recipe's own): use --label_smoothing and the --learning_rate / --weight_decay / --adam_* options."
        )
    optimizer = build_layer_decay_optimizer(
        model,
        args.learning_rate,
        args.weight_decay,
        layer_decay,
        model.config.num_hidden_layers,
        skip_weight_decay=token_parameter_names(model),
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    mixup_fn = build_mixup(augmentation, model.config.num_labels)
    return CAEv2FineTuningTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collate_classification_batch,
        optimizers=(optimizer, None),
        # With mixup, smoothing is already inside the soft targets.
        compute_loss_func=build_classification_loss(0.0 if mixup_fn else augmentation.label_smoothing),
        compute_metrics=build_topk_metrics(model.config.num_labels),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        mixup_fn=mixup_fn,
    )


def build_training_streams(
    train_dataset, validation_dataset, train_transform: v2.Compose, eval_transform: v2.Compose, seed: int
) -> tuple[LabelledImageStream, LabelledImageStream]:
    """(train, eval) streams of {"pixel_values", "label"}: shuffled and augmented, or in order and centre-cropped."""
    shuffled = train_dataset.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER_SIZE)
    return LabelledImageStream(shuffled, train_transform, seed=seed), LabelledImageStream(
        validation_dataset, eval_transform
    )


@dataclass
class FineTuningResult:
    """What a fine-tuning run measured on validation, and with how much data."""

    top1_accuracy: float
    top5_accuracy: float | None  # None with 5 classes or fewer, where every example is in its top 5
    eval_loss: float
    num_classes: int
    num_train_examples: int
    max_steps: int

    def to_json(self) -> dict:
        """The fields for `results.json`, with a note beside a top-k left out."""
        return asdict(self) | topk_notes(self)


def train_and_evaluate(trainer: Trainer, num_classes: int, num_train_examples: int) -> FineTuningResult:
    """Trains (resuming if `--resume_from_checkpoint` asks), evaluates, saves model and state (`trainer_state.json`:
    the logged losses and metrics) and, on the main process, `results.json`."""
    args = trainer.args
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.save_model()
    trainer.save_state()
    result = FineTuningResult(
        top1_accuracy=metrics["eval_top1_accuracy"],
        top5_accuracy=metrics.get("eval_top5_accuracy"),
        eval_loss=metrics["eval_loss"],
        num_classes=num_classes,
        num_train_examples=num_train_examples,
        max_steps=args.max_steps,
    )
    if trainer.is_world_process_zero():
        write_json(results_file(args.output_dir), result.to_json(), indent=2)
    return result


def results_file(output_dir: str) -> str:
    return os.path.join(output_dir, "results.json")


def format_finetune_summary(result: FineTuningResult, model: str, output_dir: str) -> str:
    """The lines fine-tuning prints at its end: top-1 / top-5, the results file and the model folder."""
    return "\n".join(
        [
            f"Fine-tuned {model} for {result.max_steps} steps: {format_topk_accuracy(result)} on validation "
            f"(loss {result.eval_loss:.4f})",
            f"  results: {results_file(output_dir)}",
            f'  model:   {output_dir}  (pipeline("image-classification", model="{output_dir}"))',
        ]
    )
