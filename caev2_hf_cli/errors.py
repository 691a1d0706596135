# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""The one exception a user's mistake raises, and the exit statuses the commands end with."""

USER_ERROR_EXIT_CODE = 2  # argparse's status for a bad command line
INTERRUPTED_EXIT_CODE = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)


class UserError(ValueError):
    """A problem with what the user asked for, with its fix in the message; a command shows it as one line,
    `error: <message>`, without a traceback."""
