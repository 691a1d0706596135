# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""The command line of caev2_hf: every command's arguments, read and checked without importing torch.

`import caev2_hf` imports torch and transformers' models (about 4 s) to register CAE v2 with the Auto classes. The
commands' arguments live here instead, in a package that imports neither (nor anything of `caev2_hf`), so a command
answers `--help` and refuses a bad argument in a fraction of that, before it imports the model code that does the
work: `parsing` (one parse of YAML + flags, `run_command`), `errors` (`UserError`), `checks`, and one module per job
(`pretraining`, `classification`, `segmentation`, `visualize`, `hub`, `study`). The `run_*.py` scripts and the console
commands (`caev2_hf_commands.py`) parse with it, then import `caev2_hf`.
"""
