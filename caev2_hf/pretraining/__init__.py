"""The pretraining job: its arguments, the training step, the learning-rate schedule, atomic checkpoints with exact
resume, step tracking and the export of `final/`. Used by `run_pretrain.py` and `benchmarks/`."""
