# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""The exceptions that end a command on purpose, and the exit statuses the commands end with."""

import signal


USER_ERROR_EXIT_CODE = 2  # argparse's status for a bad command line
INTERRUPTED_EXIT_CODE = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)


class UserError(ValueError):
    """A problem with what the user asked for, with its fix in the message; a command shows it as one line,
    `error: <message>`, without a traceback."""


class StoppedBySignal(Exception):
    """A run that stopped on a scheduler's signal (SIGTERM, SIGUSR1) after saving its work; the message says how to
    continue. The command exits with 128 + the signal's number, the status the shell gives a process that signal
    ended (143 for SIGTERM), so a scheduler sees a stopped run, not a finished one."""

    def __init__(self, signal_number: int, message: str) -> None:
        super().__init__(message)
        self.signal_number = signal.Signals(signal_number)

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number
