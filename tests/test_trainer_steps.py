"""Unit tests for caev2_hf.evaluation.trainer_steps: how long a fine-tuning or segmentation run is, in optimizer steps."""

import pytest
from transformers import TrainingArguments

from caev2_hf.evaluation.trainer_steps import resolve_max_steps


def training_arguments(tmp_path, **fields) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **fields)


@pytest.mark.parametrize(
    ("epochs", "batch_size", "accumulation", "num_examples", "expected"),
    [
        (2, 8, 3, 72, 6),  # 144 examples / (8 x 3) per step
        (3, 8, 2, 100, 18),  # 300 / 16 = 18.75: the partial step is dropped
        (0.5, 4, 1, 10, 1),  # 5 / 4 = 1.25
        (1, 16, 4, 10, 1),  # fewer examples than a step takes: still one step
    ],
)
def test_epochs_become_whole_optimizer_steps(tmp_path, epochs, batch_size, accumulation, num_examples, expected):
    args = training_arguments(
        tmp_path, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
    )  # fmt: skip
    assert resolve_max_steps(args, num_examples) == expected


def test_given_max_steps_win_over_epochs(tmp_path):
    args = training_arguments(tmp_path, max_steps=7, num_train_epochs=100, per_device_train_batch_size=2)
    assert resolve_max_steps(args, 1000) == 7
