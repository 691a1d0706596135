# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Arguments of the Hub commands, `caev2-hub prepare|push`, `caev2-convert-checkpoint` and `caev2-model-cards`, with
the checks that need no model code (folders and files exist, a checkpoint file is one).

These commands take a few flags and no YAML recipe, so they use plain argparse (`caev2-hub` has subcommands, which
the dataclass parser does not model); the training scripts' `parse_arguments` would add a `--config` that means
nothing here. `python -m caev2_hf.hub`, `python -m caev2_hf.hub.convert_official_checkpoint` and
`python -m caev2_hf.hub.model_card` are the same commands (slower to start: they import torch before they parse).
"""

import argparse
import fnmatch
import os
import zipfile
from pathlib import Path

from . import hub_access
from .checks import PRESET_NAMES, check_model_path
from .errors import UserError


PUBLISH_DESCRIPTION = r"""Ready-to-push Hub folders (weights, config with auto_map, image processor, remote code, card)
and their upload. List, assemble, upload:

    caev2-hub prepare --size base --weights caev2-vit-base --output_dir hub/caev2-vit-base --dry_run
    caev2-hub prepare --size base --weights caev2-vit-base --output_dir hub/caev2-vit-base \
        --model_id my-org/caev2-vit-base
    HF_TOKEN=hf_... caev2-hub push --folder hub/caev2-vit-base --repo_id my-org/caev2-vit-base

`push` uploads the files a model repository needs (config, weights, image processor, the model's code, the card and
its pictures, the converter's record) to a private repository (`--public` for a public one); any other file in the
folder is listed and refused unless `--include` names it (`--include pretraining` for a run's final/pretraining/).
The token, the network and the right to write the repository are checked before anything is sent. `prepare --size`
checks the architecture and names it; the card's model-index quotes the paper's numbers only for the authors' weights
(a folder converted with `caev2-convert-checkpoint --released_by_authors`), never for other weights of that shape.
"""

CONVERT_DESCRIPTION = r"""Official CAE v2 checkpoints (Atten4Vis/CAE, `project/CAEv2`) <-> transformers folders, both
ways (docs/method.md#checkpoint-keys-of-the-authors-code). Released encoder weights, a full pretraining checkpoint
(`--pretraining`), and back (`--to_official`). The folder records what it was converted from (`conversion.json`:
the file and its sha256); `--released_by_authors` says the file is one the authors released, and only then do its
card and `caev2-hub prepare` quote the paper's numbers as these weights':

    caev2-convert-checkpoint --checkpoint caev2_base.pth --size base --released_by_authors --output_dir caev2-vit-base
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


# What `from_pretrained(..., trust_remote_code=True)` needs where caev2_hf is not installed.
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "configuration_caev2.py",
    "modeling_caev2.py",
    "README.md",
)
CONVERSION_RECORD = "conversion.json"  # the converter's record of the checkpoint a folder came from
# What a model repository needs: config, weights (one file or shards), image processor, the model's code, the card,
# the converter's record, and pictures anywhere. Anything else in a folder to upload is refused unless --include
# names it: a stray .env, a checkpoint's optimizer state or a forgotten 300 MB file is never sent by accident.
UPLOAD_FILES = (
    "README.md", "config.json", "preprocessor_config.json", "model.safetensors", "model.safetensors.index.json",
    "model-*-of-*.safetensors", "configuration_*.py", "modeling_*.py", "image_processing_*.py", CONVERSION_RECORD,
)  # fmt: skip
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
NEVER_LISTED = (".git", ".cache")  # upload_folder never sends these (git's files, huggingface_hub's own cache)
SHOWN_FILES = 5


def list_folder_files(folder: str | Path) -> list[str]:
    """Every file under `folder`, as sorted POSIX paths relative to it, without `.git/` and `.cache/`."""
    folder = Path(folder)
    paths = (path.relative_to(folder) for path in folder.rglob("*") if path.is_file())
    return sorted(path.as_posix() for path in paths if path.parts[0] not in NEVER_LISTED)


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


def matches(path: str, pattern: str) -> bool:
    """`pattern` names `path` itself, a folder above it (`pretraining`, `pretraining/`) or matches it as a glob."""
    folder = pattern.rstrip("/")
    return fnmatch.fnmatchcase(path, pattern) or path.startswith(folder + "/")


def is_model_file(path: str) -> bool:
    top_level = "/" not in path and any(fnmatch.fnmatchcase(path, pattern) for pattern in UPLOAD_FILES)
    return top_level or path.lower().endswith(PICTURE_SUFFIXES)


def format_size(num_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} bytes"


def describe_files(folder: Path, paths: list[str]) -> str:
    """`.env (19 bytes), checkpoints/ (3 file(s), 1.2 GB), ...`: files and top folders with their sizes, the first
    few and how many more."""
    entries: dict[str, list[int]] = {}
    for path in paths:
        name = path.split("/")[0] + "/" if "/" in path else path
        count_and_size = entries.setdefault(name, [0, 0])
        count_and_size[0] += 1
        count_and_size[1] += (folder / path).stat().st_size
    shown = [
        f"{name} ({f'{count} file(s), ' if name.endswith('/') else ''}{format_size(size)})"
        for name, (count, size) in list(entries.items())[:SHOWN_FILES]
    ]
    more = f" and {len(entries) - SHOWN_FILES} more" if len(entries) > SHOWN_FILES else ""
    return ", ".join(shown) + more


def select_upload_files(
    folder: str | Path, include: list[str] | tuple[str, ...] = (), leave_out: tuple[str, ...] = (), flag="--folder"
) -> list[str]:
    """The files of `folder` to upload: the model's (`UPLOAD_FILES`, pictures) and those `include` names; files
    `leave_out` names are not sent. Any other file is refused, in one line that lists them, as is a pattern of
    `include` that names no file (a typo would otherwise send nothing it meant to)."""
    folder = Path(folder)
    files = [path for path in list_folder_files(folder) if not any(matches(path, pattern) for pattern in leave_out)]
    unused = [pattern for pattern in include if not any(matches(path, pattern) for path in files)]
    if unused:
        raise UserError(f"--include {' '.join(unused)}: no file of {folder} matches it. Give paths relative to it.")
    refused = [path for path in files if not is_model_file(path) and not any(matches(path, p) for p in include)]
    if refused:
        raise UserError(
            f"{flag} {folder} holds files a model repository does not need: "
            f"{describe_files(folder, refused)}. Move them out, or name them with --include to upload them too "
            f"(e.g. --include {refused[0].split('/')[0]})."
        )
    return files


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
    push.add_argument("--public", action="store_true", help="Create the repository as public (default: private).")
    push.add_argument(
        "--include", nargs="+", default=[], metavar="PATH",
        help="Also upload these files or folders (globs allowed), which are not a model's, e.g. pretraining.",
    )  # fmt: skip
    arguments = parser.parse_args(argv)
    if arguments.command == "push":
        if not os.path.isdir(arguments.folder):
            raise UserError(f"--folder {arguments.folder}: no such folder.")
        check_folder_is_prepared(arguments.folder)
        select_upload_files(arguments.folder, arguments.include)
        hub_access.check_hub_upload(arguments.repo_id, "--repo_id", instead=" (the upload needs the network)")
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
    parser.add_argument(
        "--released_by_authors", action="store_true",
        help="The file is one the authors released (e.g. caev2_base.pth): the card quotes the paper's numbers.",
    )  # fmt: skip
    parser.add_argument("--push_to_hub", action="store_true", help="Upload the folder (token from HF_TOKEN).")
    parser.add_argument("--hub_model_id", help="Hub repository id, e.g. org/caev2-vit-base (used by the card too).")
    parser.add_argument(
        "--public", action="store_true", help="With --push_to_hub: a public repository (default: private)."
    )
    arguments = parser.parse_args(argv)
    if not arguments.to_official and arguments.size is None:
        parser.error("--size is required to convert an official checkpoint.")
    if arguments.push_to_hub and (arguments.to_official or not arguments.hub_model_id):
        parser.error("--push_to_hub needs --hub_model_id and does not apply to --to_official.")
    if arguments.to_official:
        check_model_path(arguments.checkpoint, "--to_official --checkpoint", "a CAE v2 folder of this package", False)
    else:
        check_checkpoint_file(arguments.checkpoint)
    if arguments.push_to_hub:
        later = ", or leave out --push_to_hub and upload the folder later with `caev2-hub push`"
        hub_access.check_hub_upload(arguments.hub_model_id, "--hub_model_id", instead=later)
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
