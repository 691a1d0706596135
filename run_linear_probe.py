# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Linear probing of a frozen encoder: the authors' protocol (`official`) or one over cached features (`fast`).

    python run_linear_probe.py configs/linear-probe-vit-base.yaml --model outputs/caev2-vit-base/final
    accelerate launch --num_processes 8 run_linear_probe.py configs/linear-probe-vit-base.yaml   # official, 8 GPUs
    python run_linear_probe.py configs/linear-probe-vit-base.yaml --protocol fast --cache_dir features
    python run_linear_probe.py --model my-encoder --train_dir data/train --validation_dir data/val \
        --protocol fast --batch_size 256 --output_dir probe --update_model_card true

Writes `results.json` (top-1 / top-5) and, for a CAE v2 encoder, a `CAEv2ForImageClassification` folder that
`pipeline("image-classification", model=output_dir)` runs.
"""

import os
import time
from dataclasses import dataclass, field
from typing import Literal

from accelerate import Accelerator
from transformers import PreTrainedModel, set_seed

from caev2_hf.cli import parse_arguments_with_config
from caev2_hf.evaluation.frozen_encoder import EncoderPreprocessing, load_frozen_encoder, read_preprocessing
from caev2_hf.evaluation.labelled_data import ImageDataArguments
from caev2_hf.evaluation.metrics import compute_topk_accuracy
from caev2_hf.evaluation.probe import run_fast_probe, run_official_probe
from caev2_hf.evaluation.probe_outputs import build_probe_eval_results, save_probe_outputs
from caev2_hf.hub.model_card import add_eval_results


@dataclass
class ProbeModelArguments:
    model: str = field(
        metadata={"help": "Hub id or folder: a CAE v2 checkpoint of any head, or any transformers vision encoder."}
    )
    update_model_card: bool = field(
        default=False, metadata={"help": "Add top-1 / top-5 to the model-index of README.md in the --model folder."}
    )


@dataclass
class ProbeArguments:
    output_dir: str = field(metadata={"help": "Where results.json and the probed classifier are written."})
    protocol: Literal["official", "fast"] = field(
        default="official", metadata={"help": "official: 90 augmented epochs; fast: a grid over cached features."}
    )
    batch_size: int = field(default=8192, metadata={"help": "Global batch (16384 for Tiny, 8192 Small/Base)."})
    base_learning_rate: float = field(default=0.1, metadata={"help": "official: lr = this x batch_size / 256."})
    epochs: int = field(default=90, metadata={"help": "Training epochs (both protocols)."})
    warmup_epochs: int = field(default=10, metadata={"help": "Linear warmup epochs before the cosine decay."})
    fast_base_learning_rates: list[float] = field(
        default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0],
        metadata={"help": "fast: one head per base learning rate, trained at once."},
    )
    holdout_fraction: float = field(default=0.1, metadata={"help": "fast: share of train that selects the head."})
    cache_dir: str = field(
        default=os.path.join("~", ".cache", "caev2_hf", "probe_features"),
        metadata={"help": "fast: feature cache, keyed by model weights, data and transform."},
    )
    encoder_batch_size: int = field(default=512, metadata={"help": "Images per encoder forward (memory bound)."})
    num_workers: int = field(default=8, metadata={"help": "Data loader workers (at most one per shard)."})
    seed: int = field(default=0, metadata={"help": "Seed of the head init, shuffling and crops."})


def run_protocol(
    accelerator: Accelerator,
    encoder: PreTrainedModel,
    model_name: str,
    preprocessing: EncoderPreprocessing,
    data_args: ImageDataArguments,
    probe_args: ProbeArguments,
) -> tuple:
    """The chosen protocol end to end: (head, ranked validation predictions, labels, class names, report)."""
    train_source, validation_source = data_args.data_sources()
    if probe_args.protocol == "official":
        return run_official_probe(
            accelerator, encoder, preprocessing, train_source, validation_source, probe_args.batch_size,
            probe_args.base_learning_rate, probe_args.epochs, probe_args.warmup_epochs,
            probe_args.encoder_batch_size, probe_args.num_workers, probe_args.seed,
        )  # fmt: skip
    if accelerator.num_processes > 1:
        raise ValueError("The fast protocol runs in one process: launch it with python, not accelerate launch.")
    return run_fast_probe(
        encoder, model_name, preprocessing, train_source, validation_source,
        os.path.expanduser(probe_args.cache_dir), probe_args.fast_base_learning_rates, probe_args.batch_size,
        probe_args.epochs, probe_args.warmup_epochs, probe_args.holdout_fraction, probe_args.encoder_batch_size,
        probe_args.num_workers, probe_args.seed,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, probe_args = parse_arguments_with_config(
        (ProbeModelArguments, ImageDataArguments, ProbeArguments), argv
    )
    if model_args.update_model_card and not os.path.isdir(model_args.model):
        raise ValueError(f"--update_model_card edits README.md in a local folder; {model_args.model} is not one.")
    accelerator = Accelerator()
    set_seed(probe_args.seed)
    encoder = load_frozen_encoder(model_args.model).to(accelerator.device)
    preprocessing = read_preprocessing(encoder, model_args.model)
    start = time.perf_counter()
    head, ranked, labels, class_names, report = run_protocol(
        accelerator, encoder, model_args.model, preprocessing, data_args, probe_args
    )
    results = {
        "protocol": probe_args.protocol,
        "model": model_args.model,
        "dataset": data_args.dataset_id,
        **compute_topk_accuracy(ranked, labels),
        "num_classes": len(class_names),
        "num_validation_examples": len(labels),
        "batch_size": probe_args.batch_size,
        "epochs": probe_args.epochs,
        "warmup_epochs": probe_args.warmup_epochs,
        **report,
        "runtime_seconds": round(time.perf_counter() - start, 2),
    }
    if accelerator.is_main_process:
        save_probe_outputs(probe_args.output_dir, encoder, head, class_names, results)
        if model_args.update_model_card:
            split = data_args.validation_split if data_args.dataset_name else "validation"
            eval_results = build_probe_eval_results(results, data_args.dataset_id, split, probe_args.protocol)
            add_eval_results(model_args.model, eval_results)
    return results


if __name__ == "__main__":
    main()
