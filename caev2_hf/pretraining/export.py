# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""The end of a pretraining run: `final/` (encoder, image processor, model card; never the teacher) with
`final/pretraining/` (the full CAEv2ForPreTraining with its teacher, to continue pretraining without a download),
and its upload to the Hub in the background: the encoder folder only (pretraining/ when asked), private unless told."""

import os
import shutil
from concurrent.futures import Future

import torch
from accelerate import Accelerator
from huggingface_hub import HfApi

from ..hub.model_card import write_model_card
from ..hub.publish import check_matches_preset, push_folder
from ..modeling_caev2 import CAEv2ForPreTraining
from .checkpointing import replace_folder


PRETRAINING_SUBFOLDER = "pretraining"
INCOMPLETE_SUFFIX = ".incomplete"  # final/ is written under this name and renamed when complete
RANDOM_TEACHER_WARNING = (
    "**Trained against a randomly initialised teacher** (`use_random_teacher=True`, e.g. the offline demo): the "
    "targets carry no knowledge, so these features are not useful. This checkpoint only shows that the pipeline runs."
)


def describe_data_source(
    dataset_name: str | None, train_dir: str | None, data_files: list[str] | None, demo_dir: str | None
) -> str:
    """The pretraining data as a card may name them: a Hub id, or what kind of local data (a folder's base name at
    most), never a local path, which says nothing to a reader and may say too much about the machine."""
    if dataset_name:
        return f"`{dataset_name}`"
    if demo_dir:
        return "the offline demo's images (crops of the two sample photos scikit-learn ships)"
    if train_dir:
        return f"a local image folder (`{os.path.basename(os.path.normpath(train_dir))}`)"
    count = len(data_files or [])
    return f"local shards ({count} file{'s' if count != 1 else ''})"


def describe_training(
    size: str | None, schedule: dict, final_loss: float | None, data_source: str, use_random_teacher: bool
) -> str:
    """The card's "This checkpoint" paragraph: what ran, on what, and how the loss ended."""
    text = (
        f"Pretrained with `run_pretrain.py`{f' (ViT-{size.capitalize()})' if size else ''} on {data_source}: "
        f"{schedule['max_steps']:,} updates at an effective batch of {schedule['effective_batch_size']:,} "
        f"({schedule['num_processes']} process(es)), peak lr {schedule['learning_rate']:.3g} after "
        f"{schedule['warmup_steps']:,} warmup updates, cosine decay."
    )
    if final_loss is not None:
        text += f" Training loss at the end: {final_loss:.4f}."
    return text + (f"\n\n{RANDOM_TEACHER_WARNING}" if use_random_teacher else "")


def preset_of(config, preset: str | None) -> str | None:
    """The preset name when the trained architecture is exactly that preset's (the card then quotes the paper)."""
    if preset is None:
        return None
    try:
        check_matches_preset(config, preset)
    except ValueError:
        return None
    return preset


def export_final_model(
    accelerator: Accelerator,
    model: torch.nn.Module,
    final_dir: str,
    size: str | None,
    model_id: str | None,
    datasets: list[str],
    training_details: str,
    mask_strategy: str = "block",
) -> str:
    """Saves the encoder + processor + card in `final_dir` and the pretraining model in its `pretraining/`.

    `size` is an official preset the architecture matches exactly (see `preset_of`), or None; `mask_strategy` is
    the run's (the card names it). Called on every
    process: the full state dict is gathered first (needed under FSDP), the main process writes. The folder is
    written as `final_dir.incomplete` and renamed when complete, so a crash never leaves a partial `final_dir` (an
    existing one, e.g. a finished run's that is exported again, is replaced only then). Without `model_id` the card
    is named after the run's folder and its usage snippets load `final_dir` itself, the folder that holds the model.
    """
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        temporary = os.path.normpath(final_dir) + INCOMPLETE_SUFFIX
        shutil.rmtree(temporary, ignore_errors=True)  # left by a crash while exporting
        pretraining_model: CAEv2ForPreTraining = accelerator.unwrap_model(model)
        prefix = pretraining_model.base_model_prefix + "."
        encoder_state = {
            key.removeprefix(prefix): value for key, value in state_dict.items() if key.startswith(prefix)
        }  # before the next save: save_pretrained empties the state dict it is given as it writes
        pretraining_model.save_pretrained(os.path.join(temporary, PRETRAINING_SUBFOLDER), state_dict=state_dict)
        encoder = pretraining_model.caev2
        encoder.save_pretrained(temporary, state_dict=encoder_state)
        write_model_card(
            temporary,
            encoder.config,
            size=size,
            model_id=model_id or os.path.basename(os.path.dirname(os.path.abspath(final_dir))),
            usage_path=model_id or final_dir,
            datasets=datasets,
            training_details=training_details,
            mask_strategy=mask_strategy,
        )
        replace_folder(temporary, final_dir)
    accelerator.wait_for_everyone()
    return final_dir


def push_to_hub_in_background(folder: str, repo_id: str, private: bool, include_pretraining: bool = False) -> Future:
    """Starts the upload of `folder` on a background thread and returns its Future: the encoder folder, and its
    `pretraining/` (regressor, head and the frozen CLIP teacher) only with `include_pretraining`.

    The token comes from the environment (`HF_TOKEN`) or a saved `hf auth login`, never from an argument.
    """
    part = (PRETRAINING_SUBFOLDER,)
    return HfApi().run_as_future(
        push_folder, folder, repo_id, private=private, include=part if include_pretraining else (),
        leave_out=() if include_pretraining else part, commit_message="Upload CAE v2 pretrained with run_pretrain.py",
    )  # fmt: skip
