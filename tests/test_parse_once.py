"""Every script and command parses its command line once (issue 20), through the code path `python run_x.py ...`,
the console commands and `python -m caev2_hf.<module>` take: the script's `__main__` blocks run in this process
(runpy), and argparse's parses are counted (one parse may call argparse again for a subcommand: counted once)."""

import argparse
import json
import runpy
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_config
from PIL import Image
from transformers import TrainingArguments

import caev2_hf_cli.parsing
import caev2_hf_commands
from caev2_hf import CAEv2ForPreTraining, CAEv2Model
from caev2_hf_cli.classification import ImageDataArguments
from caev2_hf_cli.segmentation import SegmentationDataArguments


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The `prog` of each parser that parsed a command line (a subcommand's parse inside another is not counted)."""
    calls, depth = [], [0]
    original = argparse.ArgumentParser.parse_known_args

    def counting(self, *args, **kwargs):
        if not depth[0]:
            calls.append(self.prog)
        depth[0] += 1
        try:
            return original(self, *args, **kwargs)
        finally:
            depth[0] -= 1

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", counting)
    return calls


@pytest.fixture
def stopped_mains(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Stops a command right after its parse: `run_command(main, *arguments)` records the arguments instead."""
    received, original = [], caev2_hf_cli.parsing.run_command

    def run_command(function, *args):
        if function.__name__ == "main":
            received.append(args)
            return None
        return original(function, *args)

    monkeypatch.setattr(caev2_hf_cli.parsing, "run_command", run_command)
    monkeypatch.setattr(caev2_hf_commands, "run_command", run_command)
    return received


def run_script(monkeypatch: pytest.MonkeyPatch, script: str, argv: list[str]) -> None:
    """`python script ARGV`, in this process."""
    monkeypatch.setattr(sys, "argv", [str(REPO_ROOT / script), *argv])
    runpy.run_path(str(REPO_ROOT / script), run_name="__main__")


def write_class_folders(root: Path) -> str:
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (16, 16), name == "cat" and "red" or "blue").save(root / name / "1.png")
    return str(root)


def test_run_pretrain_parses_once_and_keeps_the_files_overrides_when_naming_a_source(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, parses: list[str]
):
    """The demo for one update, with a source and an override on the command line: before, naming the source dropped
    the YAML's config_overrides (its random teacher among them) and the run tried to download CLIP."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["--config", str(REPO_ROOT / "configs" / "demo.yaml"), "--config_overrides", '{"drop_path_rate": 0.1}',
            "--demo_dir", str(tmp_path / "demo"), "--num_demo_images", "16", "--max_steps", "1", "--warmup_steps", "0",
            "--report_to", "none",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    run_script(monkeypatch, "run_pretrain.py", argv)
    assert parses == ["run_pretrain.py"]
    config = json.loads((tmp_path / "out" / "final" / "pretraining" / "config.json").read_text())
    assert (config["drop_path_rate"], config["use_random_teacher"], config["image_size"]) == (0.1, True, 64)


@pytest.mark.parametrize("script", ["run_linear_probe.py", "run_finetune.py"])
def test_classification_scripts_parse_once_and_hand_the_result_to_main(
    monkeypatch, tmp_path: Path, parses: list[str], stopped_mains: list[tuple], script: str
):
    (tmp_path / "encoder").mkdir()
    (tmp_path / "encoder" / "config.json").write_text('{"model_type": "caev2"}')
    images = write_class_folders(tmp_path / "images")
    argv = ["--model", str(tmp_path / "encoder"), "--train_dir", images, "--validation_dir", images, "--output_dir",
            str(tmp_path / "out"), "--seed", "3"]  # fmt: skip
    run_script(monkeypatch, script, argv)
    assert parses == [script]
    (arguments,) = stopped_mains
    assert isinstance(arguments[1], ImageDataArguments) and arguments[1].train_dir == images
    if script == "run_finetune.py":  # one parse also filled TrainingArguments
        assert isinstance(arguments[-1], TrainingArguments) and arguments[-1].seed == 3


def test_segmentation_script_parses_once_and_hands_the_result_to_main(
    monkeypatch, tmp_path: Path, parses: list[str], stopped_mains: list[tuple]
):
    argv = [str(REPO_ROOT / "configs" / "demo-segmentation.yaml"), "--output_dir", str(tmp_path), "--max_steps", "7"]
    run_script(monkeypatch, "run_semantic_segmentation.py", argv)
    assert parses == ["run_semantic_segmentation.py"]
    ((model_args, data_args, output_folder, training_args),) = stopped_mains
    assert isinstance(data_args, SegmentationDataArguments) and data_args.demo_data
    assert not output_folder.overwrite_output_dir
    assert training_args.max_steps == 7 and model_args.config_overrides["hidden_size"] == 96


def test_detection_script_parses_once_and_hands_the_result_to_main(
    monkeypatch, tmp_path: Path, parses: list[str], stopped_mains: list[tuple]
):
    CAEv2Model(build_tiny_config(image_size=64)).save_pretrained(tmp_path / "encoder")
    argv = [str(REPO_ROOT / "configs" / "demo-detection.yaml"), "--model", str(tmp_path / "encoder"), "--output_dir",
            str(tmp_path / "out"), "--max_steps", "5"]  # fmt: skip
    run_script(monkeypatch, "run_object_detection.py", argv)
    assert parses == ["run_object_detection.py"]
    ((model_args, data_args, output_folder, training_args),) = stopped_mains
    assert (
        data_args.demo_data
        and training_args.max_steps == 5
        and not output_folder.overwrite_output_dir
        and model_args.model == str(tmp_path / "encoder")
    )


def test_instance_segmentation_script_parses_once_and_hands_the_result_to_main(
    monkeypatch, tmp_path: Path, parses: list[str], stopped_mains: list[tuple]
):
    CAEv2Model(build_tiny_config(image_size=64, num_hidden_layers=4)).save_pretrained(tmp_path / "encoder")
    argv = [str(REPO_ROOT / "configs" / "demo-instance-segmentation.yaml"), "--model", str(tmp_path / "encoder"),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "5", "--min_size", "64"]  # fmt: skip
    run_script(monkeypatch, "run_instance_segmentation.py", argv)
    assert parses == ["run_instance_segmentation.py"]
    ((model_args, augmentation_args, data_args, output_folder, training_args),) = stopped_mains
    assert data_args.demo_data and training_args.max_steps == 5 and model_args.min_size == [64]
    assert not output_folder.overwrite_output_dir
    assert augmentation_args.detr_crop_size == [61, 96] and model_args.fpn_channels == 32


@pytest.fixture
def tiny_folders(tmp_path: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    CAEv2Model(build_tiny_config()).save_pretrained(tmp_path / "encoder")
    CAEv2ForPreTraining(build_tiny_config()).save_pretrained(tmp_path / "pretraining")
    Image.new("RGB", (40, 40), "green").save(tmp_path / "photo.png")
    return {"encoder": tmp_path / "encoder", "pretraining": tmp_path / "pretraining", "image": tmp_path / "photo.png"}


def console_cases(folders: dict[str, Path], out: Path) -> dict[str, list[str]]:
    return {
        "study": ["list", str(REPO_ROOT / "configs" / "paper" / "mini.yaml"), "--output_dir", str(out)],
        "visualize": ["--model", str(folders["encoder"]), "--image", str(folders["image"]), "--output_dir", str(out)],
        "hub": ["prepare", "--weights", str(folders["pretraining"]), "--output_dir", str(out), "--dry_run"],
        "model_cards": ["--output_dir", str(out), "--namespace", "my-org"],
    }


@pytest.mark.parametrize("command", ["visualize", "hub", "model_cards", "study"])
def test_console_commands_parse_once_then_run(
    monkeypatch, tmp_path: Path, tiny_folders: dict, parses: list[str], command: str
):
    monkeypatch.setattr(sys, "argv", [command, *console_cases(tiny_folders, tmp_path / "out")[command]])
    with pytest.raises(SystemExit) as exited:
        getattr(caev2_hf_commands, command)()
    assert exited.value.code in (0, None) and len(parses) == 1
    written = sorted(path.name for path in (tmp_path / "out").glob("*"))
    expected = {
        "visualize": ["photo.png"],
        "hub": [],  # a dry run lists the files and writes none
        "study": [],  # a listing reads the run folders and writes none
        "model_cards": ["caev2-vit-base.md", "caev2-vit-large.md", "caev2-vit-small.md", "caev2-vit-tiny.md"],
    }
    assert written == expected[command]


@pytest.mark.parametrize(
    ("module", "command"),
    [
        ("caev2_hf.visualize", "visualize"),
        ("caev2_hf.hub", "hub"),
        ("caev2_hf.hub.model_card", "model_cards"),
        ("caev2_hf.study", "study"),
    ],
)
def test_python_m_forms_parse_once_too(
    monkeypatch, tmp_path: Path, tiny_folders: dict, parses: list[str], stopped_mains: list[tuple], module, command
):
    monkeypatch.setattr(sys, "argv", [module, *console_cases(tiny_folders, tmp_path / "out")[command]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: this session has imported the module already
        try:
            runpy.run_module(module, run_name="__main__")
        except SystemExit as exited:  # visualize ends with its exit status
            assert exited.code is None
    assert len(parses) == 1 and len(stopped_mains) == 1


def test_the_converter_parses_once(monkeypatch, tmp_path: Path, parses: list[str], stopped_mains: list[tuple]):
    torch.save({"model": {}}, tmp_path / "official.pth")
    argv = ["--checkpoint", str(tmp_path / "official.pth"), "--size", "tiny", "--output_dir", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", ["caev2-convert-checkpoint", *argv])
    with pytest.raises(SystemExit):
        caev2_hf_commands.convert_checkpoint()
    ((arguments,),) = stopped_mains
    assert len(parses) == 1 and (arguments.size, arguments.to_official) == ("tiny", False)


@pytest.mark.parametrize(
    ("script", "argv"),
    [
        ("run_finetune.py", ["--model", "./nothere", "--train_dir", "a", "--validation_dir", "b"]),
        ("run_semantic_segmentation.py", ["--model", "./nothere", "--demo_data", "true"]),
        ("run_object_detection.py", ["--model", "./nothere", "--demo_data", "true"]),
        ("run_instance_segmentation.py", ["--model", "./nothere", "--demo_data", "true"]),
    ],
)
def test_trainer_scripts_check_their_own_arguments_before_building_training_arguments(
    monkeypatch, tmp_path: Path, parses: list[str], capsys, script: str, argv: list[str]
):
    """Building TrainingArguments imports transformers' integrations (about 2 s): a bad path is refused first."""
    built = []
    original = TrainingArguments.__post_init__
    monkeypatch.setattr(TrainingArguments, "__post_init__", lambda self: built.append(1) or original(self))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        run_script(monkeypatch, script, argv)
    assert exited.value.code == 2 and capsys.readouterr().err == "error: --model ./nothere: no such folder. " + (
        "Give a saved model folder (with config.json) or a Hub id.\n"
    )
    assert parses == [script] and built == []
