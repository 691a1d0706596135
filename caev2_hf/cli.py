# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""The scripts' argument parsing: dataclasses read from a YAML/JSON file, then overridden by the command line.

Precedence: command line > config file > the dataclasses' defaults. The file is one flat mapping whose keys are the
dataclasses' field names (see `configs/*.yaml`); it is named by `--config PATH` or given as the first argument.

Errors: a mistake of the user (a missing folder, a negative batch) raises `UserError`, which `run_main` turns into one
line on stderr, `error: <what is wrong and how to fix it>`, and exit status 2 (argparse's own for bad flags); any
other exception is a bug and keeps its traceback. Nothing heavy is imported here: a script parses and checks its
arguments before it imports torch, so `--help` and a bad argument answer in about a second.
"""

import argparse
import dataclasses
import difflib
import json
import os
import sys
from collections.abc import Callable

import yaml


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
USER_ERROR_EXIT_CODE = 2  # argparse's status for a bad command line
INTERRUPTED_EXIT_CODE = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)


class UserError(ValueError):
    """A problem with what the user asked for, with its fix in the message; shown without a traceback."""


def run_main(main: Callable[[], object]) -> None:
    """Runs a command-line entry point: a `UserError` ends it with `error: <message>` on stderr and exit status 2,
    Ctrl-C with `interrupted` and the shell's status 130 (what to do next was logged where it is known)."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)


def parse_json_mapping(value: dict | str | None, flag: str, example: str) -> dict | None:
    """A mapping given in YAML arrives as a dict, on the command line as JSON text: both become a dict."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise UserError(f"{flag}={value!r} is not JSON: write e.g. '{example}' on the command line.") from error


def check_positive(**values: float | None) -> None:
    """Refuses a size, count or rate that is not > 0 (None means unset and passes)."""
    for name, value in values.items():
        if value is not None and not value > 0:
            raise UserError(f"--{name} {value}: must be greater than 0.")


def check_image_folder(path: str, flag: str, at_least: int = 1, verify: int = 0) -> int:
    """Refuses a folder that does not exist or holds no image file; returns how many it holds, counting up to
    `at_least` only (a big folder is not walked to its end).

    With `verify` > 0, images are opened (header checks only) until one opens, at most `verify` of them: a folder in
    which none opens is refused too. Costs milliseconds, before any model is built.
    """
    if not os.path.exists(path):
        where = "" if os.path.isabs(path) else f" (relative paths start at {os.getcwd()})"
        raise UserError(f"{flag} {path}: no such folder. Check the path{where}.")
    if not os.path.isdir(path):
        raise UserError(f"{flag} {path} is a file, not a folder: give a folder of images (one subfolder per class).")
    from PIL import Image  # cheap, and only where a folder is checked

    extensions = set(Image.registered_extensions())
    images, other = [], None
    for root, folders, names in os.walk(path):
        folders[:] = sorted(folder for folder in folders if not folder.startswith("."))
        for name in sorted(names):
            if os.path.splitext(name)[1].lower() in extensions:
                images.append(os.path.join(root, name))
            else:
                other = other or os.path.join(root, name)
        if len(images) >= max(at_least, verify):
            break
    if not images:
        found = f"only other files, e.g. {os.path.relpath(other, path)}" if other else "no file at all"
        raise UserError(
            f"{flag} {path} holds no image files ({found}). Put images there (.jpg, .png, ...; one subfolder per "
            "class), or point to the folder that holds them."
        )
    if verify:
        problems = []
        for image in images[:verify]:
            try:
                with Image.open(image) as opened:
                    opened.verify()
                break
            except Exception as error:  # any decoder error means: not a usable image
                problems.append(f"{os.path.relpath(image, path)} ({type(error).__name__})")
        else:
            shown = ", ".join(problems[:3]) + (", ..." if len(problems) > 3 else "")
            raise UserError(
                f"{flag} {path}: none of the {len(problems)} image file(s) tried opens ({shown}): they are corrupt "
                "or not images. Replace them with readable images."
            )
    return min(len(images), at_least)


def check_model_path(model: str, flag: str = "--model") -> None:
    """Refuses a local model folder that does not exist. A Hub id (`org/name`) passes: it is checked when loaded.

    A name counts as local when it exists, starts with `.`, `/` or `~`, or has more than one `/`.
    """
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise UserError(
                f"{flag} {model} holds no config.json: give the folder a model was saved to (save_pretrained, "
                "run_pretrain.py's final/, the converter's output)."
            )
        return
    if os.path.exists(path):
        raise UserError(f"{flag} {model} is a file: give the folder that holds config.json (or a Hub id).")
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise UserError(f"{flag} {model}: no such folder. Give a saved model folder (with config.json) or a Hub id.")


def split_config_path(argv: list[str]) -> tuple[str | None, list[str]]:
    """(config file, the other arguments): the file is the first argument when it has a YAML/JSON suffix, else the
    value of `--config`."""
    if argv and argv[0].endswith(CONFIG_SUFFIXES):
        return argv[0], argv[1:]
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("--config")
    known, remaining = config_parser.parse_known_args(argv)
    return known.config, remaining


def read_config_file(path: str, dataclass_types: tuple) -> dict:
    """The file as a flat mapping, with unknown keys refused (a typo would otherwise be silently ignored); no
    `dataclass_types` (an empty tuple) means any key."""
    if not os.path.isfile(path):
        raise UserError(f"--config {path}: no such file. Give a YAML/JSON file of arguments, e.g. configs/demo.yaml.")
    with open(path, encoding="utf-8") as file:
        try:
            values = yaml.safe_load(file) or {}  # YAML is a superset of JSON
        except yaml.YAMLError as error:
            raise UserError(f"--config {path} is not valid YAML/JSON: {' '.join(str(error).split())}") from error
    if not isinstance(values, dict):
        raise UserError(f"{path} must hold a mapping of argument names to values, not a {type(values).__name__}.")
    known = [item.name for cls in dataclass_types for item in dataclasses.fields(cls) if item.init]
    unknown = [key for key in values if key not in known] if dataclass_types else []
    if unknown:
        hints = [f"{key} (did you mean {difflib.get_close_matches(key, known, 1) or '?'})" for key in unknown]
        raise UserError(f"{path}: unknown argument(s) {', '.join(hints)}.")
    return values


def config_to_arguments(values: dict) -> list[str]:
    """`{"lr": 0.1, "files": ["a", "b"], "flag": True}` -> `--lr 0.1 --files a b --flag true`; None is left out."""
    tokens = []
    for key, value in values.items():
        if value is None:
            continue
        value = json.dumps(value) if isinstance(value, dict) else value
        value = str(value).lower() if isinstance(value, bool) else value
        tokens += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return tokens


def build_parser(
    dataclass_types: tuple, description: str | None = None, epilog: str | None = None, allow_abbrev: bool = True
):
    """transformers' HfArgumentParser over the dataclasses, with `--config`; the scripts' docstring as description."""
    from transformers import HfArgumentParser  # imports transformers' utilities, not torch (about 1 s)

    parser = HfArgumentParser(
        dataclass_types,
        allow_abbrev=allow_abbrev,
        usage="%(prog)s [CONFIG.yaml] [--config CONFIG.yaml] [--NAME VALUE ...]   (every NAME: --help)",
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        help="YAML/JSON file of arguments (configs/*.yaml), or give it first; the command line overrides it.",
    )
    return parser


def asks_for_help(argv: list[str]) -> bool:
    return any(token in ("-h", "--help") for token in argv)


MERGED_MAPPINGS = ("config_overrides",)  # a mapping flag whose command-line keys add to the config file's


def merge_mapping_flags(values: dict, argv: list[str]) -> list[str]:
    """`--config_overrides '{"drop_path_rate": 0.0}'` on the command line changes that key of the config file's
    mapping and keeps the others (replacing the whole mapping would drop e.g. the demo's image size and random
    teacher). Text that is not a JSON mapping is left for the field's own check to report."""
    merged, remaining = [], list(argv)
    while remaining:
        argument = remaining.pop(0)
        flag, equals, text = argument.partition("=")
        name = flag[2:] if flag.startswith("--") else None
        if name not in MERGED_MAPPINGS or not isinstance(values.get(name), dict) or not (equals or remaining):
            merged.append(argument)
            continue
        text = text if equals else remaining.pop(0)
        try:
            update = json.loads(text)
        except json.JSONDecodeError:
            update = None
        if isinstance(update, dict):
            values = {**values, name: {**values[name], **update}}
            text = json.dumps(values[name])
        merged += [flag, text]
    return merged


def parse_arguments_with_config(
    dataclass_types: tuple,
    argv: list[str] | None = None,
    description: str | None = None,
    help_dataclass_types: tuple | None = None,
    help_epilog: str | None = None,
) -> tuple:
    """One instance of each dataclass, from the config file (if any) overridden by the command line.

    The file's values become flags placed before the command line's and argparse keeps the last value of a flag, so
    both go through the same type conversion, and a required field may come from either. `--help` lists the fields
    of `help_dataclass_types` (default: all), then `help_epilog`: a script that also takes a library's whole argument
    class (TrainingArguments) shows its own options and points to that class for the rest. A value refused by a
    dataclass's `__post_init__` (a `UserError`) propagates; argparse itself exits 2 on an unknown or malformed flag.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if asks_for_help(argv):
        build_parser(help_dataclass_types or dataclass_types, description, help_epilog).parse_args(["--help"])
    config_path, argv = split_config_path(argv)
    values = read_config_file(config_path, dataclass_types) if config_path else {}
    argv = merge_mapping_flags(values, argv)
    parser = build_parser(dataclass_types, description, allow_abbrev=False)  # --max_step is a typo, not --max_steps
    *parsed, _, unknown = parser.parse_args_into_dataclasses(
        config_to_arguments(values) + argv, return_remaining_strings=True
    )  # after the dataclasses: the unused --config, then what no dataclass knows
    if unknown:
        flags = [option for action in parser._actions for option in action.option_strings]
        hints = [
            f"{close[0]} for {word}"
            for word in unknown
            if word.startswith("--") and (close := difflib.get_close_matches(word.split("=")[0], flags, n=1))
        ]
        hint = f"; did you mean {', '.join(hints)}?" if hints else ""
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint} (see --help)")
    return tuple(parsed)


def parse_known_arguments_with_config(
    dataclass_types: tuple,
    argv: list[str] | None = None,
    description: str | None = None,
    help_epilog: str | None = None,
) -> tuple:
    """Only the fields of `dataclass_types`, from the config file and the command line, the rest left alone.

    For a script that also takes a library's argument class (`TrainingArguments`, which imports torch): its own
    arguments are read and checked first, quickly; the full parse, which refuses unknown keys and flags, comes later.
    `--help` shows these classes' options, then `help_epilog`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if asks_for_help(argv):
        build_parser(dataclass_types, description, help_epilog).parse_args(["--help"])
    config_path, argv = split_config_path(argv)
    values = {}
    if config_path:
        known = {item.name for cls in dataclass_types for item in dataclasses.fields(cls) if item.init}
        everything = read_config_file(config_path, ())
        values = {key: value for key, value in everything.items() if key in known}
    argv = merge_mapping_flags(values, argv)
    parser = build_parser(dataclass_types, description, allow_abbrev=False)
    *parsed, _, _ = parser.parse_args_into_dataclasses(
        config_to_arguments(values) + argv, return_remaining_strings=True
    )
    return tuple(parsed)
