# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Fine-tuning through the transformers `Trainer` (docs/method.md#recipes): layer-wise lr decay, mixup / cutmix, top-k metrics."""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate
from torchvision.transforms import v2
from transformers import AutoConfig, AutoModelForImageClassification, EvalPrediction, Trainer, TrainingArguments

from ..data.images import PretrainImageStream, build_eval_transform
from ..modeling_caev2 import CAEv2ForImageClassification
from ..optim import build_parameter_groups
from .labelled_data import build_label_mappings
from .metrics import compute_topk_accuracy, rank_predictions


SHUFFLE_BUFFER_SIZE = 10_000  # examples held for shuffling a stream, as in pretraining


def token_parameter_names(model: CAEv2ForImageClassification) -> tuple[str, ...]:
    """The embeddings' own tensors ([CLS]): exempt from weight decay in fine-tuning, as BEiT's `no_weight_decay`."""
    embeddings = model.base_model.embeddings
    return tuple(
        f"{model.base_model_prefix}.embeddings.{name}" for name, _ in embeddings.named_parameters(recurse=False)
    )


def build_layer_decay_optimizer(
    model: CAEv2ForImageClassification,
    learning_rate: float,
    weight_decay: float,
    layer_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW whose groups scale the lr by `layer_decay ** (L + 1 - depth)`; no decay on norms, biases and [CLS].

    Pass it as `Trainer(optimizers=(optimizer, None))`: the Trainer's scheduler scales every group's lr alike.
    """
    groups = build_parameter_groups(
        model, weight_decay, layer_decay, model.config.num_hidden_layers, token_parameter_names(model)
    )
    for group in groups:
        group["lr"] = learning_rate * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps)


def build_finetune_transforms(
    image_size: int,
    resize_size: int,
    image_mean: list[float],
    image_std: list[float],
    rand_augment_magnitude: int,
    random_erasing: float,
) -> tuple[v2.Compose, v2.Compose]:
    """(train, eval) transforms to normalised float tensors, torchvision's versions of the official timm ones.

    Train: RandomResizedCrop (bicubic) + flip + RandAugment (2 ops; magnitude out of 10 as timm's `rand-m9`) +
    random erasing (per-pixel noise) after normalisation. Eval: resize 256/224 of the crop, centre crop.
    """
    normalize = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(image_mean, image_std)]
    train = [
        v2.PILToTensor(),
        v2.RandomResizedCrop(image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if rand_augment_magnitude > 0:
        train.append(v2.RandAugment(num_ops=2, magnitude=rand_augment_magnitude, num_magnitude_bins=11))
    train += normalize
    if random_erasing > 0:
        train.append(v2.RandomErasing(p=random_erasing, value="random"))
    return v2.Compose(train), v2.Compose([build_eval_transform(image_size, resize_size), *normalize])


def collate_classification_batch(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stream examples -> the model's inputs: `pixel_values` and `labels`."""
    return default_collate(
        [{"pixel_values": example["pixel_values"], "labels": example["label"]} for example in examples]
    )


def build_mixup(mixup: float, cutmix: float, label_smoothing: float, num_classes: int) -> Callable | None:
    """timm's Mixup (mixup / cutmix with smoothed soft targets), None when both are off."""
    if mixup <= 0 and cutmix <= 0:
        return None
    try:
        from timm.data import Mixup  # optional: only the mixup / cutmix recipe needs timm
    except ImportError as error:
        raise ImportError(
            f"mixup={mixup} / cutmix={cutmix} use timm's Mixup: `pip install timm` (or `pip install caev2_hf[timm]`), "
            "or turn them off with --mixup 0 --cutmix 0."
        ) from error
    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing, num_classes=num_classes)


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


def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """Top-1 / top-5 from the ranked predictions that `preprocess_logits_for_metrics` kept."""
    return compute_topk_accuracy(torch.as_tensor(prediction.predictions), torch.as_tensor(prediction.label_ids))


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
            even = inputs["pixel_values"].shape[0] // 2 * 2
            if even != inputs["pixel_values"].shape[0]:
                # timm's Mixup pairs images and needs an even batch; the Trainer keeps a stream's short last batch
                # (dataloader_drop_last applies to map-style datasets only), so its odd image is left out.
                inputs = {**inputs, "pixel_values": inputs["pixel_values"][:even], "labels": inputs["labels"][:even]}
                num_items_in_batch = None if num_items_in_batch is None else num_items_in_batch - 1
            pixel_values, labels = self.mixup_fn(inputs["pixel_values"], inputs["labels"])
            inputs = {**inputs, "pixel_values": pixel_values, "labels": labels}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def check_head_matches_dataset(config, num_classes: int, ignore_mismatched_sizes: bool) -> None:
    """Refuse a checkpoint whose classifier has another class count than the dataset, unless asked to replace it."""
    has_head = any(name.endswith("ForImageClassification") for name in config.architectures or [])
    if has_head and config.num_labels != num_classes and not ignore_mismatched_sizes:
        raise ValueError(
            f"The checkpoint's classification head has {config.num_labels} classes but the dataset has {num_classes}: "
            "pass --ignore_mismatched_sizes true to train a new head."
        )


def load_finetune_model(
    model_name_or_path: str, class_names: list[str], drop_path_rate: float, ignore_mismatched_sizes: bool
) -> CAEv2ForImageClassification:
    """The fine-tuning classifier (mean pooling, `fc_norm` starting as the encoder's final norm) from any checkpoint.

    The encoder's final norm is unused by mean pooling (the official model drops it), so it is frozen: no optimizer
    state and no unused parameters for DDP.
    """
    check_head_matches_dataset(
        AutoConfig.from_pretrained(model_name_or_path), len(class_names), ignore_mismatched_sizes
    )
    model = AutoModelForImageClassification.from_pretrained(
        model_name_or_path,
        classifier_pooling="mean",
        drop_path_rate=drop_path_rate,
        **build_label_mappings(class_names),
        problem_type="single_label_classification",
        ignore_mismatched_sizes=ignore_mismatched_sizes,
    )
    model.base_model.layernorm.requires_grad_(False)
    return model


def compute_max_steps(num_examples: int, num_train_epochs: float, batch_size_per_step: int) -> int:
    """Optimizer steps for `num_train_epochs` over a stream (which has no length): epochs x examples / batch."""
    return max(1, math.floor(num_train_epochs * num_examples / batch_size_per_step))


def build_finetune_trainer(
    model: CAEv2ForImageClassification,
    args: TrainingArguments,
    train_dataset,
    eval_dataset,
    layer_decay: float,
    mixup: float,
    cutmix: float,
    label_smoothing: float,
) -> CAEv2FineTuningTrainer:
    """The Trainer of the official recipe: layer-decay AdamW, mixup / cutmix or label smoothing, top-k metrics."""
    if args.label_smoothing_factor > 0 or args.optim_args:
        raise ValueError(
            "--label_smoothing_factor and --optim_args are not used here (the loss and the layer-decay AdamW are the "
            "recipe's own): use --label_smoothing and the --learning_rate / --weight_decay / --adam_* options."
        )
    optimizer = build_layer_decay_optimizer(
        model,
        args.learning_rate,
        args.weight_decay,
        layer_decay,
        (args.adam_beta1, args.adam_beta2),
        args.adam_epsilon,
    )
    mixup_fn = build_mixup(mixup, cutmix, label_smoothing, model.config.num_labels)
    return CAEv2FineTuningTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collate_classification_batch,
        optimizers=(optimizer, None),
        # With mixup, smoothing is already inside the soft targets.
        compute_loss_func=build_classification_loss(0.0 if mixup_fn else label_smoothing),
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        mixup_fn=mixup_fn,
    )


def build_training_streams(
    train_dataset, validation_dataset, train_transform: v2.Compose, eval_transform: v2.Compose, seed: int
) -> tuple[PretrainImageStream, PretrainImageStream]:
    """(train, eval) streams of {"pixel_values", "label"}: shuffled and augmented, or in order and centre-cropped."""
    shuffled = train_dataset.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER_SIZE)
    return PretrainImageStream(shuffled, train_transform, seed=seed), PretrainImageStream(
        validation_dataset, eval_transform
    )
