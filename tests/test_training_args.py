"""Tests for caev2_hf_cli/pretraining.py: YAML plus command-line parsing, the checks made before a run starts,
and the shipped recipe files."""

from pathlib import Path

import pytest
import yaml
from PIL import Image

from caev2_hf.pretraining.schedule import compute_training_schedule
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.parsing import parse_arguments
from caev2_hf_cli.pretraining import ARGUMENT_CLASSES, check_pretraining_arguments


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def parse_pretraining_arguments(argv: list[str]) -> tuple:
    return parse_arguments(ARGUMENT_CLASSES, argv)


def write_yaml(tmp_path: Path, values: dict | list) -> str:
    path = tmp_path / "arguments.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_parse_reads_yaml_then_lets_the_command_line_override(tmp_path: Path) -> None:
    config = write_yaml(
        tmp_path,
        {"model_preset": "small", "per_device_train_batch_size": 8, "learning_rate": "1e-4",  # YAML 1.1 reads a str
         "data_files": ["a.tar", "b.tar"], "torch_compile": True, "config_overrides": {"drop_path_rate": 0.0}},
    )  # fmt: skip
    model_args, data_args, training_args = parse_pretraining_arguments(
        ["--config", config, "--per_device_train_batch_size", "16", "--torch_compile", "false"]
    )
    assert model_args.model_preset == "small" and model_args.config_overrides == {"drop_path_rate": 0.0}
    assert data_args.data_files == ["a.tar", "b.tar"] and data_args.dataloader_num_workers == 8  # a default
    assert training_args.per_device_train_batch_size == 16 and training_args.learning_rate == 1e-4
    assert training_args.torch_compile is False


def test_parse_without_a_config_file_uses_the_defaults() -> None:
    model_args, data_args, training_args = parse_pretraining_arguments(["--max_steps", "5"])
    assert (model_args.model_preset, data_args.crop_min_scale, training_args.max_steps) == ("base", 0.4, 5)
    assert (training_args.learning_rate, training_args.learning_rate_batch_size) == (1.5e-3, 2048)


def test_parse_refuses_unknown_yaml_keys_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"unknown argument\(s\) learning_rat \(did you mean learning_rate\?\)"):
        parse_pretraining_arguments(["--config", write_yaml(tmp_path, {"learning_rat": 0.1})])


def test_parse_refuses_a_yaml_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must hold a mapping"):
        parse_pretraining_arguments(["--config", write_yaml(tmp_path, ["max_steps", 3])])


def test_config_overrides_read_json_from_the_command_line() -> None:
    model_args, _, _ = parse_pretraining_arguments(["--config_overrides", '{"num_masking_patches": 75}'])
    assert model_args.config_overrides == {"num_masking_patches": 75}
    with pytest.raises(ValueError, match="is not JSON"):
        parse_pretraining_arguments(["--config_overrides", "num_masking_patches=75"])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--mixed_precision", "fp8"], "--mixed_precision fp8: choose one of no, fp16, bf16"),
        (["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
        (["--torch_compile_mode", "fast"], "--torch_compile_mode fast: choose one of default, reduce-overhead, max-"),
        (["--logging_steps", "0"], "--logging_steps 0: must be at least 1"),
        (["--per_device_train_batch_size", "-4"], "--per_device_train_batch_size -4: must be greater than 0"),
        (["--learning_rate", "0"], "--learning_rate 0.0: must be greater than 0"),
        (["--warmup_steps", "-1"], "--warmup_steps -1: must be 0 or more"),
        (["--model_preset", "huge"], "--model_preset huge: choose one of tiny, small, base, large"),
    ],
)
def test_parse_refuses_invalid_training_arguments(arguments: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_pretraining_arguments(arguments)


def write_images(folder: Path, count: int) -> str:
    (folder / "class").mkdir(parents=True)
    for index in range(count):
        Image.new("RGB", (8, 8)).save(folder / "class" / f"{index}.png")
    return str(folder)


def check(argv: list[str], num_processes: int = 1) -> None:
    check_pretraining_arguments(*parse_pretraining_arguments(argv), num_processes=num_processes)


def test_check_accepts_a_folder_with_enough_images_for_a_batch(tmp_path: Path) -> None:
    images = write_images(tmp_path / "images", 8)
    one_worker = ["--train_dir", images, "--max_steps", "1", "--dataloader_num_workers", "0"]
    check([*one_worker, "--per_device_train_batch_size", "4"], num_processes=2)
    with pytest.raises(
        UserError,
        match=r"holds 8 images, fewer than a batch of 4 for each of 3 process\(es\) x 1 loader worker\(s\) \(12",
    ):
        check([*one_worker, "--per_device_train_batch_size", "4"], num_processes=3)
    # Each loader worker batches its own files: 8 images among 4 workers are 2 each, short of a batch of 4.
    with pytest.raises(
        UserError,
        match=r"fewer than a batch of 4 for each of 2 process\(es\) x 4 loader worker\(s\) "
        r"\(32 images\): lower --per_device_train_batch_size or --dataloader_num_workers",
    ):
        check(["--train_dir", images, "--max_steps", "1", "--per_device_train_batch_size", "4"], num_processes=2)
    check(["--train_dir", images, "--max_steps", "1", "--per_device_train_batch_size", "2", "--dataloader_num_workers",
           "2"], num_processes=2)  # fmt: skip


def test_check_refuses_two_data_sources_and_names_both(tmp_path: Path) -> None:
    images = write_images(tmp_path / "images", 1)
    with pytest.raises(UserError, match=f"not 2: --dataset_name org/data and --train_dir {images}"):
        check(
            [
                "--train_dir",
                images,
                "--dataset_name",
                "org/data",
                "--max_steps",
                "1",
                "--per_device_train_batch_size",
                "1",
            ]
        )


def test_check_refuses_data_files_that_match_nothing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--data_files .*missing-\*\.tar: no such file"):
        check(["--data_files", str(tmp_path / "missing-*.tar"), "--max_steps", "1"])


def test_command_line_source_replaces_the_demo_folder_of_the_config_file(tmp_path: Path) -> None:
    images = write_images(tmp_path / "images", 16)
    _, data_args, _ = parse_pretraining_arguments(["--config", str(CONFIGS / "demo.yaml"), "--train_dir", images])
    assert (data_args.train_dir, data_args.demo_dir) == (images, None)


def test_a_source_on_the_command_line_keeps_the_files_config_overrides(tmp_path: Path) -> None:
    """The bug of the argv rewriting: naming a source dropped the file's own config_overrides, the demo's random
    teacher among them (the run then tried to download CLIP)."""
    demo = str(CONFIGS / "demo.yaml")
    expected = {**yaml.safe_load((CONFIGS / "demo.yaml").read_text())["config_overrides"], "drop_path_rate": 0.1}
    assert expected["use_random_teacher"] is True and expected["image_size"] == 64
    override = ["--config_overrides", '{"drop_path_rate": 0.1}']
    for source in (["--demo_dir", str(tmp_path / "demo")], ["--train_dir", str(tmp_path / "images")]):
        model_args, data_args, _ = parse_pretraining_arguments([demo, *override, *source])
        assert model_args.config_overrides == expected
        assert data_args.num_demo_images == 128
    no_source = write_yaml(tmp_path, {"config_overrides": {"use_random_teacher": True}, "max_steps": 3})
    model_args, data_args, _ = parse_pretraining_arguments([no_source, "--train_dir", "images", *override])
    assert model_args.config_overrides == {"use_random_teacher": True, "drop_path_rate": 0.1}
    assert data_args.train_dir == "images"


def test_a_hub_dataset_on_the_command_line_replaces_the_files_with_its_configuration(tmp_path: Path) -> None:
    hub = write_yaml(tmp_path, {"dataset_name": "org/data", "dataset_config_name": "full", "max_steps": 3})
    _, data_args, training_args = parse_pretraining_arguments([hub, "--data_files", "a.tar"])
    assert (data_args.dataset_name, data_args.dataset_config_name, data_args.data_files) == (None, None, ["a.tar"])
    _, data_args, _ = parse_pretraining_arguments([hub, "--dataset_config_name", "mini"])
    assert (data_args.dataset_name, data_args.dataset_config_name) == ("org/data", "mini")
    assert training_args.max_steps == 3


def test_output_dir_of_another_run_is_refused_unless_resuming_or_overwriting(tmp_path: Path) -> None:
    images = write_images(tmp_path / "images", 1)
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "config.json").write_text("{}")
    argv = ["--train_dir", images, "--max_steps", "1", "--per_device_train_batch_size", "1", "--output_dir",
            str(tmp_path / "run")]  # fmt: skip
    with pytest.raises(UserError, match="holds another run \\(final/\\)"):
        check(argv)
    check([*argv, "--resume_from_checkpoint", "latest"])
    check([*argv, "--overwrite_output_dir", "true"])


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large"])
def test_recipe_files_give_the_official_numbers_on_eight_processes(size: str) -> None:
    model_args, _, training_args = parse_pretraining_arguments(["--config", str(CONFIGS / f"vit-{size}.yaml")])
    schedule = compute_training_schedule(
        training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps, 8,
        training_args.learning_rate, training_args.learning_rate_batch_size,
        num_train_epochs=training_args.num_train_epochs, num_train_examples=training_args.num_train_examples,
        warmup_epochs=training_args.warmup_epochs,
    )  # fmt: skip
    assert model_args.model_preset == size
    assert (schedule.effective_batch_size, schedule.learning_rate) == (2048, 1.5e-3)
    assert (schedule.steps_per_epoch, schedule.max_steps, schedule.warmup_steps) == (625, 187_500, 6_250)
    assert (training_args.adam_beta1, training_args.adam_beta2, training_args.weight_decay) == (0.9, 0.999, 0.05)
    assert (training_args.min_learning_rate, training_args.max_grad_norm) == (1e-5, 3.0)
    assert training_args.torch_compile and training_args.mixed_precision == "bf16"  # the measured fast path


def test_demo_file_asks_for_a_random_teacher_and_offline_images() -> None:
    model_args, data_args, training_args = parse_pretraining_arguments(["--config", str(CONFIGS / "demo.yaml")])
    assert model_args.config_overrides["use_random_teacher"] is True
    assert data_args.demo_dir == "demo_data/images" and data_args.num_demo_images > 0 and data_args.train_dir is None
    assert training_args.mixed_precision == "no" and training_args.max_steps > 0
