"""Tests for run_linear_probe.py: both protocols end to end on scikit-learn's digits, offline, on a tiny encoder."""

import contextlib
import importlib.util
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import build_tiny_config
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from transformers import AutoModelForImageClassification, BlipVisionConfig, CLIPVisionModel, UperNetConfig, pipeline

import caev2_hf.evaluation.classification.frozen_encoder
from caev2_hf import CAEv2ForPreTraining
from caev2_hf.data.device_augment import normalize_pixel_values
from caev2_hf.data.transforms import build_eval_transform
from caev2_hf.evaluation.classification.frozen_encoder import load_frozen_encoder
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.parsing import parse_arguments


REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_SPEC = importlib.util.spec_from_file_location("run_linear_probe", REPO_ROOT / "run_linear_probe.py")
run_linear_probe = importlib.util.module_from_spec(MODULE_SPEC)
MODULE_SPEC.loader.exec_module(run_linear_probe)
ARGUMENT_CLASSES = run_linear_probe.ARGUMENT_CLASSES


def probe(argv: list[str]) -> dict:
    """`python run_linear_probe.py ARGV` in this process: the script's parse and checks, then its main."""
    return run_linear_probe.main(*run_linear_probe.parse_and_check_arguments(argv))


# Short runs: 15 epochs of 10 steps. LARS moves a matrix by lr x 0.001 of its norm per step, so a batch of 50
# needs a larger base lr than ImageNet's 0.1 at 8192 to train in 150 steps.
RUN_SETTINGS = ["--batch_size", "50", "--epochs", "15", "--warmup_epochs", "2", "--encoder_batch_size", "32"]
RUN_SETTINGS += ["--num_workers", "0", "--base_learning_rate", "100", "--fast_base_learning_rates", "10", "30", "100"]


def write_digits(root: Path, start: int, stop: int) -> str:
    """Digits start..stop as 32 px RGB PNGs in an image folder (one subfolder per class)."""
    digits = load_digits()
    for index in range(start, stop):
        folder = root / str(digits.target[index])
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[index] * 255 / 16).astype(np.uint8)
        image = Image.fromarray(pixels).resize((32, 32), Image.Resampling.BICUBIC).convert("RGB")
        image.save(folder / f"{index:04d}.png")
    return str(root)


def write_encoder(folder: Path, seed: int) -> str:
    """A randomly initialised tiny CAE v2 pretraining checkpoint: its [CLS] already separates digits linearly."""
    torch.manual_seed(seed)
    CAEv2ForPreTraining(build_tiny_config()).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("digits")
    return {"train": write_digits(root / "train", 0, 500), "validation": write_digits(root / "validation", 500, 700)}


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_encoder(tmp_path_factory.mktemp("encoder") / "tiny", seed=0)


def probe_arguments(model: str, digits: dict[str, str], output_dir: Path, *extra: str) -> list[str]:
    data = ["--train_dir", digits["train"], "--validation_dir", digits["validation"]]
    return ["--model", model, *data, "--output_dir", str(output_dir), *RUN_SETTINGS, *extra]


def run_and_capture(arguments: list[str]) -> tuple[dict, str]:
    """`main(arguments)`'s results and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = probe(arguments)
    AcceleratorState._reset_state(reset_partial_state=True)
    return results, printed.getvalue()


@pytest.fixture(scope="module")
def official_run(encoder_dir: str, digits: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One official run, recording the encoder object the script loaded and its weights before probing."""
    recorded = {}
    load_frozen_encoder = caev2_hf.evaluation.classification.frozen_encoder.load_frozen_encoder

    def load_and_record(model_name_or_path: str):
        encoder = load_frozen_encoder(model_name_or_path)
        recorded.update(encoder=encoder, weights={k: v.clone() for k, v in encoder.state_dict().items()})
        return encoder

    output_dir = tmp_path_factory.mktemp("official")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(caev2_hf.evaluation.classification.frozen_encoder, "load_frozen_encoder", load_and_record)
        results, printed = run_and_capture(probe_arguments(encoder_dir, digits, output_dir, "--protocol", "official"))
    return {"results": results, "printed": printed, "output_dir": output_dir, **recorded}


@pytest.fixture(scope="module")
def fast_run(encoder_dir: str, digits: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    output_dir, cache_dir = tmp_path_factory.mktemp("fast"), tmp_path_factory.mktemp("cache")
    arguments = probe_arguments(encoder_dir, digits, output_dir, "--protocol", "fast", "--cache_dir", str(cache_dir))
    results, printed = run_and_capture(arguments)
    run = {"results": results, "printed": printed, "output_dir": output_dir}
    return {**run, "cache_dir": cache_dir, "arguments": arguments}


def test_official_probe_reaches_well_above_chance_on_digits(official_run: dict):
    written = json.loads((official_run["output_dir"] / "results.json").read_text())
    assert written["top1_accuracy"] == official_run["results"]["top1_accuracy"]
    assert written["top1_accuracy"] > 0.25  # chance is 0.1
    assert written["top5_accuracy"] >= written["top1_accuracy"]
    assert (written["num_classes"], written["num_validation_examples"], written["steps"]) == (10, 200, 150)
    assert written["learning_rate"] == pytest.approx(100 * 50 / 256)


def test_official_probe_records_each_epoch_of_its_one_learning_rate(official_run: dict):
    written = json.loads((official_run["output_dir"] / "results.json").read_text())
    (history,) = written["learning_rate_histories"]
    assert (history["base_learning_rate"], history["holdout_top1_accuracy"]) == (100.0, None)
    assert history["learning_rate"] == written["learning_rate"]
    assert [epoch["epoch"] for epoch in history["epochs"]] == list(range(1, 16))
    losses = [epoch["train_loss"] for epoch in history["epochs"]]
    assert losses[0] > 2.0 and losses[-1] < losses[0] - 0.2  # starts near ln 10 = 2.3, then learns
    assert all(0 <= epoch["train_top1_accuracy"] <= 1 for epoch in history["epochs"])
    assert history["epochs"][-1]["train_top1_accuracy"] > history["epochs"][0]["train_top1_accuracy"]


def test_probe_prints_its_accuracy_and_where_it_wrote(official_run: dict, fast_run: dict):
    for run, protocol in ((official_run, "official"), (fast_run, "fast")):
        lines = run["printed"].splitlines()
        top1, top5 = 100 * run["results"]["top1_accuracy"], 100 * run["results"]["top5_accuracy"]
        assert lines[0].startswith(f"Linear probe ({protocol} protocol) of ")
        assert f"top-1 {top1:.2f} %, top-5 {top5:.2f} % on 200 validation images" in lines[0]
        assert f"  results: {run['output_dir'] / 'results.json'}" in lines
        assert any(line.startswith(f"  model:   {run['output_dir']}  (pipeline(") for line in lines)
    assert "best of 3 on the held-out part of train" in fast_run["printed"]


def test_official_probe_leaves_encoder_weights_bit_identical(official_run: dict):
    after = official_run["encoder"].state_dict()
    assert after.keys() == official_run["weights"].keys()
    assert all(torch.equal(after[name], before) for name, before in official_run["weights"].items())
    assert not any(parameter.requires_grad for parameter in official_run["encoder"].parameters())


def test_official_probe_output_holds_the_unchanged_encoder(official_run: dict):
    classifier = AutoModelForImageClassification.from_pretrained(official_run["output_dir"])
    saved = classifier.caev2.state_dict()
    assert all(torch.equal(saved[name], weight) for name, weight in official_run["weights"].items())
    assert classifier.config.classifier_pooling == "cls"


def test_fast_probe_reaches_well_above_chance_on_digits(fast_run: dict):
    results = fast_run["results"]
    assert results["top1_accuracy"] > 0.5  # centre crops, no augmentation: easier than the official run
    histories = results["learning_rate_histories"]
    assert [entry["base_learning_rate"] for entry in histories] == [10.0, 30.0, 100.0]
    assert [entry["learning_rate"] for entry in histories] == pytest.approx(
        [base * 50 / 256 for base in (10, 30, 100)]
    )
    best = max(histories, key=lambda entry: entry["holdout_top1_accuracy"])
    assert (results["base_learning_rate"], results["holdout_top1_accuracy"]) == (
        best["base_learning_rate"], best["holdout_top1_accuracy"],
    )  # fmt: skip
    assert not results["feature_cache"]["train"]["reused"]
    assert results["steps"] == 15 * (450 // 50)  # 50 of 500 held out; 15 epochs of 9 steps


def test_fast_probe_records_every_learning_rate_epoch_by_epoch(fast_run: dict):
    written = json.loads((fast_run["output_dir"] / "results.json").read_text())
    for history in written["learning_rate_histories"]:
        epochs = history["epochs"]
        assert [epoch["epoch"] for epoch in epochs] == list(range(1, 16))
        assert epochs[-1]["holdout_top1_accuracy"] == history["holdout_top1_accuracy"]
        for epoch in epochs:  # 50 held-out images: every accuracy is a multiple of 1/50
            assert abs(epoch["holdout_top1_accuracy"] * 50 - round(epoch["holdout_top1_accuracy"] * 50)) < 1e-4
        assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert len({tuple(e["train_loss"] for e in h["epochs"]) for h in written["learning_rate_histories"]}) == 3


def test_fast_probe_reuses_its_feature_cache(fast_run: dict, tmp_path: Path):
    paths = [fast_run["results"]["feature_cache"][split]["path"] for split in ("train", "validation")]
    modified = [os.stat(path).st_mtime_ns for path in paths]
    results, _ = run_and_capture([*fast_run["arguments"], "--output_dir", str(tmp_path)])
    assert [results["feature_cache"][split] for split in ("train", "validation")] == [
        {"path": path, "reused": True} for path in paths
    ]
    assert [os.stat(path).st_mtime_ns for path in paths] == modified
    assert results["top1_accuracy"] == fast_run["results"]["top1_accuracy"]


def test_fast_probe_rebuilds_its_cache_when_the_model_changes(fast_run: dict, digits: dict, tmp_path: Path):
    changed = write_encoder(tmp_path / "changed", seed=1)
    arguments = probe_arguments(changed, digits, tmp_path / "out", "--protocol", "fast")
    results = probe([*arguments, "--cache_dir", str(fast_run["cache_dir"])])
    old_path = fast_run["results"]["feature_cache"]["train"]["path"]
    assert results["feature_cache"]["train"]["reused"] is False
    assert results["feature_cache"]["train"]["path"] != old_path
    assert os.path.isfile(old_path)


def test_fast_probe_refuses_a_cache_written_by_another_model(fast_run: dict, digits: dict, tmp_path: Path):
    changed = write_encoder(tmp_path / "changed", seed=2)
    cache_dir = tmp_path / "cache"
    arguments = [
        *probe_arguments(changed, digits, tmp_path / "out", "--protocol", "fast"),
        "--cache_dir",
        str(cache_dir),
    ]
    own_path = probe(arguments)["feature_cache"]["train"]["path"]
    shutil.copy(fast_run["results"]["feature_cache"]["train"]["path"], own_path)  # another model's features
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ValueError, match="was written by another model"):
        probe([*arguments, "--overwrite_output_dir", "true"])  # the first run's results are in out


def test_probe_output_runs_in_the_image_classification_pipeline(fast_run: dict, digits: dict):
    classify = pipeline("image-classification", model=str(fast_run["output_dir"]))
    image_path = next(Path(digits["validation"]).glob("3/*.png"))
    predictions = classify(Image.open(image_path), top_k=10)
    assert sorted(prediction["label"] for prediction in predictions) == [str(digit) for digit in range(10)]
    assert sum(prediction["score"] for prediction in predictions) == pytest.approx(1.0, abs=1e-4)


def test_probe_output_reproduces_the_reported_accuracy(fast_run: dict, digits: dict):
    classifier = AutoModelForImageClassification.from_pretrained(fast_run["output_dir"]).eval()
    transform = build_eval_transform(32, 37)
    correct = total = 0
    for path in sorted(Path(digits["validation"]).glob("*/*.png")):
        pixels = normalize_pixel_values(transform(Image.open(path).convert("RGB"))[None], [0.485, 0.456, 0.406],
                                        [0.229, 0.224, 0.225])  # fmt: skip
        with torch.no_grad():
            prediction = classifier(pixels).logits.argmax(-1).item()
        correct += classifier.config.id2label[prediction] == path.parent.name
        total += 1
    assert total == 200
    assert correct / total == pytest.approx(fast_run["results"]["top1_accuracy"], abs=1.5 / total)


def test_update_model_card_adds_the_probe_results(fast_run: dict, encoder_dir: str, tmp_path: Path):
    model_dir = shutil.copytree(encoder_dir, tmp_path / "model")
    ModelCard("---\nlicense: apache-2.0\n---\n# My encoder\n").save(model_dir / "README.md")
    overrides = ["--model", str(model_dir), "--output_dir", str(tmp_path / "out"), "--update_model_card", "true"]
    results = probe([*fast_run["arguments"], *overrides])
    card = ModelCard.load(model_dir / "README.md")
    values = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert values == {
        "Top-1 (LIN, fast protocol)": round(100 * results["top1_accuracy"], 2),
        "Top-5 (LIN, fast protocol)": round(100 * results["top5_accuracy"], 2),
    }
    assert card.data.license == "apache-2.0" and "# My encoder" in card.text


def test_fast_probe_compares_another_transformers_encoder(digits: dict, tmp_path: Path):
    torch.manual_seed(0)
    CLIPVisionModel(build_tiny_config().teacher_config).save_pretrained(tmp_path / "clip")  # pooler: CLS after LN
    arguments = probe_arguments(str(tmp_path / "clip"), digits, tmp_path / "out", "--protocol", "fast")
    results = probe([*arguments, "--cache_dir", str(tmp_path / "cache")])
    assert results["top1_accuracy"] > 0.3
    head = load_file(tmp_path / "out" / "probe_head.safetensors")
    assert head["head.1.weight"].shape == (10, 32) and head["head.0.running_var"].shape == (32,)
    assert not (tmp_path / "out" / "config.json").exists()  # no CAE v2 encoder, so no classifier folder


def test_probe_refuses_a_folder_without_an_encoder(digits: dict, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no config.json"):  # the script's check, before torch
        probe(probe_arguments(str(tmp_path / "empty"), digits, tmp_path / "out"))
    unchecked = parse_arguments(ARGUMENT_CLASSES, probe_arguments(str(tmp_path / "empty"), digits, tmp_path / "out"))
    with pytest.raises(ValueError, match="holds no model"):  # the loader's own
        run_linear_probe.main(*unchecked)
    build_tiny_config().save_pretrained(tmp_path / "config_only")
    with pytest.raises(ValueError, match="No encoder weights could be loaded"):
        probe(probe_arguments(str(tmp_path / "config_only"), digits, tmp_path / "out"))


def test_probe_loader_names_a_task_model_or_one_automodel_cannot_load_in_one_line(tmp_path: Path):
    """Issue 22: a UperNet folder printed transformers' list of hundreds of config classes. The script refuses a local
    one at parse time (tests/test_bad_input.py); the loader says the same for a Hub id, whose config comes only then."""
    UperNetConfig().save_pretrained(tmp_path / "segmentation")
    with pytest.raises(UserError, match=r"segmentation holds a UperNet segmentation model \(what run_semantic_"):
        load_frozen_encoder(str(tmp_path / "segmentation"))
    BlipVisionConfig().save_pretrained(tmp_path / "blip_vision")
    with pytest.raises(UserError) as refused:
        load_frozen_encoder(str(tmp_path / "blip_vision"))
    assert str(refused.value).startswith(
        f"--model {tmp_path / 'blip_vision'} holds a blip_vision_model model, which AutoModel cannot load, not an "
        "image encoder: give a CAE v2 encoder"
    )


def test_probe_refuses_a_dataset_without_labels(encoder_dir: str, digits: dict, tmp_path: Path):
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for path in list(Path(digits["train"]).glob("*/*.png"))[:20]:
        shutil.copy(path, unlabelled / path.name)  # no class subfolders, so no label column
    arguments = probe_arguments(encoder_dir, {"train": str(unlabelled), "validation": digits["validation"]}, tmp_path)
    with pytest.raises(UserError, match="holds files but no class subfolders"):  # the script's check, before torch
        probe(arguments)
    with pytest.raises(ValueError, match="has no label column"):  # the loader's own, for callers of the library
        run_linear_probe.main(*parse_arguments(ARGUMENT_CLASSES, arguments))


def test_probe_refuses_validation_classes_the_head_does_not_have(encoder_dir: str, digits: dict, tmp_path: Path):
    validation = shutil.copytree(digits["validation"], tmp_path / "validation")
    (validation / "extra").mkdir()
    shutil.copy(next(Path(digits["validation"]).glob("3/*.png")), validation / "extra" / "x.png")
    arguments = probe_arguments(encoder_dir, {"train": digits["train"], "validation": str(validation)}, tmp_path)
    with pytest.raises(UserError, match=r"validation data 11 \(0, 1, 2, 3, 4, \.\.\.\): give both the same class"):
        probe([*arguments, "--protocol", "fast", "--cache_dir", str(tmp_path / "cache")])


@pytest.mark.parametrize("size, batch_size", [("tiny", 16384), ("small", 8192), ("base", 8192)])
def test_linear_probe_config_is_read_and_overridden_by_flags(size: str, batch_size: int):
    config = str(REPO_ROOT / "configs" / f"linear-probe-vit-{size}.yaml")
    model_args, data_args, probe_args, output_folder = parse_arguments(
        ARGUMENT_CLASSES, [config, "--epochs", "30", "--protocol", "fast"]
    )
    assert not output_folder.overwrite_output_dir
    assert (probe_args.batch_size, probe_args.base_learning_rate, probe_args.warmup_epochs) == (batch_size, 0.1, 10)
    assert (probe_args.epochs, probe_args.protocol) == (30, "fast")
    assert (model_args.model, data_args.dataset_name) == (f"outputs/caev2-vit-{size}/final", "ILSVRC/imagenet-1k")


def test_fast_probe_reads_tar_shards_and_holds_out_part_of_train(encoder_dir: str, tmp_path: Path):
    """--train_files / --validation_files (webdataset shards) and --holdout_fraction, as the README documents."""
    from caev2_hf.data.demo import write_demo_tar_shards

    train = write_demo_tar_shards(str(tmp_path / "train"), num_shards=2, images_per_shard=30, image_size=40, seed=0)
    validation = write_demo_tar_shards(str(tmp_path / "val"), num_shards=1, images_per_shard=20, image_size=40, seed=1)
    arguments = ["--model", encoder_dir, "--train_files", *train, "--validation_files", *validation]
    arguments += ["--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), *RUN_SETTINGS]
    arguments += ["--batch_size", "16", "--epochs", "60", "--fast_base_learning_rates", "1", "3", "10", "30", "100"]
    results = probe([*arguments, "--protocol", "fast", "--holdout_fraction", "0.2"])
    assert results["num_train_examples"] == 60
    # 20 % of 60 held out: every hold-out accuracy is a multiple of 1/12
    for entry in results["learning_rate_histories"]:
        assert abs(entry["holdout_top1_accuracy"] * 12 - round(entry["holdout_top1_accuracy"] * 12)) < 1e-4
    assert results["num_classes"] == 2 and results["top1_accuracy"] > 0.7  # the two sample photos, chance 0.5
    assert results["top5_accuracy"] is None  # every label is among the top 5 of 2 classes
    assert json.loads((tmp_path / "out" / "results.json").read_text())["top5_accuracy_note"] == (
        "null: every label is among the top 5 of 2 classes"
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch_size", "0"], "--batch_size 0: must be greater than 0"),
        (["--epochs", "-1"], "--epochs -1: must be greater than 0"),
        (["--holdout_fraction", "1"], "--holdout_fraction 1.0: must lie strictly between 0 and 1"),
        (["--fast_base_learning_rates", "0.1", "-3"], "give one or more values > 0"),
        (["--warmup_epochs", "-2"], "--warmup_epochs -2: must lie between 0 \\(no warmup\\) and --epochs 90"),
        (["--warmup_epochs", "10", "--epochs", "5"], "--warmup_epochs 10: must lie between 0 .* and --epochs 5"),
    ],
)
def test_probe_arguments_out_of_range_are_user_errors_at_parse_time(flags: list[str], message: str):
    arguments = ["--model", "m", "--output_dir", "out", *flags]
    with pytest.raises(UserError, match=message):
        parse_arguments(ARGUMENT_CLASSES, arguments)


def test_a_probe_over_another_run_is_refused_unless_overwriting_which_replaces_it_whole(
    encoder_dir: str, digits: dict, tmp_path: Path
):
    """Issue 22: a probe rerun over a folder of results is refused; --overwrite_output_dir deletes the old run's files
    (here a head file a probe of a non-CAE v2 encoder left) only when the new results are written."""
    arguments = probe_arguments(encoder_dir, digits, tmp_path / "out", "--protocol", "fast")
    arguments += ["--cache_dir", str(tmp_path / "cache")]
    first = probe(arguments)
    (tmp_path / "out" / "probe_head.safetensors").write_bytes(b"an older probe's head")
    with pytest.raises(UserError, match=r"out holds another run \(results.json, model.safetensors, probe_head"):
        probe(arguments)
    second = probe([*arguments, "--overwrite_output_dir", "true"])
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == second
    assert second["top1_accuracy"] == first["top1_accuracy"]  # same data, cache and seed
    assert not (tmp_path / "out" / "probe_head.safetensors").exists() and (tmp_path / "out" / "config.json").is_file()
