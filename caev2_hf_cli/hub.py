# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Arguments of the Hub commands, `caev2-hub prepare|push`, `caev2-convert-checkpoint` and `caev2-model-cards`, with
the checks that need no model code (folders and files exist, a checkpoint file is one).

These commands take a few flags and no YAML recipe, so they use plain argparse (`caev2-hub` has subcommands, which
the dataclass parser does not model); the training scripts' `parse_arguments` would add a `--config` that means
nothing here. `python -m caev2_hf.hub`, `python -m caev2_hf.hub.convert_official_checkpoint` and
`python -m caev2_hf.hub.model_card` are the same commands (slower to start: they import torch before they parse).
"""

import argparse
import os
import zipfile
from pathlib import Path

from .checks import PRESET_NAMES, check_model_path
from .errors import UserError


PUBLISH_DESCRIPTION = r"""Ready-to-push Hub folders (weights, config with auto_map, image processor, remote code, card)
and their upload. List, assemble, upload:

    caev2-hub prepare --size base --weights caev2-vit-base --output_dir hub/caev2-vit-base --dry_run
    caev2-hub prepare --size base --weights caev2-vit-base --output_dir hub/caev2-vit-base \
        --model_id my-org/caev2-vit-base
    HF_TOKEN=hf_... caev2-hub push --folder hub/caev2-vit-base --repo_id my-org/caev2-vit-base
"""

CONVERT_DESCRIPTION = r"""Official CAE v2 checkpoints (Atten4Vis/CAE, `project/CAEv2`) <-> transformers folders, both
ways (docs/method.md#checkpoint-keys-of-the-authors-code). Released encoder weights, a full pretraining checkpoint
(`--pretraining`), and back (`--to_official`):

    caev2-convert-checkpoint --checkpoint caev2_base.pth --size base --output_dir caev2-vit-base
    caev2-convert-checkpoint --checkpoint checkpoint-299.pth --size tiny --pretraining \
        --output_dir caev2-vit-tiny-pretraining
    caev2-convert-checkpoint --to_official --checkpoint caev2-vit-base --output_dir official
"""

MODEL_CARDS_DESCRIPTION = """The model card of each official size, rendered from the package's template:

    caev2-model-cards --output_dir model_cards [--namespace my-org]
"""


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )


def check_saved_folder(folder: str | Path, flag: str) -> None:
    """A local folder written by `save_pretrained` (it holds config.json); a run_pretrain.py output folder is pointed
    to its final/."""
    check_model_path(
        str(folder),
        flag,
        "a folder written by save_pretrained, run_pretrain.py (its final/) or the converter",
        hub_ids=False,
    )


def parse_publish_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """`prepare` (a folder from saved weights) or `push` (a prepared folder), checked: the folder they read exists."""
    parser = build_parser("caev2-hub", PUBLISH_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="Assemble a ready-to-push folder from saved weights.")
    prepare.add_argument("--weights", required=True, help="Folder written by save_pretrained or the converter.")
    prepare.add_argument("--output_dir", required=True, help="Folder to assemble.")
    prepare.add_argument("--size", choices=PRESET_NAMES, help="Official size: checked, and sets the card.")
    prepare.add_argument("--model_id", help="Hub id shown in the card's usage snippets.")
    prepare.add_argument("--dry_run", action="store_true", help="List the files that would be uploaded; write none.")
    push = commands.add_parser("push", help="Upload a prepared folder (token from HF_TOKEN).")
    push.add_argument("--folder", required=True, help="A folder assembled by `prepare` or the converter.")
    push.add_argument("--repo_id", required=True, help="Hub repository, e.g. my-org/caev2-vit-base.")
    push.add_argument("--private", action="store_true", help="Create the repository as private.")
    arguments = parser.parse_args(argv)
    if arguments.command == "push" and not os.path.isdir(arguments.folder):
        raise UserError(f"--folder {arguments.folder}: no such folder.")
    if arguments.command == "prepare":
        check_saved_folder(arguments.weights, "--weights")
    return arguments


def parse_convert_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The converter's arguments, checked: an official file is one `torch.save` wrote, a folder to convert back
    holds a config."""
    parser = build_parser("caev2-convert-checkpoint", CONVERT_DESCRIPTION)
    parser.add_argument("--checkpoint", required=True, help="Official .pth file (or, with --to_official, our folder).")
    parser.add_argument("--size", choices=PRESET_NAMES, help="Preset of the official file.")
    parser.add_argument("--output_dir", required=True, help="Folder to write.")
    parser.add_argument("--pretraining", action="store_true", help="Full checkpoint: keep regressor and head.")
    parser.add_argument("--to_official", action="store_true", help="Convert our folder back to the official layout.")
    parser.add_argument("--push_to_hub", action="store_true", help="Upload the folder (token from HF_TOKEN).")
    parser.add_argument("--hub_model_id", help="Hub repository id, e.g. org/caev2-vit-base (used by the card too).")
    arguments = parser.parse_args(argv)
    if not arguments.to_official and arguments.size is None:
        parser.error("--size is required to convert an official checkpoint.")
    if arguments.push_to_hub and (arguments.to_official or not arguments.hub_model_id):
        parser.error("--push_to_hub needs --hub_model_id and does not apply to --to_official.")
    if arguments.to_official:
        check_model_path(arguments.checkpoint, "--to_official --checkpoint", "a CAE v2 folder of this package", False)
    if not arguments.to_official:
        check_checkpoint_file(arguments.checkpoint)
    return arguments


def parse_model_card_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser("caev2-model-cards", MODEL_CARDS_DESCRIPTION)
    parser.add_argument("--output_dir", default="model_cards", help="Folder for the per-size cards.")
    parser.add_argument("--namespace", help="Hub user or organisation used in the cards' model ids.")
    return parser.parse_args(argv)


ZIP_MAGIC, PICKLE_MAGIC = b"PK\x03\x04", b"\x80"  # torch.save's zip format; the legacy pickle (protocol >= 2)
KNOWN_MAGICS = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"GIF8": "a GIF image",
                b"{": "a JSON/text file", b"%PDF": "a PDF file"}  # fmt: skip


def check_checkpoint_file(path: str | Path) -> None:
    """Refuses, with what it is instead, a path that is not a file written by `torch.save`."""
    if not os.path.exists(path):
        raise UserError(f"--checkpoint {path}: no such file. Give the official .pth file (e.g. caev2_base.pth).")
    if os.path.isdir(path):
        raise UserError(
            f"--checkpoint {path} is a folder: give the official .pth file, or add --to_official to convert one of "
            "this package's folders back."
        )
    with open(path, "rb") as file:
        head = file.read(8)
    if head.startswith(ZIP_MAGIC):
        try:
            zipfile.ZipFile(path).close()  # reads the central directory at the end: a truncated file has none
        except (zipfile.BadZipFile, OSError) as error:
            raise UserError(
                f"--checkpoint {path} is truncated or damaged ({error}): download or copy it again."
            ) from None
        return
    if head.startswith(PICKLE_MAGIC):
        return
    if not head:
        kind = "an empty file"
    else:
        magic = next((name for magic, name in KNOWN_MAGICS.items() if head.startswith(magic)), None)
        printable = all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head)
        kind = magic or ("a text file" if printable else "not a file written by torch.save")
    raise UserError(
        f"--checkpoint {path} is {kind}, not a PyTorch checkpoint (.pth written by torch.save). Give the official "
        "checkpoint file."
    )
