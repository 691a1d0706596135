# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Arguments of `run_pretrain.py`: model, data and training dataclasses, and the checks made before a run starts.

`caev2_hf_cli.parsing.parse_arguments(ARGUMENT_CLASSES, argv)` reads them: command line > YAML file (`--config`) >
the defaults below. The YAML file is one flat mapping whose keys are the field names of the three dataclasses (see
`configs/*.yaml`). The checks that need the model code (the preset and its overrides) run at the start of the
script's `main`.
"""

import glob
import json
import os
from dataclasses import dataclass, field

from . import hub_access
from .checks import CONFIG_NAME, check_image_folder, check_model_path, check_positive, check_preset, parse_json_mapping
from .errors import UserError
from .parsing import ALTERNATIVES, MERGED_MAPPING, PART_OF


MIXED_PRECISIONS = ("no", "fp16", "bf16")
MASK_STRATEGIES = ("block", "random")
MASK_LAYOUT_ARGUMENTS = ("mask_strategy", "mask_min_num_patches", "mask_min_aspect")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


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
            "on the command line, where its keys replace those of the config file's mapping and keep the others). "
            "`teacher_config` takes a CLIPVisionConfig mapping.",
            MERGED_MAPPING: True,
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
        check_preset(self.model_preset, "--model_preset")
        self.config_overrides = parse_json_mapping(
            self.config_overrides, "config_overrides", '{"drop_path_rate": 0.0}'
        )
        moved = [name for name in MASK_LAYOUT_ARGUMENTS if name in (self.config_overrides or {})]
        if moved:
            raise UserError(
                f"--config_overrides: {moved[0]} is a data argument, not a model field (the model needs only "
                f"num_masking_patches): give it as --{moved[0]} {self.config_overrides[moved[0]]} (a top-level key in "
                "a YAML file)."
            )


@dataclass
class PretrainingDataArguments:
    """Where the images come from and how they are augmented (docs/method.md#recipes). Give exactly one source
    (`dataset_name`, `train_dir`, `data_files` or `demo_dir`); a source on the command line replaces the config
    file's, with the file's `dataset_config_name`."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset streamed from the Hub, e.g. timm/imagenet-1k-wds or ILSVRC/imagenet-1k.",
            ALTERNATIVES: "source",
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Hub dataset configuration, if any.", PART_OF: "source"}
    )
    train_split: str = field(default="train", metadata={"help": "Split to pretrain on."})
    train_dir: str | None = field(
        default=None,
        metadata={
            "help": "Local image folder (one subfolder per class), streamed as up to 1,024 shards of files.",
            ALTERNATIVES: "source",
        },
    )
    data_files: list[str] | None = field(
        default=None,
        metadata={"help": "Local webdataset .tar shards or .parquet files (globs allowed).", ALTERNATIVES: "source"},
    )
    image_column: str | None = field(
        default=None, metadata={"help": "Column holding the images; found automatically (image, jpg, img, ...)."}
    )
    shuffle_buffer_size: int = field(
        default=10_000,
        metadata={"help": "Undecoded examples in each loader worker's shuffle buffer (redrawn every epoch)."},
    )
    dataloader_num_workers: int = field(
        default=8,
        metadata={
            "help": "Loader workers per process (decode, crop, masks; flip and jitter run on the device); at most the "
            "shard count. Resume with the same count."
        },
    )
    dataloader_prefetch_factor: int = field(
        default=2,
        metadata={
            "help": "Batches each loader worker prepares ahead. Workers never stop at epoch boundaries; raise this if "
            "the step still waits while a worker refills its shuffle buffer (costs shared memory: a Base batch of "
            "256 is 38.5 MB)."
        },
    )
    crop_min_scale: float = field(default=0.4, metadata={"help": "RandomResizedCrop's smallest area fraction."})
    mask_strategy: str = field(
        default="block",
        metadata={
            "help": "Where the model's num_masking_patches masked patches lie: block (BEiT's block-wise masking, the "
            "recipes') or random (uniform, the paper's Table 3)."
        },
    )
    mask_min_num_patches: int = field(
        default=16, metadata={"help": "Block masking: smallest target area of one block, in patches."}
    )
    mask_min_aspect: float = field(
        default=0.3, metadata={"help": "Block masking: smallest block aspect ratio (the largest is its inverse)."}
    )
    color_jitter: float = field(default=0.4, metadata={"help": "Brightness, contrast and saturation jitter (0: off)."})
    demo_dir: str | None = field(
        default=None,
        metadata={
            "help": "Offline demo (configs/demo.yaml): the demo's own image folder, a data source like train_dir. If "
            "it does not exist yet, num_demo_images crops of the two photos shipped with scikit-learn are written "
            "there first (no download). Images are never written into train_dir.",
            ALTERNATIVES: "source",
        },
    )
    num_demo_images: int = field(default=0, metadata={"help": "Offline demo: how many images to write in demo_dir."})


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
    lr_scheduler_type: str = field(
        default="cosine_with_min_lr",
        metadata={
            "help": "Warmup + cosine schedule: cosine_with_min_lr (transformers': warmup update k of W gets k / W of "
            "the peak) or authors_cosine (the authors': k / (W - 1), the peak one update earlier; the recipes' "
            "choice, docs/method.md#recipes)."
        },
    )
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
    torch_compile_mode: str | None = field(
        default=None,
        metadata={
            "help": "torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune or "
            "max-autotune-no-cudagraphs. Setting it turns torch_compile on."
        },
    )
    masks_per_image: int = field(
        default=1,
        metadata={
            "help": "Teacher amortisation: the student sees each image under this many masks per teacher pass (the "
            "batch then holds per_device_train_batch_size x this student samples). 1 is the authors' recipe."
        },
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
    torch_num_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch's intra-op threads in each process (torch.set_num_threads); unset: torch's default (the "
            "core count, or OMP_NUM_THREADS). The CPU demo sets 1: its small ops gain nothing from a second thread, "
            "which waits whenever another process holds a core (BENCHMARKS.md#offline-demos)."
        },
    )
    push_to_hub: bool = field(
        default=False,
        metadata={
            "help": "Upload final/ (the encoder, processor and card) to hub_model_id at the end. The token (HF_TOKEN "
            "or `hf auth login`), the network and the right to write the repository are checked before training."
        },
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository, e.g. my-org/caev2-vit-base."})
    hub_private_repo: bool = field(
        default=True,
        metadata={
            "help": "Create the Hub repository as private (the default: the upload happens unattended, at the end of "
            "a run); false makes a new repository public. An existing repository keeps its visibility."
        },
    )
    hub_include_pretraining: bool = field(
        default=False,
        metadata={"help": "Also upload final/pretraining/ (regressor, head and the frozen CLIP teacher's weights)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in an output_dir that holds another run (its checkpoints/ and final/ are deleted; "
            "logs/ keeps one subfolder per run). Without it such a folder is refused unless resuming. A folder a live "
            "run holds is refused either way."
        },
    )

    def __post_init__(self) -> None:
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISIONS:
            raise UserError(f"--mixed_precision {self.mixed_precision}: choose one of {', '.join(MIXED_PRECISIONS)}.")
        if self.torch_compile_mode is not None:
            if self.torch_compile_mode not in COMPILE_MODES:
                raise UserError(
                    f"--torch_compile_mode {self.torch_compile_mode}: choose one of {', '.join(COMPILE_MODES)}."
                )
            self.torch_compile = True
        if self.lr_scheduler_type not in ("cosine_with_min_lr", "authors_cosine"):
            raise UserError(
                f"--lr_scheduler_type {self.lr_scheduler_type}: choose cosine_with_min_lr or authors_cosine."
            )
        if self.push_to_hub and not self.hub_model_id:
            raise UserError("--push_to_hub needs --hub_model_id (e.g. my-org/caev2-vit-base).")
        check_positive(
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            masks_per_image=self.masks_per_image,
            learning_rate=self.learning_rate,
            learning_rate_batch_size=self.learning_rate_batch_size,
            max_steps=self.max_steps,
            num_train_epochs=self.num_train_epochs,
            num_train_examples=self.num_train_examples,
            adam_epsilon=self.adam_epsilon,
        )
        for name in ("min_learning_rate", "weight_decay", "max_grad_norm", "warmup_steps", "warmup_epochs"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise UserError(f"--{name} {getattr(self, name)}: must be 0 or more.")
        if self.torch_num_threads is not None and self.torch_num_threads < 1:
            raise UserError(f"--torch_num_threads {self.torch_num_threads}: give 1 or more, or leave it unset.")
        for name in ("logging_steps", "save_steps", "save_total_limit", "max_consecutive_skipped_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} {getattr(self, name)}: must be at least 1.")


ARGUMENT_CLASSES = (PretrainingModelArguments, PretrainingDataArguments, PretrainingArguments)


RUN_FOLDERS = ("checkpoints", "final")  # what makes an output_dir hold a run (logs/ has one subfolder per run)


def find_previous_run(output_dir: str) -> list[str]:
    """The folders of `output_dir` that a previous run wrote (checkpoints/ with something in it, final/)."""
    return [
        name
        for name in RUN_FOLDERS
        if os.path.isdir(os.path.join(output_dir, name)) and os.listdir(os.path.join(output_dir, name))
    ]


def check_data_source(data_args: PretrainingDataArguments, batch_size: int, num_processes: int = 1) -> None:
    """Exactly one data source, and a local one that exists and holds a batch of images for every loader worker of
    every process: each worker batches its own share of the files alone (a folder of N images is N shards, and a
    process has no more workers than shards)."""
    workers = max(1, data_args.dataloader_num_workers)
    images_per_batch = batch_size * num_processes * workers  # enough for any folder
    sources = {
        "--dataset_name": data_args.dataset_name,
        "--train_dir": data_args.train_dir,
        "--data_files": data_args.data_files,
        "--demo_dir": data_args.demo_dir,
    }
    given = {flag: value for flag, value in sources.items() if value}
    if not given:
        raise UserError(
            "No training data: give --train_dir DIR (an image folder), --data_files SHARDS (.tar/.parquet) or "
            "--dataset_name HUB_ID; or run the offline demo, --config configs/demo.yaml."
        )
    if len(given) > 1:
        listing = " and ".join(f"{flag} {value}" for flag, value in given.items())
        raise UserError(f"Give one data source, not {len(given)}: {listing}. Keep the one you mean.")
    num_images = None
    if data_args.train_dir:
        num_images = check_image_folder(data_args.train_dir, "--train_dir", at_least=images_per_batch)
    elif data_args.data_files:
        for pattern in data_args.data_files:
            if not glob.glob(pattern):
                raise UserError(f"--data_files {pattern}: no such file. Check the path or the glob pattern.")
            if not pattern.endswith((".tar", ".parquet")):
                raise UserError(
                    f"--data_files {pattern}: give .tar (webdataset) or .parquet shards; for a folder of images, "
                    "use --train_dir."
                )
    elif data_args.demo_dir:
        if os.path.exists(data_args.demo_dir):
            num_images = check_image_folder(data_args.demo_dir, "--demo_dir", at_least=images_per_batch)
        elif data_args.num_demo_images < 1:
            raise UserError(
                f"--demo_dir {data_args.demo_dir} does not exist and --num_demo_images is {data_args.num_demo_images}:"
                " set --num_demo_images (e.g. 128) to write the demo's images there, or use --train_dir for yours."
            )
        else:
            num_images = data_args.num_demo_images
    if num_images is None or num_images >= images_per_batch:
        return
    workers = max(1, min(workers, num_images // num_processes))  # the loader's own cap: one shard at least each
    if num_images // (num_processes * workers) < batch_size:
        fix = "lower --per_device_train_batch_size" + (" or --dataloader_num_workers" if workers > 1 else "")
        raise UserError(
            f"The data holds {num_images} image{'s' if num_images != 1 else ''}, fewer than a batch of {batch_size} "
            f"for each of {num_processes} process(es) x {workers} loader worker(s) "
            f"({batch_size * num_processes * workers} images): {fix}, or add images."
        )


def check_mask_layout(strategy: str, min_num_patches: int, min_aspect: float) -> None:
    """The mask layout arguments (`--mask_strategy`, `--mask_min_num_patches`, `--mask_min_aspect`)."""
    if strategy not in MASK_STRATEGIES:
        raise UserError(f"--mask_strategy {strategy}: choose one of {', '.join(MASK_STRATEGIES)}.")
    if min_num_patches < 1:
        raise UserError(f"--mask_min_num_patches {min_num_patches}: must be at least 1 (16 in CAE v2 and BEiT).")
    if not 0 < min_aspect <= 1:
        raise UserError(
            f"--mask_min_aspect {min_aspect}: must lie in (0, 1] (the largest aspect is its inverse; CAE v2: 0.3)."
        )


def check_pretraining_folder(path: str) -> None:
    """`--model_name_or_path` must be a saved `CAEv2ForPreTraining` (or a Hub id): an encoder folder (`final/`)
    lacks the regressor and head, which would start random, and a checkpoint folder holds no config."""
    fix = "a saved CAEv2ForPreTraining, e.g. a previous run's final/pretraining"
    check_model_path(path, "--model_name_or_path", expected=fix)
    if not os.path.isdir(path):
        return  # a Hub id, in the cache or found on the Hub
    with open(os.path.join(path, CONFIG_NAME)) as file:
        architectures = json.load(file).get("architectures") or []
    if architectures and "CAEv2ForPreTraining" not in architectures:
        raise UserError(
            f"--model_name_or_path {path} holds a {architectures[0]}, without the regressor and head pretraining "
            f"continues: give {fix}."
        )


def check_pretraining_arguments(
    model_args: PretrainingModelArguments,
    data_args: PretrainingDataArguments,
    training_args: PretrainingArguments,
    num_processes: int | None = None,
) -> None:
    """What can be checked before torch is imported: the data source, the sizes, the output folder and, with
    --push_to_hub, the upload (token, network, repository: asked of the Hub by the first process only); the model
    config is checked at the start of `run_pretrain.main`, with the model code.

    `num_processes` defaults to the launcher's WORLD_SIZE (what the Accelerator will join). Raises `UserError`.
    """
    num_processes = num_processes or int(os.environ.get("WORLD_SIZE", "1"))
    check_positive(
        shuffle_buffer_size=data_args.shuffle_buffer_size,
        crop_min_scale=data_args.crop_min_scale,
    )
    check_mask_layout(data_args.mask_strategy, data_args.mask_min_num_patches, data_args.mask_min_aspect)
    if data_args.dataloader_num_workers < 0 or data_args.num_demo_images < 0:
        raise UserError("--dataloader_num_workers and --num_demo_images must be 0 or more.")
    if model_args.model_name_or_path:
        check_pretraining_folder(model_args.model_name_or_path)
    if os.path.exists(training_args.output_dir) and not os.path.isdir(training_args.output_dir):
        raise UserError(
            f"--output_dir {training_args.output_dir} is a file: give a folder (it is created if missing)."
        )
    if training_args.max_steps is None and None in (training_args.num_train_epochs, training_args.num_train_examples):
        raise UserError(
            "The run has no length: give --max_steps N, or --num_train_epochs E with --num_train_examples N "
            "(a stream has no length)."
        )
    check_data_source(data_args, training_args.per_device_train_batch_size, num_processes)
    previous = find_previous_run(training_args.output_dir)
    if previous and not (training_args.resume_from_checkpoint or training_args.overwrite_output_dir):
        raise UserError(
            f"--output_dir {training_args.output_dir} holds another run ({', '.join(name + '/' for name in previous)})."
            " Continue it with --resume_from_checkpoint latest, start afresh with --overwrite_output_dir, or choose "
            "another --output_dir."
        )
    if training_args.push_to_hub:
        first_process = os.environ.get("RANK", "0") == "0"
        later = ", or leave out --push_to_hub and upload final/ after the run with `caev2-hub push`"
        hub_access.check_hub_upload(training_args.hub_model_id, "--hub_model_id", first_process, later)
