# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""The scripts' argument parsing: dataclasses read from a YAML/JSON file, then overridden by the command line.

Precedence: command line > config file > the dataclasses' defaults. The file is one flat mapping whose keys are the
dataclasses' field names (see `configs/*.yaml`); it is named by `--config PATH` or given as the first argument.
"""

import argparse
import dataclasses
import difflib
import json
import sys

import yaml
from transformers import HfArgumentParser


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


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
    """The file as a flat mapping, with unknown keys refused (a typo would otherwise be silently ignored)."""
    with open(path, encoding="utf-8") as file:
        values = yaml.safe_load(file) or {}  # YAML is a superset of JSON
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values, not a {type(values).__name__}.")
    known = [item.name for cls in dataclass_types for item in dataclasses.fields(cls) if item.init]
    unknown = [key for key in values if key not in known]
    if unknown:
        hints = [f"{key} (did you mean {difflib.get_close_matches(key, known, 1) or '?'})" for key in unknown]
        raise ValueError(f"{path}: unknown argument(s) {', '.join(hints)}.")
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


def parse_arguments_with_config(dataclass_types: tuple, argv: list[str] | None = None) -> tuple:
    """One instance of each dataclass, from the config file (if any) overridden by the command line.

    The file's values become flags placed before the command line's and argparse keeps the last value of a flag, so
    both go through the same type conversion, and a required field may come from either.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path, argv = split_config_path(argv)
    values = read_config_file(config_path, dataclass_types) if config_path else {}
    parser = HfArgumentParser(dataclass_types)
    parser.add_argument(
        "--config",
        help="YAML/JSON file of arguments (configs/*.yaml), or give it first; the command line overrides it.",
    )
    *parsed, _ = parser.parse_args_into_dataclasses(config_to_arguments(values) + argv)  # last: the unused --config
    return tuple(parsed)
