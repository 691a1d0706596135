# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Ready-to-push Hub folders (weights, config with auto_map, image processor, remote code, card) and their upload:
the command `caev2-hub prepare|push` (`caev2_hf_cli/hub.py` holds its arguments; `python -m caev2_hf.hub` runs the
same)."""

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

from huggingface_hub import HfApi
from transformers import PreTrainedModel

from caev2_hf_cli.errors import UserError
from caev2_hf_cli.hub import check_saved_folder

from .. import modeling_caev2
from ..configuration_caev2 import CAEv2Config
from .model_card import read_card_facts, write_model_card


logger = logging.getLogger(__name__)

# What a folder needs so that `from_pretrained(..., trust_remote_code=True)` works where caev2_hf is not installed.
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "configuration_caev2.py",
    "modeling_caev2.py",
    "README.md",
)
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


def list_folder_files(folder: str | Path) -> list[str]:
    """Every file under `folder`, as sorted POSIX paths relative to it (what `upload_folder` sends)."""
    folder = Path(folder)
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def check_folder_is_prepared(folder: str | Path) -> None:
    """Weights can be sharded (`model.safetensors.index.json`); every other required file must be there."""
    files = set(list_folder_files(folder))
    missing = [name for name in REQUIRED_FILES if name not in files]
    if "model.safetensors" in missing and "model.safetensors.index.json" in files:
        missing.remove("model.safetensors")
    if missing:
        raise UserError(
            f"{folder} is not a prepared CAE v2 folder; missing {', '.join(missing)}. Assemble one with "
            "`caev2-hub prepare --weights FOLDER --output_dir FOLDER`."
        )


def prepare_folder(
    model: PreTrainedModel, output_dir: str | Path, size: str | None = None, model_id: str | None = None, **card_kwargs
) -> list[str]:
    """Write the model (`save_pretrained` adds auto_map, code files and image processor) and its card.

    Keyword arguments beyond `size` and `model_id` go to `render_model_card` (e.g. `results`, `training_details`,
    `usage_path`).
    """
    if size is not None:
        check_matches_preset(model.config, size)
    model.save_pretrained(output_dir)
    write_model_card(output_dir, model.config, size=size, model_id=model_id, **card_kwargs)
    check_folder_is_prepared(output_dir)
    return list_folder_files(output_dir)


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
    a guessed one. Without `model_id` the usage snippets load `output_dir`, where the prepared folder is.
    """
    model = load_caev2_model(weights)
    card = {"datasets": [], **read_card_facts(weights), "usage_path": model_id or str(output_dir)}
    model_id = model_id or card.pop("model_name", None)  # named as before; the snippets still load output_dir
    card.pop("model_name", None)
    if not dry_run:
        return prepare_folder(model, output_dir, size=size, model_id=model_id, **card)
    with tempfile.TemporaryDirectory() as scratch:
        return prepare_folder(model, scratch, size=size, model_id=model_id, **card)


def push_folder(
    folder: str | Path, repo_id: str, private: bool = False, commit_message: str = "Upload CAE v2 checkpoint"
):
    """Create the repo if needed and upload exactly `folder`; the token comes from `HF_TOKEN` (or a saved login)."""
    check_folder_is_prepared(folder)
    api = HfApi(token=os.environ.get("HF_TOKEN"))
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message
    )


def main(args: argparse.Namespace) -> None:
    """Runs `prepare` or `push` on arguments from `caev2_hf_cli.hub.parse_publish_arguments` (checked there)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "push":
        commit = push_folder(args.folder, args.repo_id, private=args.private)
        logger.info("Uploaded %s to %s", args.folder, getattr(commit, "commit_url", args.repo_id))
        return
    files = prepare_from_weights(args.weights, args.output_dir, args.size, args.model_id, args.dry_run)
    verb = "Would upload" if args.dry_run else f"Prepared {args.output_dir} with"
    logger.info("%s %d files:\n  %s", verb, len(files), "\n  ".join(files))
