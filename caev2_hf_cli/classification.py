# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Arguments of `run_linear_probe.py` and `run_finetune.py`, read from a YAML file plus command-line overrides.

Nothing heavy is imported here (the standard library and `caev2_hf.cli`), so a script's `--help` stays fast: the probe and fine-tuning modules
(torch, transformers) take these objects but are imported only when a run starts. The data arguments
(`ImageDataArguments`) live with the data they open, in `labelled_data`.
"""

import os
from dataclasses import dataclass, field
from typing import Literal

from ..cli import UserError, check_positive


@dataclass
class ProbeModelArguments:
    """Which encoder `run_linear_probe.py` probes, and whether its card gets the result."""

    model: str = field(
        metadata={"help": "Hub id or folder: a CAE v2 checkpoint of any head, or any transformers vision encoder."}
    )
    update_model_card: bool = field(
        default=False, metadata={"help": "Add top-1 / top-5 to the model-index of README.md in the --model folder."}
    )


@dataclass
class ProbeArguments:
    """How the linear probe trains its head (both protocols) and where it writes its results."""

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

    def __post_init__(self) -> None:
        """Refuses values no run can use, at parse time: before any model or data is opened."""
        check_positive(batch_size=self.batch_size, epochs=self.epochs, encoder_batch_size=self.encoder_batch_size)
        check_positive(base_learning_rate=self.base_learning_rate)
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise UserError(
                f"--warmup_epochs {self.warmup_epochs}: must lie between 0 (no warmup) and --epochs {self.epochs}; "
                "for a short run, lower --warmup_epochs too."
            )
        if not self.fast_base_learning_rates or min(self.fast_base_learning_rates) <= 0:
            raise UserError(
                f"--fast_base_learning_rates {self.fast_base_learning_rates}: give one or more values > 0."
            )
        if not 0 < self.holdout_fraction < 1:
            raise UserError(f"--holdout_fraction {self.holdout_fraction}: must lie strictly between 0 and 1.")
        if self.num_workers < 0:
            raise UserError(f"--num_workers {self.num_workers}: must be 0 (load in the main process) or more.")

    def learning_rate(self, base_learning_rate: float) -> float:
        """The linear scaling rule of the recipe: base lr x global batch / 256."""
        return base_learning_rate * self.batch_size / 256


@dataclass
class FineTuningModelArguments:
    """Which CAE v2 checkpoint `run_finetune.py` fine-tunes, and the model side of the recipe."""

    model: str = field(metadata={"help": "Hub id or folder of a CAE v2 checkpoint (any head) to fine-tune."})
    layer_decay: float = field(default=0.75, metadata={"help": "lr scale decay per block from the head down."})
    drop_path_rate: float = field(default=0.1, metadata={"help": "Stochastic depth at the last block."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Replace a checkpoint head whose class count differs from the dataset's."}
    )


@dataclass
class AugmentationArguments:
    """The fine-tuning recipe's data side: RandAugment, random erasing, mixup / cutmix and label smoothing."""

    rand_augment_magnitude: int = field(default=9, metadata={"help": "RandAugment magnitude out of 10; 0 = off."})
    random_erasing: float = field(default=0.25, metadata={"help": "Random erasing probability."})
    mixup: float = field(default=0.8, metadata={"help": "Mixup alpha (0 = off)."})
    cutmix: float = field(default=1.0, metadata={"help": "CutMix alpha (0 = off)."})
    mixup_switch_probability: float = field(
        default=0.5, metadata={"help": "With both mixup and cutmix on: the chance that a batch gets cutmix."}
    )
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing (inside the mixup targets)."})

    def __post_init__(self) -> None:
        """Refuses values outside their range at parse time, before the model is loaded."""
        if not 0 <= self.rand_augment_magnitude <= 10:
            raise UserError(f"--rand_augment_magnitude {self.rand_augment_magnitude}: must lie in [0, 10].")
        for name in ("random_erasing", "mixup_switch_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"--{name} {getattr(self, name)}: a probability, must lie in [0, 1].")
        if min(self.mixup, self.cutmix) < 0:
            raise UserError(f"--mixup {self.mixup} / --cutmix {self.cutmix}: Beta alphas, must be >= 0 (0 = off).")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"--label_smoothing {self.label_smoothing}: must lie in [0, 1).")
