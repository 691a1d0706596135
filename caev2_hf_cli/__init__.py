# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""The command line of caev2_hf: every command's arguments, read and checked without importing torch.

`import caev2_hf` imports torch and transformers' models (about 4 s) to register CAE v2 with the Auto classes. The
commands' arguments live here instead, in a package that imports neither, so a command answers `--help` and refuses a
bad argument in a fraction of that, before it imports the model code that does the work.
"""
