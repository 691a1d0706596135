# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
r"""Linear probing of a frozen encoder: the authors' protocol (`official`) or one over cached features (`fast`).

    python run_linear_probe.py configs/linear-probe-vit-base.yaml --model outputs/caev2-vit-base/final
    accelerate launch --num_processes 8 run_linear_probe.py configs/linear-probe-vit-base.yaml   # official, 8 GPUs
    python run_linear_probe.py configs/linear-probe-vit-base.yaml --protocol fast --cache_dir features
    python run_linear_probe.py --model my-encoder --train_dir data/train --validation_dir data/val \
        --protocol fast --batch_size 256 --output_dir probe --update_model_card true

Writes `results.json` (top-1 / top-5) and, for a CAE v2 encoder, a `CAEv2ForImageClassification` folder that
`pipeline("image-classification", model=output_dir)` runs.

An output_dir that holds another run's results is refused unless --overwrite_output_dir true, which deletes them
when the new ones are written.

The arguments are parsed once, before torch is imported (`--help` and a bad argument answer at once), and handed to
`main`; a data source on the command line replaces the YAML file's for its split (`caev2_hf_cli/classification.py`).
"""

import os
import time

from caev2_hf_cli.checks import check_encoder_folder, check_model_path
from caev2_hf_cli.classification import ImageDataArguments, ProbeArguments, ProbeModelArguments
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.outputs import OutputFolderArguments, check_output_dir
from caev2_hf_cli.parsing import parse_arguments, run_command


ARGUMENT_CLASSES = (ProbeModelArguments, ImageDataArguments, ProbeArguments, OutputFolderArguments)


def parse_and_check_arguments(
    argv: list[str] | None = None,
) -> tuple[ProbeModelArguments, ImageDataArguments, ProbeArguments, OutputFolderArguments]:
    """The arguments, checked before anything heavy is imported or loaded: a bad one costs a second."""
    model_args, data_args, probe_args, output_folder = parse_arguments(ARGUMENT_CLASSES, argv, description=__doc__)
    check_model_path(model_args.model)
    check_encoder_folder(model_args.model)
    if model_args.update_model_card and not os.path.isdir(model_args.model):
        raise UserError(f"--update_model_card edits README.md in a local folder; {model_args.model} is not one.")
    data_args.check()
    check_output_dir(probe_args.output_dir, output_folder.overwrite_output_dir, resumable=False)
    return model_args, data_args, probe_args, output_folder


if __name__ == "__main__":  # parsed and checked before the heavy imports below
    ARGUMENTS = run_command(parse_and_check_arguments)

from accelerate import Accelerator
from transformers import set_seed

from caev2_hf.evaluation.classification.frozen_encoder import open_frozen_encoder
from caev2_hf.evaluation.classification.probe import run_probe
from caev2_hf.evaluation.classification.probe_outputs import (
    build_probe_eval_results,
    format_probe_summary,
    save_probe_outputs,
)
from caev2_hf.hub.model_card import add_eval_results
from caev2_hf.plots import plot_probe_curves
from caev2_hf_cli.outputs import clear_previous_run


def main(
    model_args: ProbeModelArguments,
    data_args: ImageDataArguments,
    probe_args: ProbeArguments,
    output_folder: OutputFolderArguments,
) -> dict:
    """Probes on arguments from `parse_and_check_arguments`; returns what results.json holds."""
    accelerator = Accelerator()
    set_seed(probe_args.seed)
    encoder = open_frozen_encoder(model_args.model, accelerator.device)
    start = time.perf_counter()
    result = run_probe(accelerator, encoder, data_args, probe_args)
    results = {
        "protocol": probe_args.protocol,
        "model": model_args.model,
        "dataset": data_args.dataset_id,
        **result.to_json(),
        "batch_size": probe_args.batch_size,
        "epochs": probe_args.epochs,
        "warmup_epochs": probe_args.warmup_epochs,
        "runtime_seconds": round(time.perf_counter() - start, 2),
    }
    if accelerator.is_main_process:
        if output_folder.overwrite_output_dir:  # only now: a probe that fails leaves the previous one whole
            clear_previous_run(probe_args.output_dir)
        outputs = save_probe_outputs(probe_args.output_dir, encoder.model, result, results)
        summary = format_probe_summary(result, outputs, model_args.model)
        if model_args.update_model_card:
            split = data_args.validation_split if data_args.dataset_name else "validation"
            add_eval_results(model_args.model, build_probe_eval_results(result, data_args.dataset_id, split))
            summary += f"\n  card:    {os.path.join(model_args.model, 'README.md')} (model-index updated)"
        curves = plot_probe_curves(results, os.path.join(probe_args.output_dir, "accuracy.png"))
        summary += f"\n  curves:  {curves} (accuracy per epoch and learning rate)" if curves else ""
        print(summary)
    return results


if __name__ == "__main__":
    run_command(main, *ARGUMENTS)
