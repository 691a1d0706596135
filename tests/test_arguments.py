"""The scripts' arguments through caev2_hf_cli: config files found by flag or position, read with the flags' types,
overridden by the command line; the cheap checks; and `import caev2_hf` registering the Auto classes plainly."""

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import transformers.utils
from PIL import Image
from transformers import TrainingArguments

from caev2_hf_cli import pretraining
from caev2_hf_cli.checks import (
    PRESET_NAMES,
    check_decay,
    check_encoder_folder,
    check_image_folder,
    check_model_path,
    check_rate,
    describe_non_encoder,
)
from caev2_hf_cli.classification import ImageDataArguments, ProbeArguments, ProbeModelArguments
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.parsing import parse_arguments, run_command
from caev2_hf_cli.trainer_arguments import check_bf16_support, check_training_values, effective_values


@dataclass
class RequiredArguments:
    output_dir: str = field(metadata={"help": "A field without a default."})
    epochs: int = field(default=1, metadata={"help": "A field with one."})


def test_config_values_mean_what_the_same_flags_mean(tmp_path: Path):
    """Numbers, lists, booleans, mappings and None in the file give the arguments their flags give."""
    config = tmp_path / "run.yaml"
    config.write_text(
        "learning_rate: 1e-4\ndata_files: [a.tar, b.tar]\ntorch_compile: true\nhub_model_id: null\n"
        "config_overrides: {drop_path_rate: 1.0e-6}\n"
    )
    flags = ["--learning_rate", "1e-4", "--data_files", "a.tar", "b.tar", "--torch_compile", "true",
             "--config_overrides", '{"drop_path_rate": 1e-06}']  # fmt: skip
    from_file = parse_arguments(pretraining.ARGUMENT_CLASSES, [str(config)])
    assert from_file == parse_arguments(pretraining.ARGUMENT_CLASSES, flags)
    assert from_file[2].learning_rate == 1e-4 and from_file[2].hub_model_id is None


def test_config_file_is_found_by_flag_and_overridden(tmp_path: Path):
    config = tmp_path / "probe.json"
    config.write_text('{"train_dir": "a", "image_column": "jpg", "streaming": false}')
    (data_args,) = parse_arguments((ImageDataArguments,), ["--image_column", "png", "--config", str(config)])
    assert (data_args.train_dir, data_args.image_column, data_args.streaming) == ("a", "png", False)


def test_config_file_given_first_may_fill_required_fields(tmp_path: Path):
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\nepochs: 3\n")
    (arguments,) = parse_arguments((RequiredArguments,), [str(config), "--epochs", "5"])
    assert (arguments.output_dir, arguments.epochs) == ("out", 5)


@pytest.mark.parametrize("form", ["separate", "inline"])
def test_config_overrides_on_the_command_line_change_only_their_keys(form: str):
    """The demo's YAML sets a 64 px image and a random teacher: overriding drop_path_rate must keep both."""
    demo = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    override = '{"drop_path_rate": 0.25}'
    flags = ["--config_overrides", override] if form == "separate" else [f"--config_overrides={override}"]
    model_args, _, _ = parse_arguments(pretraining.ARGUMENT_CLASSES, [demo, *flags])
    overrides = model_args.config_overrides
    assert (overrides["drop_path_rate"], overrides["image_size"], overrides["use_random_teacher"]) == (0.25, 64, True)


def test_config_file_with_an_unknown_key_is_refused_with_a_suggestion(tmp_path: Path):
    config = tmp_path / "probe.yaml"
    config.write_text("validation_dirr: val\n")
    with pytest.raises(UserError, match=r"unknown argument\(s\) validation_dirr \(did you mean validation_dir\?\)"):
        parse_arguments((ImageDataArguments,), ["--config", str(config)])


def test_a_missing_config_file_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="nothere.yaml: no such file"):
        parse_arguments((ImageDataArguments,), ["--config", str(tmp_path / "nothere.yaml")])


def test_one_parse_fills_the_scripts_classes_and_training_arguments(tmp_path: Path):
    config = tmp_path / "finetune.yaml"
    config.write_text("train_dir: a\nlearning_rate: 0.001\n")  # learning_rate belongs to TrainingArguments
    data_args, training_args = parse_arguments(
        (ImageDataArguments, TrainingArguments), [str(config), "--validation_dir", "b", "--output_dir", "out"]
    )
    assert (data_args.train_dir, data_args.validation_dir) == ("a", "b")
    assert (training_args.learning_rate, training_args.output_dir) == (0.001, "out")


def test_a_source_on_the_command_line_replaces_the_files_for_its_split_only(tmp_path: Path):
    local = tmp_path / "local.yaml"
    local.write_text("train_dir: a\nvalidation_dir: b\ndataset_display_name: flowers\n")
    (data_args,) = parse_arguments((ImageDataArguments,), [str(local), "--validation_files", "val-*.tar"])
    assert (data_args.train_dir, data_args.validation_dir, data_args.validation_files) == ("a", None, ["val-*.tar"])
    assert data_args.dataset_display_name is None  # the file's name for the data it no longer reads
    hub = Path(__file__).resolve().parents[1] / "configs" / "linear-probe-vit-tiny.yaml"
    _, data_args, _ = parse_arguments(
        (ProbeModelArguments, ImageDataArguments, ProbeArguments),
        [str(hub), "--train_dir", "a", "--validation_dir", "b"],
    )
    assert (data_args.dataset_name, data_args.train_dir, data_args.validation_dir) == (None, "a", "b")


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


def test_check_model_path_refuses_missing_folders_and_hub_ids_it_cannot_load(tmp_path: Path):
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set while the Hub model 'org/caev2-vit-base' is not in"):
        check_model_path("org/caev2-vit-base")  # the tests run offline (conftest); tests/test_hub_access.py: online
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


def test_import_caev2_hf_registers_the_auto_classes_at_once(tmp_path: Path):
    """A plain import, no hook: a fresh process loads a saved folder through AutoModel and AutoConfig."""
    code = (
        "import sys, torch\n"
        "import caev2_hf\n"
        "from transformers import AutoConfig, AutoModel\n"
        "folder = sys.argv[1]\n"
        "caev2_hf.CAEv2Model(caev2_hf.CAEv2Config.from_preset('tiny', num_hidden_layers=1)).save_pretrained(folder)\n"
        "model = AutoModel.from_pretrained(folder)\n"
        "assert type(model) is caev2_hf.CAEv2Model and type(AutoConfig.from_pretrained(folder)) is caev2_hf.CAEv2Config\n"
        "assert model.config.num_hidden_layers == 1 and caev2_hf.CAEv2Model._auto_class == 'AutoModel'\n"
        "assert not any(type(finder).__module__.startswith('caev2_hf') for finder in sys.meta_path)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "tiny")], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_preset_names_are_the_model_presets():
    from caev2_hf import CAEV2_PRESETS

    assert PRESET_NAMES == tuple(CAEV2_PRESETS)


def test_ctrl_c_ends_a_command_in_one_line_with_status_130(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exited:
        run_command(interrupted)
    assert exited.value.code == 130 and capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"per_device_train_batch_size": 0}, "--per_device_train_batch_size 0: must be greater than 0"),
        ({"per_device_eval_batch_size": -1}, "--per_device_eval_batch_size -1: must be greater than 0"),
        ({"gradient_accumulation_steps": 0}, "--gradient_accumulation_steps 0: must be greater than 0"),
        ({"learning_rate": 0.0}, "--learning_rate 0.0: must be greater than 0"),
        ({"adam_epsilon": -1e-8}, "--adam_epsilon -1e-08: must be greater than 0"),
        ({"save_steps": 0}, "--save_steps 0: must be greater than 0"),
        ({"eval_steps": 0}, "--eval_steps 0: must be greater than 0"),
        ({"save_total_limit": 0}, "--save_total_limit 0: must be greater than 0"),
        ({"max_steps": 0}, "--max_steps 0: give the number of optimizer steps"),
        ({"max_steps": -2}, "--max_steps -2: give the number of optimizer steps"),
        ({"num_train_epochs": 0.0}, "--num_train_epochs 0.0: must be greater than 0"),
        ({"warmup_steps": -1}, "--warmup_steps -1: give 0 or more steps"),
        ({"weight_decay": -0.05}, "--weight_decay -0.05: must be 0 or more"),
        ({"max_grad_norm": -1.0}, "--max_grad_norm -1.0: must be 0 or more"),
        ({"dataloader_num_workers": -1}, "--dataloader_num_workers -1: must be 0 or more"),
        ({"adam_beta1": 1.0}, r"--adam_beta1 1.0: must lie in \[0, 1\)"),
        ({"label_smoothing_factor": -0.1}, r"--label_smoothing_factor -0.1: must lie in \[0, 1\)"),
    ],
)
def test_training_arguments_values_no_run_can_use_are_refused(given: dict, message: str):
    """Issue 22: TrainingArguments takes them all (batch 0 then divides by zero, a negative lr trains backwards)."""
    with pytest.raises(UserError, match=message):
        check_training_values(effective_values(TrainingArguments, given))


def test_training_arguments_defaults_and_usual_values_pass():
    check_training_values(effective_values(TrainingArguments, {}))
    usual = {"max_steps": 5, "num_train_epochs": 0.0, "warmup_steps": 0.05, "max_grad_norm": 0.0, "eval_steps": 0.1}
    check_training_values(effective_values(TrainingArguments, usual))  # epochs do not count beside max_steps
    values = effective_values(TrainingArguments, {"learning_rate": 1e-3, "not_a_field": 1})
    assert (
        values["learning_rate"] == 1e-3 and values["per_device_train_batch_size"] == 8 and "not_a_field" not in values
    )


@pytest.mark.parametrize(
    ("given", "cuda", "bf16_gpu", "message"),
    [
        ({"bf16": True}, False, False, "--bf16 true: this machine has no GPU. Give --bf16 false to run in float32"),
        ({"bf16_full_eval": True}, False, False, "--bf16_full_eval true: this machine has no GPU"),
        ({"bf16": True}, True, False, r"--bf16 true: this machine's GPU does not compute in bfloat16 \(Ampere"),
        ({"bf16": True}, True, True, None),  # a GPU that computes in bfloat16
        ({"bf16": True, "use_cpu": True}, False, False, None),  # the CPU's bfloat16 autocast, asked for
        ({}, False, False, None),
    ],
)
def test_bf16_is_refused_in_one_line_where_nothing_computes_in_it(monkeypatch, given, cuda, bf16_gpu, message):
    """TrainingArguments' own refusal ("Your setup doesn't support bf16/gpu") names no flag; the check comes first."""
    monkeypatch.setattr(transformers.utils, "is_torch_cuda_available", lambda: cuda)
    monkeypatch.setattr(transformers.utils, "is_torch_bf16_gpu_available", lambda: bf16_gpu)
    monkeypatch.setattr(transformers.utils, "is_torch_xla_available", lambda: False)
    values = effective_values(TrainingArguments, given)
    if message is None:
        check_bf16_support(values)
    else:
        with pytest.raises(UserError, match=message):
            check_bf16_support(values)


def test_rates_and_decays_keep_to_their_ranges():
    check_rate(drop_path_rate=0.0, classifier_dropout=0.99)
    with pytest.raises(UserError, match=r"--drop_path_rate 1: must lie in \[0, 1\) \(0: off\)"):
        check_rate(drop_path_rate=1)
    check_decay(layer_decay=1.0, component_decay=0.01)
    for value in (0, 5, -0.5):
        with pytest.raises(UserError, match=rf"--layer_decay {value}: must lie in \(0, 1\]"):
            check_decay(layer_decay=value)


@pytest.mark.parametrize(
    ("model_type", "architectures", "caev2_only", "found"),
    [
        ("caev2", ["CAEv2ForImageClassification"], True, None),
        ("caev2", None, True, None),
        ("dinov2", ["Dinov2Model"], False, None),  # the probe takes other encoders
        ("dinov2", ["Dinov2Model"], True, "a dinov2 model (Dinov2Model)"),
        ("upernet", ["UperNetForSemanticSegmentation"], False, "a UperNet segmentation model (what "
         "run_semantic_segmentation.py writes)"),
        ("lw_detr", None, False, "an LW-DETR detector (what run_object_detection.py writes)"),
        ("detr", ["DetrForObjectDetection"], False, "a DetrForObjectDetection task model"),
    ],
)  # fmt: skip
def test_a_folder_that_holds_no_usable_encoder_is_described(model_type, architectures, caev2_only, found):
    assert describe_non_encoder(model_type, architectures, caev2_only) == found


def test_check_encoder_folder_reads_config_json_and_lets_hub_ids_through(tmp_path: Path):
    (tmp_path / "segmentation").mkdir()
    (tmp_path / "segmentation" / "config.json").write_text('{"model_type": "upernet"}')
    with pytest.raises(UserError) as refused:
        check_encoder_folder(str(tmp_path / "segmentation"), caev2_only=True)
    assert str(refused.value) == (
        f"--model {tmp_path / 'segmentation'} holds a UperNet segmentation model (what run_semantic_segmentation.py "
        "writes), not a CAE v2 checkpoint: give a CAE v2 encoder: run_pretrain.py's final/ folder, the converter's "
        "output, or a Hub id."
    )
    check_encoder_folder("org/some-encoder")  # a Hub id: its config is checked when loaded
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{model_type")
    with pytest.raises(UserError, match="its config.json is not valid JSON"):
        check_encoder_folder(str(tmp_path / "broken"))
