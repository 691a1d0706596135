# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Ready-to-push Hub folders (weights, config with auto_map, image processor, remote code, card) and their upload:
the command `caev2-hub prepare|push` (`caev2_hf_cli/hub.py` holds its arguments; `python -m caev2_hf.hub` runs the
same)."""

import argparse
import glob
import json
import logging
import os
import tempfile
from pathlib import Path

from huggingface_hub import HfApi
from transformers import PreTrainedModel

from caev2_hf_cli.errors import UserError
from caev2_hf_cli.hub import (
    CONVERSION_RECORD,
    check_folder_is_prepared,
    check_saved_folder,
    list_folder_files,
    select_upload_files,
)
from caev2_hf_cli.hub_access import describe_hub_error

from .. import modeling_caev2
from ..configuration_caev2 import CAEv2Config
from .model_card import PAPER_URL, read_card_facts, write_model_card


logger = logging.getLogger(__name__)

# Fields that fix the architecture: a folder published under a size must have that preset's values.
ARCHITECTURE_FIELDS = (
    "image_size",
    "patch_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "regressor_hidden_size",
    "regressor_num_hidden_layers",
)


def check_matches_preset(config: CAEv2Config, size: str) -> None:
    """Refuse to publish under a size (and its paper numbers) weights of another architecture."""
    preset = CAEv2Config.from_preset(size)
    differences = [
        f"{field}={getattr(config, field)} (preset {getattr(preset, field)})"
        for field in ARCHITECTURE_FIELDS
        if getattr(config, field) != getattr(preset, field)
    ]
    if differences:
        raise UserError(
            f"The weights are not CAE v2 ViT-{size}: {', '.join(differences)}. Leave out --size for another "
            "architecture (the card then quotes no paper numbers)."
        )


def prepare_folder(
    model: PreTrainedModel,
    output_dir: str | Path,
    size: str | None = None,
    model_id: str | None = None,
    conversion: dict | None = None,
    **card_kwargs,
) -> list[str]:
    """Write the model (`save_pretrained` adds auto_map, code files and image processor) and its card.

    `conversion` is the converter's record (the checkpoint file, its sha256; `released_by_authors`), written to the
    folder as `conversion.json`: the card names the file, and quotes the paper's numbers as these weights' only when
    the record says the authors released it. Other keyword arguments go to `render_model_card` (e.g. `results`,
    `training_details`, `usage_path`).
    """
    if size is not None:
        check_matches_preset(model.config, size)
    model.save_pretrained(output_dir)
    if conversion is not None:
        (Path(output_dir) / CONVERSION_RECORD).write_text(json.dumps(conversion, indent=2) + "\n", encoding="utf-8")
    card_kwargs["authors_weights"] = is_authors_release(conversion)
    write_model_card(output_dir, model.config, size=size, model_id=model_id, conversion=conversion, **card_kwargs)
    check_folder_is_prepared(output_dir)
    return list_folder_files(output_dir)


def read_conversion_record(folder: str | Path) -> dict | None:
    """The converter's record in `folder` (the checkpoint it came from), or None."""
    path = Path(folder) / CONVERSION_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def is_authors_release(conversion: dict | None) -> bool:
    return bool(conversion and conversion.get("released_by_authors"))


def load_caev2_model(weights: str | Path) -> PreTrainedModel:
    """Load a saved CAE v2 folder with the head class it was saved from (`architectures` in its config)."""
    check_saved_folder(weights, "--weights")
    config_file = Path(weights) / "config.json"
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type != CAEv2Config.model_type:
        raise UserError(
            f"--weights {weights} holds a {model_type!r} model, not a CAE v2 ({CAEv2Config.model_type!r})."
        )
    config = CAEv2Config.from_pretrained(weights)
    architecture = (config.architectures or ["CAEv2Model"])[0]
    if architecture not in modeling_caev2.__all__:
        raise UserError(f"{weights} holds a {architecture}, not a CAE v2 model.")
    return getattr(modeling_caev2, architecture).from_pretrained(weights)


def prepare_from_weights(
    weights: str | Path,
    output_dir: str | Path,
    size: str | None = None,
    model_id: str | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Prepare `output_dir` from a saved folder; with `dry_run`, prepare in a temporary folder and only list.

    The new card keeps what the folder's own card knows (`model_card.read_card_facts`: pretraining data, training
    paragraph, evaluations, base model); a folder without a card gets one that names no pretraining data rather than
    a guessed one. The paper's numbers go into the model-index only for the authors' weights, which the converter's
    record in `weights` identifies (`--released_by_authors`; the record is copied along); any other weights, of
    whatever shape, get none, and paper numbers an older card held are dropped. Without `model_id` the usage snippets
    load `output_dir`, where the prepared folder is.
    """
    model = load_caev2_model(weights)
    conversion = read_conversion_record(weights)
    card = {"datasets": [], **read_card_facts(weights), "usage_path": model_id or str(output_dir)}
    if not is_authors_release(conversion) and "eval_results" in card:
        card["eval_results"] = [result for result in card["eval_results"] if result.source_url != PAPER_URL]
    size = size or (conversion or {}).get("size")
    model_id = model_id or card.pop("model_name", None)  # named as before; the snippets still load output_dir
    card.pop("model_name", None)
    if not dry_run:
        return prepare_folder(model, output_dir, size=size, model_id=model_id, conversion=conversion, **card)
    with tempfile.TemporaryDirectory() as scratch:
        return prepare_folder(model, scratch, size=size, model_id=model_id, conversion=conversion, **card)


def push_folder(
    folder: str | Path,
    repo_id: str,
    private: bool = True,
    include: list[str] | tuple[str, ...] = (),
    leave_out: tuple[str, ...] = (),
    commit_message: str = "Upload CAE v2 checkpoint",
):
    """Create the repository if needed (private unless told) and upload the model's files of `folder`, with those
    `include` names and without those `leave_out` names (`caev2_hf_cli.hub.select_upload_files`: any other file is
    refused). The token comes from `HF_TOKEN` or a saved login; a Hub or network failure is a `UserError` saying what
    to do."""
    check_folder_is_prepared(folder)
    files = select_upload_files(folder, include, leave_out)
    visibility = "private" if private else "public"
    logger.info("Uploading %d files to %s (%s unless it exists):\n  %s", len(files), repo_id, visibility,
                "\n  ".join(files))  # fmt: skip
    api = HfApi(token=os.environ.get("HF_TOKEN"))
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        return api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message,
            allow_patterns=[glob.escape(path) for path in files],
        )  # fmt: skip
    except Exception as error:
        message = describe_hub_error(error, f"upload {folder} to {repo_id}")
        if message is None:
            raise
        raise UserError(message) from None


def main(args: argparse.Namespace) -> None:
    """Runs `prepare` or `push` on arguments from `caev2_hf_cli.hub.parse_publish_arguments` (checked there)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "push":
        commit = push_folder(args.folder, args.repo_id, private=not args.public, include=args.include)
        logger.info("Uploaded %s to %s", args.folder, getattr(commit, "commit_url", args.repo_id))
        return
    files = prepare_from_weights(args.weights, args.output_dir, args.size, args.model_id, args.dry_run)
    verb = "Would upload" if args.dry_run else f"Prepared {args.output_dir} with"
    logger.info("%s %d files:\n  %s", verb, len(files), "\n  ".join(files))
