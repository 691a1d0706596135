# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Arguments of `run_pretrain.py`: model, data and training dataclasses read from a YAML file plus command-line overrides.

Precedence: command line > YAML file (`--config`) > the defaults below; `caev2_hf.cli` reads them. The YAML file
is one flat mapping whose keys are the field names of the three dataclasses (see `configs/*.yaml`).
"""

import json
from dataclasses import dataclass, field

from ..cli import parse_arguments_with_config


MIXED_PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class PretrainingModelArguments:
    """Which CAE v2 to pretrain."""

    model_preset: str = field(
        default="base", metadata={"help": "Official architecture and mask count: tiny, small, base or large."}
    )
    config_overrides: dict | str | None = field(
        default=None,
        metadata={
            "help": "CAEv2Config fields replacing the preset's, e.g. {'drop_path_rate': 0.0} (a mapping in YAML, JSON "
            "on the command line). `teacher_config` takes a CLIPVisionConfig mapping."
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Start from a saved CAEv2ForPreTraining folder (e.g. a previous run's final/pretraining) instead "
            "of a random initialisation; its config is used and model_preset/config_overrides are ignored."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.config_overrides, str):
            try:
                self.config_overrides = json.loads(self.config_overrides)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"config_overrides={self.config_overrides!r} is not JSON: write e.g. "
                    "'{\"drop_path_rate\": 0.0}' on the command line."
                ) from error


@dataclass
class PretrainingDataArguments:
    """Where the images come from and how they are augmented (docs/method.md#recipes). Give exactly one source."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset streamed from the Hub, e.g. timm/imagenet-1k-wds or ILSVRC/imagenet-1k."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration, if any."})
    train_split: str = field(default="train", metadata={"help": "Split to pretrain on."})
    train_dir: str | None = field(default=None, metadata={"help": "Local image folder (one subfolder per class)."})
    data_files: list[str] | None = field(
        default=None, metadata={"help": "Local webdataset .tar shards or .parquet files (globs allowed)."}
    )
    image_column: str | None = field(
        default=None, metadata={"help": "Column holding the images; found automatically (image, jpg, img, ...)."}
    )
    shuffle_buffer_size: int = field(default=10_000, metadata={"help": "Examples in each process's shuffle buffer."})
    dataloader_num_workers: int = field(
        default=8, metadata={"help": "Loader workers per process (decode, crop and masks); at most the shard count."}
    )
    crop_min_scale: float = field(default=0.4, metadata={"help": "RandomResizedCrop's smallest area fraction."})
    color_jitter: float = field(default=0.4, metadata={"help": "Brightness, contrast and saturation jitter (0: off)."})
    num_demo_images: int = field(
        default=0,
        metadata={
            "help": "Offline demo: when > 0 and train_dir does not exist yet, first write this many crops of the two "
            "photos shipped with scikit-learn there (no download)."
        },
    )


@dataclass
class PretrainingArguments:
    """Optimisation, schedule, precision, checkpoints and logging. Steps count optimizer updates."""

    output_dir: str = field(
        default="outputs/caev2-pretraining",
        metadata={"help": "Receives checkpoints/, logs/ (TensorBoard) and final/ (encoder, processor, card)."},
    )
    seed: int = field(default=0, metadata={"help": "Seeds the initial weights, the shuffle, the crops and the masks."})
    per_device_train_batch_size: int = field(default=256, metadata={"help": "Images per process per micro-batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer update."})
    learning_rate: float = field(
        default=1.5e-3, metadata={"help": "Peak lr at an effective batch of learning_rate_batch_size (linear rule)."}
    )
    learning_rate_batch_size: int = field(
        default=2048,
        metadata={
            "help": "The run uses learning_rate * effective_batch_size / learning_rate_batch_size, where "
            "effective_batch_size = per_device_train_batch_size * gradient_accumulation_steps * processes."
        },
    )
    min_learning_rate: float = field(default=1e-5, metadata={"help": "Floor of the cosine decay (absolute)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    weight_decay: float = field(default=0.05, metadata={"help": "Decay of matrices and tokens; none on 1-D tensors."})
    max_grad_norm: float = field(default=3.0, metadata={"help": "Gradient-norm clipping; 0 logs the norm only."})
    max_steps: int | None = field(
        default=None, metadata={"help": "Optimizer updates to run; or give num_train_epochs and num_train_examples."}
    )
    num_train_epochs: float | None = field(
        default=None,
        metadata={"help": "Epochs, turned into updates with num_train_examples (a stream has no length)."},
    )
    num_train_examples: int | None = field(
        default=None, metadata={"help": "Images in the training split (ImageNet-1k: 1,281,167)."}
    )
    warmup_steps: int | None = field(default=None, metadata={"help": "Linear warmup, in updates."})
    warmup_epochs: float | None = field(default=None, metadata={"help": "Linear warmup, in epochs."})
    mixed_precision: str | None = field(
        default=None, metadata={"help": "no, fp16 or bf16; by default the launcher's setting (accelerate config)."}
    )
    torch_compile: bool = field(
        default=False, metadata={"help": "Compile the model with torch.compile (static shapes: fixed mask count)."}
    )
    logging_steps: int = field(default=50, metadata={"help": "Read losses on the host and log every N updates."})
    save_steps: int = field(default=2500, metadata={"help": "Checkpoint every N updates (and at the end)."})
    save_total_limit: int = field(default=3, metadata={"help": "Checkpoints kept; older ones are deleted."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "'latest' (the newest complete checkpoint in output_dir, or a fresh start) or a path."},
    )
    max_consecutive_skipped_steps: int = field(
        default=10,
        metadata={
            "help": "Stop after this many updates in a row skipped for a non-finite loss or gradient norm (under fp16 "
            "the loss scaler's overflow skips count too; they come one at a time after its first few updates)."
        },
    )
    report_to: str = field(
        default="tensorboard", metadata={"help": "Accelerate tracker ('tensorboard', 'none', ...)."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload final/ to hub_model_id (token: HF_TOKEN)."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository, e.g. my-org/caev2-vit-base."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})

    def __post_init__(self) -> None:
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision={self.mixed_precision!r}: choose one of {MIXED_PRECISIONS}.")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (e.g. my-org/caev2-vit-base).")
        for name in ("logging_steps", "save_steps", "save_total_limit", "max_consecutive_skipped_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1.")


ARGUMENT_CLASSES = (PretrainingModelArguments, PretrainingDataArguments, PretrainingArguments)


def parse_pretraining_arguments(
    argv: list[str] | None = None,
) -> tuple[PretrainingModelArguments, PretrainingDataArguments, PretrainingArguments]:
    """`--config file.yaml` sets the values, then every other `--name value` overrides them."""
    return parse_arguments_with_config(ARGUMENT_CLASSES, argv)
