# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""A command's arguments, parsed once: the YAML/JSON config file read to a mapping, the command line's flags laid
over it, one instance of each argument dataclass built from the result.

Precedence: command line > config file > the dataclasses' defaults. The file is one flat mapping whose keys are the
dataclasses' field names (see `configs/*.yaml`); it is named by `--config PATH` or given as the first argument.

Properties a field may declare in its metadata, beside `help`:

- `MERGED_MAPPING: True`: a mapping (e.g. `config_overrides`) whose command-line keys change only those keys of the
  config file's mapping (`--config_overrides '{"drop_path_rate": 0.1}'` keeps the file's other overrides);
- `ALTERNATIVES: "<group>"` (or a tuple of groups): fields that stand for one another (e.g. the data source:
  `train_dir`, `data_files`, `dataset_name`): naming any of them on the command line drops every field of its
  group(s) that the config file set;
- `PART_OF: "<group>"` (or a tuple): a setting of one of the group's alternatives (`dataset_config_name` qualifies
  `dataset_name`; mask folders go with their image folder): dropped with them, while naming it alone drops nothing.

Errors: an unknown or malformed flag ends with argparse's usage line and exit status 2; an unknown key in the config
file, a value of the wrong type or a value a dataclass refuses raises `UserError`, which `run_command` turns into one
line, `error: ...`, and exit status 2.
"""

import argparse
import copy
import dataclasses
import difflib
import json
import os
import sys
from collections.abc import Callable

import yaml

from .errors import INTERRUPTED_EXIT_CODE, USER_ERROR_EXIT_CODE, StoppedBySignal, UserError


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
MERGED_MAPPING = "merged_mapping"
ALTERNATIVES = "alternatives"
PART_OF = "part_of"
_OWN_METADATA = (MERGED_MAPPING, ALTERNATIVES, PART_OF)
USAGE = "%(prog)s [CONFIG.yaml] [--config CONFIG.yaml] [--NAME VALUE ...]   (every NAME: --help)"


def run_command(function: Callable, *args, **kwargs):
    """Calls a command's function: a `UserError` ends it with `error: <message>` on stderr and exit status 2, Ctrl-C
    with `interrupted` and the shell's status 130 (what to do next was logged where it is known), a run stopped by a
    scheduler's signal with `stopped: <message>` and 128 + the signal's number."""
    try:
        return function(*args, **kwargs)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    except StoppedBySignal as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)


def field_names(dataclass_types: tuple) -> list[str]:
    return [item.name for cls in dataclass_types for item in dataclasses.fields(cls) if item.init]


def read_config_file(path: str, known: list[str]) -> dict:
    """The file as a flat mapping; a key that is no argument is refused with the likely one (a typo would
    otherwise be silently ignored)."""
    if not os.path.isfile(path):
        raise UserError(f"--config {path}: no such file. Give a YAML/JSON file of arguments, e.g. configs/demo.yaml.")
    with open(path, encoding="utf-8") as file:
        try:
            values = yaml.safe_load(file) or {}  # YAML is a superset of JSON
        except yaml.YAMLError as error:
            raise UserError(f"--config {path} is not valid YAML/JSON: {' '.join(str(error).split())}") from error
    if not isinstance(values, dict):
        raise UserError(f"{path} must hold a mapping of argument names to values, not a {type(values).__name__}.")
    unknown = [key for key in values if key not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = closest_names(str(key), known)
            hints.append(f"{key} (did you mean {' or '.join(close)}?)" if close else str(key))
        raise UserError(f"{path}: unknown argument(s) {', '.join(hints)}.")
    return values


def build_parser(
    dataclass_types: tuple, description: str | None = None, epilog: str | None = None
) -> argparse.ArgumentParser:
    """transformers' `HfArgumentParser` over the dataclasses, plus `--config`; no abbreviations (`--max_step` is a
    typo, not `--max_steps`). The metadata keys this module reads are kept away from argparse."""
    from transformers import HfArgumentParser  # transformers' utilities, not torch (about 0.5 s)

    class Parser(HfArgumentParser):
        @staticmethod
        def _parse_dataclass_field(parser, field):
            if any(key in field.metadata for key in _OWN_METADATA):
                field = copy.copy(field)
                field.metadata = {key: value for key, value in field.metadata.items() if key not in _OWN_METADATA}
            HfArgumentParser._parse_dataclass_field(parser, field)

    parser = Parser(
        dataclass_types,
        allow_abbrev=False,
        usage=USAGE,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        help="YAML/JSON file of arguments (configs/*.yaml), or give it first; the command line overrides it.",
    )
    return parser


def convert_config_value(value, action: argparse.Action, path: str):
    """A config-file value through the type its flag has (YAML reads `1e-3` as text, `3` as an int): what a flag's
    text would give, so file and command line mean the same."""
    kind = action.type
    if kind is None or value is None or isinstance(value, dict):
        return value
    if isinstance(value, list):
        return [convert_config_value(item, action, path) for item in value]
    try:
        if isinstance(value, str):
            return kind(value)
        if kind is str:
            return str(value).lower() if isinstance(value, bool) else str(value)
        if kind is int and (isinstance(value, bool) or not float(value).is_integer()):
            raise ValueError
        return kind(value) if kind in (int, float) else kind(str(value).lower() if isinstance(value, bool) else value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        expected = getattr(kind, "__name__", "value")
        raise UserError(f"{path}: {action.dest}: {value!r} is not a valid {expected}.") from error


def groups(item: dataclasses.Field, key: str) -> set[str]:
    """The groups a field declares under `key` (ALTERNATIVES or PART_OF): one name or a tuple of them."""
    value = item.metadata.get(key, ())
    return {value} if isinstance(value, str) else set(value)


def lay_command_line_over_file(file_values: dict, given: dict, dataclass_types: tuple) -> dict:
    """The file's mapping with the command line's values over it, following the fields' declared properties."""
    values, given = dict(file_values), dict(given)
    for cls in dataclass_types:
        fields = [item for item in dataclasses.fields(cls) if item.init]
        replaced = set().union(*(groups(item, ALTERNATIVES) for item in fields if item.name in given))
        for item in fields:
            if replaced & (groups(item, ALTERNATIVES) | groups(item, PART_OF)):
                values.pop(item.name, None)
            if item.metadata.get(MERGED_MAPPING) and isinstance(values.get(item.name), dict) and item.name in given:
                given[item.name] = merge_mapping(values[item.name], given[item.name])
    return {**values, **given}


def merge_mapping(file_mapping: dict, text: str | dict) -> dict | str:
    """The file's mapping with the command line's keys changed; text that is not a JSON mapping is returned as it is,
    for the field's own check to name."""
    try:
        update = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError:
        return text
    return {**file_mapping, **update} if isinstance(update, dict) else text


def closest_names(typed: str, names: list[str]) -> list[str]:
    """The one or two names a typo most likely meant. First those that hold the typed words in order (the last one
    may be cut short): `learning_rates` -> `fast_base_learning_rates`, `max_step` -> `max_steps`,
    `num_epochs` -> `num_train_epochs`; then the closest spelling (`max_stepz` -> `max_steps`)."""

    def words(name: str) -> list[str]:
        return name.lstrip("-").split("_")

    def holds_typed_words(name: str) -> bool:
        *whole, last = words(typed)
        remaining = iter(words(name))
        return all(word in remaining for word in whole) and any(word.startswith(last) for word in remaining)

    def similarity(name: str) -> float:
        return difflib.SequenceMatcher(None, typed, name).ratio()

    holding = sorted((name for name in names if holds_typed_words(name)), key=similarity, reverse=True)
    holding = [name for name in holding if similarity(name) >= 0.5]
    if holding:  # a second as likely one is shown too (--per_device_batch_size: train or eval)
        return [name for name in holding[:2] if similarity(name) >= similarity(holding[0]) - 0.05]
    return difflib.get_close_matches(typed, names, n=1)


def refuse_unknown_flags(parser: argparse.ArgumentParser, unknown: list[str]) -> None:
    flags = [option for action in parser._actions for option in action.option_strings if option.startswith("--")]
    hints = [
        f"{' or '.join(close)} for {word}"
        for word in unknown
        if word.startswith("--") and (close := closest_names(word.split("=")[0], flags))
    ]
    hint = f"; did you mean {', '.join(hints)}?" if hints else ""
    parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint} (see --help)")


def answer_help(
    argv: list[str] | None, dataclass_types: tuple, description: str | None = None, epilog: str | None = None
) -> None:
    """When the command line asks for help (`-h`, `--help`), prints the options of `dataclass_types`, then `epilog`,
    and exits. A script that also takes a library's whole argument class (`TrainingArguments`, whose import costs
    torch's) calls it with its own classes before it imports that class, and points to it in `epilog`."""
    argv = sys.argv[1:] if argv is None else argv
    if any(token in ("-h", "--help") for token in argv):
        build_parser(dataclass_types, description, epilog).parse_args(["--help"])


def parse_arguments(dataclass_types: tuple, argv: list[str] | None = None, description: str | None = None) -> tuple:
    """One instance of each dataclass, from the config file (if any) with the command line laid over it.

    The command line is parsed once, by argparse, into the flags it names; the file's values go through the same
    types; each dataclass is then built from the merged mapping, so its `__post_init__` checks every value whichever
    side it came from. `--help` lists every dataclass's options.
    """
    values = read_arguments(dataclass_types, argv, description)
    return tuple(build_arguments(cls, values) for cls in dataclass_types)


def build_arguments(cls: type, values: dict):
    """One dataclass from `read_arguments`' mapping. A script builds its own classes, checks them, and only then
    builds `TrainingArguments`, whose construction imports transformers' integrations (about 2 s)."""
    return cls(**{key: value for key, value in values.items() if key in field_names((cls,))})


def read_arguments(dataclass_types: tuple, argv: list[str] | None = None, description: str | None = None) -> dict:
    """The one parse of `parse_arguments`: every field's value, by name, from the config file and the command line
    (fields left to their defaults are absent)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    answer_help(argv, dataclass_types, description)
    config_path = None
    if argv and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
        config_path, argv = argv[0], argv[1:]
    parser = build_parser(dataclass_types, description)
    for action in parser._actions:  # only what the command line names comes back from the parse
        action.default, action.required = argparse.SUPPRESS, False
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        refuse_unknown_flags(parser, unknown)
    given = vars(namespace)
    config_path = given.pop("config", None) or config_path
    file_values = {}
    if config_path:
        actions = {action.dest: action for action in parser._actions}
        raw = read_config_file(config_path, field_names(dataclass_types))
        file_values = {key: convert_config_value(value, actions[key], config_path) for key, value in raw.items()}
    values = lay_command_line_over_file(file_values, given, dataclass_types)
    missing = [
        f"--{item.name}"
        for cls in dataclass_types
        for item in dataclasses.fields(cls)
        if item.init
        and item.default is dataclasses.MISSING
        and item.default_factory is dataclasses.MISSING
        and item.name not in values
    ]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    return values
