# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Files written whole or not at all, for every job's results, configs, caches and pictures.

The content goes to a temporary name of this process's own (host and pid), then `os.replace` puts it in place in one
step: a run stopped midway leaves the previous file or none, never half of one, and processes on several nodes that
write the same file into a shared folder never rename each other's half-written one.
"""

import contextlib
import json
import os
import socket
from collections.abc import Callable


def write_atomically(path: str, write: Callable[[str], object]) -> str:
    """Calls `write(temporary_path)`, then renames that file to `path`; returns `path`. A failed write leaves
    neither a temporary file nor a changed `path`."""
    temporary = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    return path


def write_text(path: str, text: str) -> str:
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)

    return write_atomically(path, write)


def write_json(path: str, content, **dump_options) -> str:
    """`content` as JSON (`dump_options` as `json.dump` takes them, e.g. `indent=2`)."""
    return write_text(path, json.dumps(content, **dump_options))
