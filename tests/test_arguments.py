"""Unit tests for caev2_hf.cli: config files turned into flags, found by flag or position, then overridden."""

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from caev2_hf.cli import (
    UserError,
    check_image_folder,
    check_model_path,
    config_to_arguments,
    parse_arguments_with_config,
    parse_known_arguments_with_config,
    run_main,
)
from caev2_hf.evaluation.data_arguments import ImageDataArguments
from caev2_hf.pretraining.arguments import parse_pretraining_arguments


@dataclass
class RequiredArguments:
    output_dir: str = field(metadata={"help": "A field without a default."})
    epochs: int = field(default=1, metadata={"help": "A field with one."})


def test_config_values_become_command_line_flags():
    values = {"lr": 0.1, "files": ["a", "b"], "flag": True, "unset": None, "kwargs": {"min_lr": 1e-6}}
    assert config_to_arguments(values) == [
        "--lr", "0.1", "--files", "a", "b", "--flag", "true", "--kwargs", '{"min_lr": 1e-06}',
    ]  # fmt: skip


def test_config_file_is_found_by_flag_and_overridden(tmp_path: Path):
    config = tmp_path / "probe.json"
    config.write_text('{"train_dir": "a", "image_column": "jpg", "streaming": false}')
    (data_args,) = parse_arguments_with_config(
        (ImageDataArguments,), ["--image_column", "png", "--config", str(config)]
    )
    assert (data_args.train_dir, data_args.image_column, data_args.streaming) == ("a", "png", False)


def test_config_file_given_first_may_fill_required_fields(tmp_path: Path):
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\nepochs: 3\n")
    (arguments,) = parse_arguments_with_config((RequiredArguments,), [str(config), "--epochs", "5"])
    assert (arguments.output_dir, arguments.epochs) == ("out", 5)


@pytest.mark.parametrize("form", ["separate", "inline"])
def test_config_overrides_on_the_command_line_change_only_their_keys(form: str):
    """The demo's YAML sets a 64 px image and a random teacher: overriding drop_path_rate must keep both."""
    demo = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    override = '{"drop_path_rate": 0.25}'
    flags = ["--config_overrides", override] if form == "separate" else [f"--config_overrides={override}"]
    model_args, _, _ = parse_pretraining_arguments([demo, *flags])
    overrides = model_args.config_overrides
    assert (overrides["drop_path_rate"], overrides["image_size"], overrides["use_random_teacher"]) == (0.25, 64, True)


def test_config_file_with_an_unknown_key_is_refused_with_a_suggestion(tmp_path: Path):
    config = tmp_path / "probe.yaml"
    config.write_text("validation_dirr: val\n")
    with pytest.raises(ValueError, match=r"unknown argument\(s\) validation_dirr \(did you mean \['validation_dir'\]"):
        parse_arguments_with_config((ImageDataArguments,), ["--config", str(config)])


def test_a_missing_config_file_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="nothere.yaml: no such file"):
        parse_arguments_with_config((ImageDataArguments,), ["--config", str(tmp_path / "nothere.yaml")])


def test_known_arguments_leave_other_classes_flags_and_keys_alone(tmp_path: Path):
    config = tmp_path / "finetune.yaml"
    config.write_text("train_dir: a\nlearning_rate: 0.001\n")  # learning_rate belongs to TrainingArguments
    (data_args,) = parse_known_arguments_with_config(
        (ImageDataArguments,), [str(config), "--validation_dir", "b", "--output_dir", "out", "--bf16"]
    )
    assert (data_args.train_dir, data_args.validation_dir) == ("a", "b")


def write_images(folder: Path, count: int, readable: bool = True) -> Path:
    (folder / "class").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        if readable:
            Image.new("RGB", (8, 8)).save(folder / "class" / f"{index}.png")
        else:
            (folder / "class" / f"{index}.jpg").write_bytes(b"not an image")
    return folder


def test_check_image_folder_counts_up_to_what_is_needed_and_verifies_on_request(tmp_path: Path):
    folder = write_images(tmp_path / "images", 5)
    assert check_image_folder(str(folder), "--train_dir", at_least=3) == 3
    assert check_image_folder(str(folder), "--train_dir", at_least=10) == 5
    write_images(folder, 2, readable=False)  # a few corrupt files among readable ones pass
    assert check_image_folder(str(folder), "--train_dir", verify=20) == 1
    broken = write_images(tmp_path / "broken", 3, readable=False)
    assert check_image_folder(str(broken), "--train_dir") == 1  # file names only
    with pytest.raises(UserError, match="none of the 3 image file"):
        check_image_folder(str(broken), "--train_dir", verify=20)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_image_folder(str(tmp_path / "file.png"), "--train_dir")


def test_check_model_path_lets_hub_ids_through_and_refuses_missing_folders(tmp_path: Path):
    check_model_path("org/caev2-vit-base")  # a Hub id: checked when loaded
    with pytest.raises(UserError, match="no such folder"):
        check_model_path(str(tmp_path / "outputs" / "final"))
    with pytest.raises(UserError, match="holds no config.json"):
        check_model_path(str(tmp_path))


def test_image_data_arguments_name_a_local_dataset_after_its_folder_not_its_split(tmp_path: Path):
    data = ImageDataArguments(
        train_dir=str(tmp_path / "flowers" / "train"), validation_dir=str(tmp_path / "flowers" / "val")
    )
    assert data.dataset_id == "flowers"
    assert ImageDataArguments(validation_dir=str(tmp_path / "digits" / "val")).dataset_id == "digits"
    assert ImageDataArguments(dataset_name="ILSVRC/imagenet-1k").dataset_id == "ILSVRC/imagenet-1k"
    named = ImageDataArguments(validation_dir=str(tmp_path / "val"), dataset_display_name="my-flowers")
    assert named.dataset_id == "my-flowers"


def test_image_data_arguments_check_sources_and_class_folders(tmp_path: Path):
    good = str(write_images(tmp_path / "good", 2))
    ImageDataArguments(train_dir=good, validation_dir=good).check()
    with pytest.raises(UserError, match="No validation data"):
        ImageDataArguments(train_dir=good).check()
    with pytest.raises(UserError, match="not both"):
        ImageDataArguments(dataset_name="org/data", train_dir=good).check()
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "1.png")
    with pytest.raises(UserError, match="no class subfolders"):
        ImageDataArguments(train_dir=str(flat), validation_dir=good).check()


def test_argument_modules_import_without_torch_and_the_package_still_registers_on_use():
    """`--help` is fast because the scripts' argument modules import neither torch nor transformers' models; the
    Auto classes still know CAE v2 as soon as they are used after `import caev2_hf`."""
    code = (
        "import sys\n"
        "import caev2_hf, caev2_hf.cli, caev2_hf.pretraining.arguments, caev2_hf.evaluation.arguments\n"
        "import caev2_hf.evaluation.data_arguments, caev2_hf.hub.model_card\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "from transformers import AutoConfig\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "assert 'caev2' in CONFIG_MAPPING\n"
        "from transformers import AutoModel\n"
        "from caev2_hf import CAEv2Config, CAEv2Model\n"
        "assert type(AutoModel.from_config(CAEv2Config.from_preset('tiny'))) is CAEv2Model\n"
        "assert CAEv2Model._auto_class == 'AutoModel'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def test_ctrl_c_ends_a_command_in_one_line_with_status_130(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exited:
        run_main(interrupted)
    assert exited.value.code == 130 and capsys.readouterr().err == "interrupted\n"
