"""Wrong inputs through the real command-line entry points (issue 13): each ends in one line on stderr naming the
problem and its fix, exit status 2, no traceback, before any model is built (a few seconds per case)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image


REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = str(REPO_ROOT / "configs" / "demo.yaml")
PRETRAIN = [str(REPO_ROOT / "run_pretrain.py")]
PROBE = [str(REPO_ROOT / "run_linear_probe.py")]
FINETUNE = [str(REPO_ROOT / "run_finetune.py")]
SEGMENTATION = [str(REPO_ROOT / "run_semantic_segmentation.py")]
DETECTION = [str(REPO_ROOT / "run_object_detection.py")]
INSTANCE_SEGMENTATION = [str(REPO_ROOT / "run_instance_segmentation.py")]


def console_command(function: str) -> list[str]:
    """What the console script setup.py installs runs (`caev2-hub` is `caev2_hf_commands:hub`)."""
    return ["-c", f"import caev2_hf_commands; caev2_hf_commands.{function}()"]


CONVERT = console_command("convert_checkpoint")
HUB = console_command("hub")
VISUALIZE = console_command("visualize")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Every wrong input of the table below, made once: empty folders, stray files, corrupt images, bad checkpoints."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "empty").mkdir()
    for name in ("cat", "dog"):
        (root / "classes_without_files" / name).mkdir(parents=True)
    (root / "only_text" / "cat").mkdir(parents=True)
    (root / "only_text" / "cat" / "notes.txt").write_text("not an image")
    (root / "corrupt" / "cat").mkdir(parents=True)
    (root / "corrupt" / "cat" / "1.jpg").write_bytes(b"not a jpeg at all")
    Image.new("RGB", (16, 16)).save(root / "photo.jpg")
    (root / "corrupt" / "cat" / "2.png").write_bytes((root / "photo.jpg").read_bytes()[:40])  # a cut JPEG
    (root / "good" / "cat").mkdir(parents=True)
    Image.new("RGB", (16, 16), "red").save(root / "good" / "cat" / "1.png")
    (root / "notes.txt").write_text("model weights, honest\n")
    torch.save({"model": {"encoder.cls_token": torch.zeros(1, 1, 8)}}, root / "full.pth")
    data = (root / "full.pth").read_bytes()
    (root / "truncated.pth").write_bytes(data[: len(data) // 2])
    (root / "encoder").mkdir()
    (root / "encoder" / "config.json").write_text('{"model_type": "caev2"}')
    (root / "previous_run" / "checkpoints" / "checkpoint-00000010").mkdir(parents=True)
    (root / "final").mkdir()
    (root / "final" / "config.json").write_text('{"model_type": "caev2", "architectures": ["CAEv2Model"]}')
    for name, config in {
        "segmentation": '{"model_type": "upernet", "architectures": ["UperNetForSemanticSegmentation"]}',
        "detector": '{"model_type": "lw_detr", "architectures": ["LwDetrForObjectDetection"]}',
        "vit": '{"model_type": "vit", "architectures": ["ViTForImageClassification"]}',
    }.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(config)
    (root / "finished_run").mkdir()  # what a finished Trainer run or probe leaves
    for name in ("results.json", "model.safetensors", "config.json"):
        (root / "finished_run" / name).write_text("{}")
    (root / "interrupted_run" / "checkpoint-5").mkdir(parents=True)  # a Trainer run stopped after a checkpoint
    (root / "interrupted_run" / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (root / "incomplete_checkpoint" / "checkpoint-5").mkdir(parents=True)  # stopped while writing it
    return root


def pretrain_probe_and_convert_cases() -> list[tuple[str, list[str], list[str]]]:
    """(case id, command after `python`, key words of the message); `{root}` is the inputs folder."""
    probe = [*PROBE, "--model", "{root}/encoder", "--output_dir", "{root}/probe_out"]
    finetune = [*FINETUNE, "--model", "{root}/encoder", "--output_dir", "{root}/finetune_out"]
    return [
        ("pretrain-missing-train-dir", [*PRETRAIN, "--train_dir", "{root}/typo", "--max_steps", "2"],
         ["--train_dir", "typo", "no such folder"]),
        ("pretrain-demo-config-with-missing-train-dir", [*PRETRAIN, DEMO_CONFIG, "--train_dir", "{root}/typo"],
         ["--train_dir", "typo", "no such folder"]),
        ("pretrain-empty-train-dir", [*PRETRAIN, DEMO_CONFIG, "--train_dir", "{root}/empty"],
         ["--train_dir", "holds no image files"]),
        ("pretrain-negative-batch", [*PRETRAIN, DEMO_CONFIG, "--per_device_train_batch_size", "-4"],
         ["--per_device_train_batch_size -4", "greater than 0"]),
        ("pretrain-zero-batch", [*PRETRAIN, DEMO_CONFIG, "--per_device_train_batch_size", "0"],
         ["--per_device_train_batch_size 0", "greater than 0"]),
        ("pretrain-batch-larger-than-data", [*PRETRAIN, DEMO_CONFIG, "--per_device_train_batch_size", "512"],
         ["128 images", "fewer than a batch of 512", "--per_device_train_batch_size"]),
        ("pretrain-no-data", [*PRETRAIN, "--max_steps", "2"], ["No training data", "--train_dir"]),
        ("pretrain-two-sources", [*PRETRAIN, "--train_dir", "{root}/good", "--dataset_name", "x/y", "--max_steps", "2"],
         ["one data source", "--train_dir", "--dataset_name"]),
        ("pretrain-no-length", [*PRETRAIN, "--train_dir", "{root}/good", "--per_device_train_batch_size", "1"],
         ["--max_steps"]),
        ("pretrain-output-dir-holds-a-run",
         [*PRETRAIN, DEMO_CONFIG, "--output_dir", "{root}/previous_run"],
         ["holds another run", "--resume_from_checkpoint latest", "--overwrite_output_dir"]),
        ("pretrain-missing-config-file", [*PRETRAIN, "--config", "{root}/nothere.yaml"], ["no such file"]),
        ("pretrain-from-an-encoder-folder", [*PRETRAIN, DEMO_CONFIG, "--model_name_or_path", "{root}/final"],
         ["--model_name_or_path", "holds a CAEv2Model", "final/pretraining"]),
        ("pretrain-from-a-folder-without-config",
         [*PRETRAIN, DEMO_CONFIG, "--model_name_or_path", "{root}/previous_run/checkpoints/checkpoint-00000010"],
         ["--model_name_or_path", "holds no config.json", "final/pretraining"]),
        ("pretrain-image-as-data-files", [*PRETRAIN, DEMO_CONFIG, "--data_files", "{root}/photo.jpg", "--demo_dir", ""],
         ["--data_files", "photo.jpg: give .tar (webdataset) or .parquet shards", "--train_dir"]),
        ("pretrain-output-dir-is-a-file", [*PRETRAIN, DEMO_CONFIG, "--output_dir", "{root}/notes.txt"],
         ["--output_dir", "notes.txt is a file"]),
        ("pretrain-override-typo", [*PRETRAIN, DEMO_CONFIG, "--config_overrides", '{"drop_path_rte": 0.0}'],
         ["--config_overrides", "'drop_path_rte' is not a CAEv2Config field", "did you mean 'drop_path_rate'"]),
        ("pretrain-override-too-many-masked", [*PRETRAIN, DEMO_CONFIG, "--config_overrides", '{"num_masking_patches": 500}'],
         ["--config_overrides", "num_masking_patches=500 is outside [0, "]),
        ("pretrain-unknown-preset", [*PRETRAIN, DEMO_CONFIG, "--model_preset", "huge"],
         ["--model_preset huge", "choose one of tiny, small, base, large"]),
        ("convert-text-file", [*CONVERT, "--checkpoint", "{root}/notes.txt", "--size", "tiny", "--output_dir", "{root}/o"],
         ["notes.txt is a text file", "not a PyTorch checkpoint"]),
        ("convert-jpeg", [*CONVERT, "--checkpoint", "{root}/photo.jpg", "--size", "tiny", "--output_dir", "{root}/o"],
         ["photo.jpg is a JPEG image", "not a PyTorch checkpoint"]),
        ("convert-truncated-checkpoint",
         [*CONVERT, "--checkpoint", "{root}/truncated.pth", "--size", "tiny", "--output_dir", "{root}/o"],
         ["truncated or damaged", "download or copy it again"]),
        ("convert-missing-path", [*CONVERT, "--checkpoint", "{root}/missing.pth", "--size", "tiny", "--output_dir", "{root}/o"],
         ["missing.pth: no such file"]),
        ("probe-class-folders-without-files",
         [*probe, "--train_dir", "{root}/classes_without_files", "--validation_dir", "{root}/classes_without_files"],
         ["--train_dir", "holds no image files", "no file at all"]),
        ("probe-only-a-text-file", [*probe, "--train_dir", "{root}/only_text", "--validation_dir", "{root}/good"],
         ["--train_dir", "holds no image files", "notes.txt"]),
        ("probe-only-corrupt-images", [*probe, "--train_dir", "{root}/good", "--validation_dir", "{root}/corrupt"],
         ["--validation_dir", "none of the 2 image file(s) tried opens", "corrupt"]),
        ("probe-missing-model",
         [*PROBE, "--model", "./nothere", "--train_dir", "{root}/good", "--validation_dir", "{root}/good",
          "--output_dir", "{root}/p"],
         ["--model ./nothere", "no such folder"]),
        ("finetune-only-corrupt-images", [*finetune, "--train_dir", "{root}/corrupt", "--validation_dir", "{root}/good"],
         ["--train_dir", "none of the 2 image file(s) tried opens"]),
        ("finetune-no-validation-data", [*finetune, "--train_dir", "{root}/good"], ["No validation data"]),
        ("hub-prepare-missing-weights", [*HUB, "prepare", "--weights", "{root}/nothere", "--output_dir", "{root}/h"],
         ["--weights", "no such folder"]),
        ("hub-push-missing-folder", [*HUB, "push", "--folder", "{root}/nothere", "--repo_id", "a/b"],
         ["--folder", "no such folder"]),
        ("hub-prepare-run-folder", [*HUB, "prepare", "--weights", "{root}", "--output_dir", "{root}/h"],
         ["--weights", "a run_pretrain.py output folder", "final"]),
        ("python-m-hub-missing-folder", ["-m", "caev2_hf.hub", "push", "--folder", "{root}/nothere", "--repo_id", "a/b"],
         ["--folder", "no such folder"]),
        ("python-m-convert-jpeg", ["-m", "caev2_hf.hub.convert_official_checkpoint", "--checkpoint", "{root}/photo.jpg",
                                   "--size", "tiny", "--output_dir", "{root}/o"],
         ["photo.jpg is a JPEG image", "not a PyTorch checkpoint"]),
        ("convert-back-a-folder-without-config",
         [*CONVERT, "--to_official", "--checkpoint", "{root}/empty", "--output_dir", "{root}/o"],
         ["--to_official --checkpoint", "no config.json there"]),
        ("visualize-missing-model", [*VISUALIZE, "--model", "./nothere", "--image", "{root}/photo.jpg", "--output_dir",
                                     "{root}/v"], ["--model ./nothere", "no such folder"]),
        ("segmentation-no-data", [*SEGMENTATION, "--model", "{root}/encoder", "--num_labels", "3"],
         ["exactly one data source", "--demo_data true"]),
    ]  # fmt: skip


def trainer_script_cases() -> list[tuple[str, list[str], list[str]]]:
    """Issue 22: the Trainer scripts check TrainingArguments' values, their own, the model folder and the output
    folder before a model is built; the probe the model and output folders."""
    finetune = [*FINETUNE, "--model", "{root}/encoder", "--train_dir", "{root}/good", "--validation_dir",
                "{root}/good"]  # fmt: skip
    finetune_out = [*finetune, "--output_dir", "{root}/finetune_out"]
    segmentation = [*SEGMENTATION, "--model", "{root}/encoder", "--demo_data", "true"]
    segmentation_out = [*segmentation, "--output_dir", "{root}/segmentation_out"]
    detection = [*DETECTION, "--model", "{root}/encoder", "--demo_data", "true", "--demo_dir", "{root}/demo_detection"]
    detection_out = [*detection, "--output_dir", "{root}/detection_out"]
    instances = [*INSTANCE_SEGMENTATION, "--model", "{root}/encoder", "--demo_data", "true", "--demo_dir",
                 "{root}/demo_instances"]  # fmt: skip
    instances_out = [*instances, "--output_dir", "{root}/instances_out"]
    probe = [*PROBE, "--train_dir", "{root}/good", "--validation_dir", "{root}/good"]
    return [
        # TrainingArguments' values, the same check in each Trainer script
        ("finetune-zero-batch", [*finetune_out, "--per_device_train_batch_size", "0"],
         ["--per_device_train_batch_size 0", "greater than 0"]),
        ("finetune-negative-learning-rate", [*finetune_out, "--learning_rate", "-1"],
         ["--learning_rate -1", "greater than 0"]),
        ("finetune-zero-epochs", [*finetune_out, "--num_train_epochs", "0"],
         ["--num_train_epochs 0", "greater than 0", "--max_steps"]),
        ("finetune-zero-max-steps", [*finetune_out, "--max_steps", "0"], ["--max_steps 0", "1 or more"]),
        ("finetune-zero-gradient-accumulation", [*finetune_out, "--gradient_accumulation_steps", "0"],
         ["--gradient_accumulation_steps 0", "greater than 0"]),
        ("finetune-negative-warmup", [*finetune_out, "--warmup_steps", "-3"], ["--warmup_steps -3", "0 or more"]),
        ("segmentation-negative-batch", [*segmentation_out, "--per_device_train_batch_size", "-2"],
         ["--per_device_train_batch_size -2", "greater than 0"]),
        ("segmentation-negative-learning-rate", [*segmentation_out, "--learning_rate", "-1"],
         ["--learning_rate -1", "greater than 0"]),
        ("segmentation-negative-weight-decay", [*segmentation_out, "--weight_decay", "-0.1"],
         ["--weight_decay -0.1", "0 or more"]),
        ("detection-zero-batch", [*detection_out, "--per_device_train_batch_size", "0"],
         ["--per_device_train_batch_size 0", "greater than 0"]),
        ("detection-negative-learning-rate", [*detection_out, "--learning_rate", "-1"],
         ["--learning_rate -1", "greater than 0"]),
        ("detection-adam-beta-of-1", [*detection_out, "--adam_beta2", "1"], ["--adam_beta2 1", "[0, 1)"]),
        ("instance-segmentation-zero-batch", [*instances_out, "--per_device_train_batch_size", "0"],
         ["--per_device_train_batch_size 0", "greater than 0"]),
        ("instance-segmentation-zero-max-steps", [*instances_out, "--max_steps", "0"], ["--max_steps 0", "1 or more"]),
        # the scripts' own values
        ("finetune-drop-path-2", [*finetune_out, "--drop_path_rate", "2"], ["--drop_path_rate 2", "[0, 1)"]),
        ("finetune-layer-decay-0", [*finetune_out, "--layer_decay", "0"], ["--layer_decay 0", "(0, 1]"]),
        ("finetune-layer-decay-5", [*finetune_out, "--layer_decay", "5"], ["--layer_decay 5", "(0, 1]"]),
        ("finetune-crop-min-scale-0", [*finetune_out, "--crop_min_scale", "0"], ["--crop_min_scale 0", "(0, 1]"]),
        ("segmentation-zero-demo-images", [*segmentation_out, "--demo_num_train_images", "0"],
         ["--demo_num_train_images 0", "greater than 0"]),
        ("segmentation-zero-crop-size", [*segmentation_out, "--crop_size", "0"],
         ["--crop_size 0", "greater than 0"]),  # it blamed --eval_stride
        ("segmentation-drop-path-1", [*segmentation_out, "--drop_path_rate", "1"], ["--drop_path_rate 1", "[0, 1)"]),
        ("segmentation-negative-auxiliary-weight", [*segmentation_out, "--auxiliary_loss_weight", "-1"],
         ["--auxiliary_loss_weight -1", "0 (no auxiliary head) or more"]),
        ("detection-layer-decay-2", [*detection_out, "--layer_decay", "2"], ["--layer_decay 2", "(0, 1]"]),
        ("detection-zero-demo-images", [*detection_out, "--demo_num_validation_images", "0"],
         ["--demo_num_validation_images 0", "greater than 0"]),
        ("instance-segmentation-min-size-above-max", [*instances_out, "--min_size", "900", "--max_size", "800"],
         ["--min_size [900]", "none above --max_size 800"]),
        # a folder that holds no CAE v2 encoder
        ("finetune-from-a-segmentation-output", [*FINETUNE, "--model", "{root}/segmentation", "--train_dir",
                                                 "{root}/good", "--validation_dir", "{root}/good", "--output_dir",
                                                 "{root}/f"],
         ["--model", "holds a UperNet segmentation model", "not a CAE v2 checkpoint", "final/"]),
        ("finetune-from-another-architecture", [*FINETUNE, "--model", "{root}/vit", "--train_dir", "{root}/good",
                                                "--validation_dir", "{root}/good", "--output_dir", "{root}/f"],
         ["holds a vit model (ViTForImageClassification)", "not a CAE v2 checkpoint"]),
        ("probe-from-a-segmentation-output", [*probe, "--model", "{root}/segmentation", "--output_dir", "{root}/p"],
         ["holds a UperNet segmentation model", "not an image encoder", "final/"]),
        ("probe-from-a-detector", [*probe, "--model", "{root}/detector", "--output_dir", "{root}/p"],
         ["holds an LW-DETR detector", "not an image encoder"]),
        # an output folder that holds another run
        ("finetune-over-a-finished-run", [*finetune, "--output_dir", "{root}/finished_run"],
         ["--output_dir", "finished_run holds another run (results.json, model.safetensors)",
          "--overwrite_output_dir true"]),
        ("finetune-over-an-interrupted-run", [*finetune, "--output_dir", "{root}/interrupted_run"],
         ["holds another run (checkpoint-5/)", "--resume_from_checkpoint latest", "--overwrite_output_dir true"]),
        ("finetune-resume-latest-without-a-checkpoint",
         [*finetune, "--output_dir", "{root}/incomplete_checkpoint", "--resume_from_checkpoint", "latest"],
         ["--resume_from_checkpoint latest", "holds no complete checkpoint-N folder", "nothing to continue"]),
        ("segmentation-over-a-finished-run", [*segmentation, "--output_dir", "{root}/finished_run"],
         ["holds another run (results.json, model.safetensors)", "--overwrite_output_dir true"]),
        ("detection-over-a-finished-run", [*detection, "--output_dir", "{root}/finished_run"],
         ["holds another run (results.json, model.safetensors)", "--overwrite_output_dir true"]),
        ("instance-segmentation-over-a-finished-run", [*instances, "--output_dir", "{root}/finished_run"],
         ["holds another run (results.json, model.safetensors)", "--overwrite_output_dir true"]),
        ("instance-segmentation-over-an-interrupted-run", [*instances, "--output_dir", "{root}/interrupted_run"],
         ["holds another run (checkpoint-5/)", "--resume_from_checkpoint latest", "--overwrite_output_dir true"]),
        ("probe-over-a-finished-run", [*probe, "--model", "{root}/encoder", "--output_dir", "{root}/finished_run"],
         ["holds another run (results.json, model.safetensors)", "Start afresh with --overwrite_output_dir true"]),
        ("finetune-output-dir-is-a-file", [*finetune, "--output_dir", "{root}/notes.txt"],
         ["--output_dir", "notes.txt is a file"]),
    ]  # fmt: skip


CASES = pretrain_probe_and_convert_cases() + trainer_script_cases()


def run_command(command: list[str], cwd: Path, **environment: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **environment}
    return subprocess.run(
        [sys.executable, *command], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize(("command", "key_words"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_ends_in_one_clear_line_and_exit_status_2(inputs: Path, tmp_path: Path, command, key_words):
    command = [part.replace("{root}", str(inputs)) for part in command]
    assert_one_error_line(run_command(command, cwd=tmp_path), key_words)


def assert_one_error_line(result: subprocess.CompletedProcess, key_words: list[str]) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for word in key_words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize(
    "command",
    [
        [*FINETUNE, "configs/finetune-vit-base.yaml", "--train_dir", "{root}/good", "--validation_dir", "{root}/good"],
        [*SEGMENTATION, "configs/demo-segmentation.yaml", "--bf16", "true"],
        [*DETECTION, "configs/demo-detection.yaml", "--bf16", "true"],
        [*INSTANCE_SEGMENTATION, "configs/maskrcnn-vit-small-1x.yaml", "--demo_data", "true"],
    ],
    ids=["finetune", "segmentation", "detection", "instance-segmentation"],
)
def test_bf16_without_a_gpu_is_one_line_in_every_trainer_script(inputs: Path, tmp_path: Path, command: list[str]):
    """The recipes ask for bf16 (their GPUs compute in it); where no GPU does, TrainingArguments' own refusal named
    no flag, and run_instance_segmentation.py's ended in its traceback."""
    command = [str(REPO_ROOT / part) if part.startswith("configs/") else part for part in command]
    command = [*command, "--model", str(inputs / "encoder"), "--output_dir", str(tmp_path / "out")]
    result = run_command([part.replace("{root}", str(inputs)) for part in command], tmp_path, CUDA_VISIBLE_DEVICES="")
    assert_one_error_line(result, ["--bf16 true: this machine has no GPU", "--bf16 false", "--use_cpu true"])
    assert not (tmp_path / "out").exists()


def test_demo_config_never_writes_into_a_folder_it_was_not_asked_for(inputs: Path, tmp_path: Path):
    """configs/demo.yaml with a typo'd --train_dir: the demo's images go nowhere (not into the typo, not into the
    demo's own folder, which the command line replaced), and nothing else is created either."""
    result = run_command([*PRETRAIN, DEMO_CONFIG, "--train_dir", "demo_imgaes"], cwd=tmp_path)
    assert result.returncode == 2 and "demo_imgaes: no such folder" in result.stderr
    assert sorted(os.listdir(tmp_path)) == []


def test_argparse_errors_keep_exit_status_2_without_traceback(tmp_path: Path):
    result = run_command([*PRETRAIN, "--max_stepz", "3"], cwd=tmp_path)
    assert result.returncode == 2 and "unrecognized arguments: --max_stepz 3" in result.stderr
    assert "did you mean --max_steps for --max_stepz?" in result.stderr
    assert "Traceback" not in result.stderr
    abbreviated = run_command([*PRETRAIN, "--max_step", "3"], cwd=tmp_path)  # argparse would take it for --max_steps
    assert abbreviated.returncode == 2 and "did you mean --max_steps for --max_step?" in abbreviated.stderr
    for command in (FINETUNE, SEGMENTATION):  # one parse over the script's classes and TrainingArguments
        typo = run_command([*command, "--learning_rat", "0.1"], cwd=tmp_path)
        assert typo.returncode == 2 and "unrecognized arguments: --learning_rat 0.1" in typo.stderr
        assert "did you mean --learning_rate for --learning_rat?" in typo.stderr and "Traceback" not in typo.stderr
    probe_typo = run_command([*PROBE, "--learning_rates", "0.1"], cwd=tmp_path)  # issue 22: not --base_learning_rate
    assert probe_typo.returncode == 2
    assert "did you mean --fast_base_learning_rates for --learning_rates?" in probe_typo.stderr
    abbreviated = run_command([*VISUALIZE, "--mod", "m", "--image", "i", "--output_dir", "o"], cwd=tmp_path)
    assert abbreviated.returncode == 2 and "arguments are required: --model" in abbreviated.stderr  # --mod is not it


def test_a_bug_keeps_its_traceback(tmp_path: Path):
    """Only user errors are shortened: any other exception still shows where it happened."""
    code = (
        "from caev2_hf_cli.parsing import run_command\ndef main():\n    raise KeyError('a bug')\nrun_command(main)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "Traceback" in result.stderr and "KeyError: 'a bug'" in result.stderr


@pytest.mark.parametrize(
    ("script", "flags"),
    [
        (FINETUNE, ["--crop_min_scale", "--overwrite_output_dir", "--layer_decay"]),
        (PROBE, ["--overwrite_output_dir", "--fast_base_learning_rates"]),
        (SEGMENTATION, ["--overwrite_output_dir", "--crop_size"]),
        (DETECTION, ["--overwrite_output_dir", "--lwdetr_size"]),
        (INSTANCE_SEGMENTATION, ["--overwrite_output_dir", "--fpn_channels", "--detr_crop_size"]),
        (PRETRAIN, ["--overwrite_output_dir", "--crop_min_scale"]),
    ],
)
def test_help_lists_the_scripts_options(tmp_path: Path, script: list[str], flags: list[str]):
    """argparse expands % in help texts: a stray one (8% of an image) turned --help into a traceback."""
    result = run_command([*script, "--help"], cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for flag in flags:
        assert flag in result.stdout
