"""Tests for run_finetune.py and caev2_hf.evaluation.classification.finetune: Trainer fine-tuning of a tiny CAE v2,
offline, on the CPU."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import torch
from conftest import build_tiny_config
from PIL import Image
from transformers import Trainer, TrainingArguments, pipeline

from caev2_hf import CAEv2ForImageClassification, CAEv2ForPreTraining
from caev2_hf.evaluation.classification.finetune import (
    CAEv2FineTuningTrainer,
    build_classification_loss,
    build_finetune_trainer,
    build_finetune_transforms,
    build_mixup,
    load_finetune_model,
    warn_if_images_are_small,
)
from caev2_hf.evaluation.classification.frozen_encoder import EncoderPreprocessing
from caev2_hf.evaluation.classification.labelled_data import open_labelled_datasets
from caev2_hf_cli.classification import AugmentationArguments, FineTuningModelArguments, ImageDataArguments
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.parsing import parse_arguments


REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_SPEC = importlib.util.spec_from_file_location("run_finetune", REPO_ROOT / "run_finetune.py")
run_finetune = importlib.util.module_from_spec(MODULE_SPEC)
MODULE_SPEC.loader.exec_module(run_finetune)


def finetune(argv: list[str]) -> dict:
    """`python run_finetune.py ARGV` in this process: the script's one parse and checks, then its main."""
    return run_finetune.main(*run_finetune.parse_and_check_arguments(argv))


COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (210, 50, 40)}
# Mixup, cutmix, RandAugment and erasing off, so a few steps visibly lower the loss.
QUICK_RECIPE = ["--mixup", "0", "--cutmix", "0", "--rand_augment_magnitude", "0", "--random_erasing", "0"]
QUICK_RECIPE += ["--label_smoothing", "0", "--drop_path_rate", "0", "--report_to", "none", "--save_strategy", "no"]
QUICK_RECIPE += ["--dataloader_num_workers", "0", "--per_device_train_batch_size", "8", "--seed", "0"]


def write_colours(root: Path, per_class: int, seed: int) -> str:
    """Noisy images whose class is their colour: learnable under any crop, flip or resize."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index:03d}.png")
    return str(root)


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("colours")
    return {"train": write_colours(root / "train", 24, seed=0), "validation": write_colours(root / "val", 8, seed=1)}


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny pretraining checkpoint whose final norm is not the identity, so copying it into fc_norm shows."""
    torch.manual_seed(0)
    model = CAEv2ForPreTraining(build_tiny_config())
    with torch.no_grad():
        model.caev2.layernorm.weight.uniform_(0.5, 1.5)
        model.caev2.layernorm.bias.uniform_(-0.5, 0.5)
    folder = tmp_path_factory.mktemp("encoder") / "tiny"
    model.save_pretrained(folder)
    return str(folder)


def finetune_arguments(model: str, colours: dict[str, str], output_dir: Path, *extra: str) -> list[str]:
    data = ["--train_dir", colours["train"], "--validation_dir", colours["validation"]]
    return ["--model", model, *data, "--output_dir", str(output_dir), *QUICK_RECIPE, *extra]


def test_finetuning_lowers_the_loss_and_writes_a_classifier(
    encoder_dir: str, colours: dict, tmp_path: Path, capsys: pytest.CaptureFixture
):
    arguments = finetune_arguments(encoder_dir, colours, tmp_path, "--max_steps", "24", "--learning_rate", "2e-3")
    results = finetune([*arguments, "--logging_steps", "1", "--warmup_steps", "2"])
    printed = capsys.readouterr()
    losses = [entry["loss"] for entry in json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
              if "loss" in entry]  # fmt: skip
    assert len(losses) == 24
    assert np.mean(losses[-6:]) < np.mean(losses[:6]) - 0.2
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert results["top1_accuracy"] >= 1 / 3 and results["top5_accuracy"] is None  # 3 classes: no top-5
    assert results["top5_accuracy_note"] == "null: every label is among the top 5 of 3 classes"
    predictions = pipeline("image-classification", model=str(tmp_path))(Image.new("RGB", (32, 32), COLOURS["red"]))
    assert sorted(prediction["label"] for prediction in predictions) == sorted(COLOURS)
    assert printed.out.splitlines()[-3:] == [
        f"Fine-tuned {encoder_dir} for 24 steps: top-1 {100 * results['top1_accuracy']:.2f} %, top-5 n/a (every "
        f"label is among the top 5 of 3 classes) on validation (loss {results['eval_loss']:.4f})",
        f"  results: {tmp_path / 'results.json'}",
        f'  model:   {tmp_path}  (pipeline("image-classification", model="{tmp_path}"))',
    ]
    assert "24/24" in printed.err  # the Trainer's progress bar


def test_finetuning_runs_the_default_recipe_without_timm(
    encoder_dir: str, colours: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Mixup 0.8 / cutmix 1.0, RandAugment and erasing, as the configs set them, on the README's install."""
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises
    data = ["--train_dir", colours["train"], "--validation_dir", colours["validation"], "--output_dir", str(tmp_path)]
    options = ["--max_steps", "3", "--per_device_train_batch_size", "5", "--report_to", "none"]  # odd batches
    options += ["--save_strategy", "no", "--dataloader_num_workers", "0"]
    results = finetune(["--model", encoder_dir, *data, *options])
    assert results["max_steps"] == 3 and 0 <= results["top1_accuracy"] <= 1 and results["top5_accuracy"] is None


def test_epochs_become_steps_for_a_stream(encoder_dir: str, colours: dict, tmp_path: Path):
    # 72 training images, 2 epochs, batch 8 x accumulation 3 = 24 per step: 6 optimizer steps. The data is prepared
    # in the Arrow cache first (streaming false), as multi-worker runs on image folders would.
    arguments = finetune_arguments(encoder_dir, colours, tmp_path, "--num_train_epochs", "2")
    results = finetune([*arguments, "--gradient_accumulation_steps", "3", "--streaming", "false"])
    assert (results["max_steps"], results["num_train_examples"], results["num_classes"]) == (6, 72, 3)


def train_one_step(batch_size: int, accumulation: int, output_dir: Path) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    examples = [{"pixel_values": torch.randn(3, 32, 32, generator=generator), "label": i % 3} for i in range(16)]
    torch.manual_seed(0)
    model = CAEv2ForImageClassification(build_tiny_config(num_labels=3))
    # adam_epsilon=1 makes AdamW's step about lr x gradient for these small gradients, so a wrongly scaled
    # accumulated gradient shows (with the usual 1e-8, Adam's step would not depend on the gradient's scale).
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
        max_steps=2, learning_rate=1e-2, weight_decay=0.05, adam_epsilon=1.0, report_to="none", save_strategy="no",
        seed=0,
    )  # fmt: skip
    augmentation = AugmentationArguments(mixup=0, cutmix=0, label_smoothing=0.1)
    trainer = build_finetune_trainer(model, args, examples, None, layer_decay=0.75, augmentation=augmentation)
    trainer.train()
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_resume_from_latest_continues_the_trainers_checkpoint(encoder_dir: str, colours: dict, tmp_path: Path):
    arguments = finetune_arguments(encoder_dir, colours, tmp_path, "--max_steps", "4", "--save_strategy", "steps")
    arguments += ["--save_steps", "2"]
    with pytest.raises(UserError, match="holds no complete checkpoint-N folder"):
        finetune([*arguments, "--resume_from_checkpoint", "latest"])
    with pytest.raises(UserError, match="nowhere is no complete Trainer checkpoint"):
        finetune([*arguments, "--resume_from_checkpoint", str(tmp_path / "nowhere")])
    finetune([*arguments, "--max_steps", "2"])  # a run that stopped after its checkpoint at step 2
    finetune([*arguments, "--resume_from_checkpoint", "latest"])
    history = json.loads((tmp_path / "trainer_state.json").read_text())
    assert history["global_step"] == 4 and (tmp_path / "checkpoint-4").is_dir()


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten_and_latest_is_this_runs(
    encoder_dir: str, colours: dict, tmp_path: Path
):
    """Issue 22: a rerun no longer replaces a finished run's model and results without a word, and after
    --overwrite_output_dir, `latest` cannot pick a checkpoint of the run it replaced."""
    arguments = finetune_arguments(encoder_dir, colours, tmp_path, "--save_strategy", "steps", "--save_steps", "1")
    first = finetune([*arguments, "--max_steps", "5"])
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == [f"checkpoint-{n}" for n in range(1, 6)]
    with pytest.raises(UserError, match=r"holds another run \(results.json, trainer_state.json, model.safetensors, "):
        finetune([*arguments, "--max_steps", "2"])
    assert json.loads((tmp_path / "results.json").read_text()) == first  # nothing was touched
    second = finetune([*arguments, "--max_steps", "2", "--overwrite_output_dir", "true"])
    assert second["max_steps"] == 2 and json.loads((tmp_path / "results.json").read_text()) == second
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    resumed = run_finetune.parse_and_check_arguments([*arguments, "--resume_from_checkpoint", "latest"])[-1]
    assert resumed.resume_from_checkpoint == str(tmp_path / "checkpoint-2")  # not the replaced run's checkpoint-5


def test_ctrl_c_names_the_checkpoint_to_resume_from(encoder_dir: str, colours: dict, tmp_path: Path):
    """Issue 22: an interrupted fine-tuning says where it can continue from, as pretraining does, and ends with 130."""
    arguments = finetune_arguments(encoder_dir, colours, tmp_path, "--max_steps", "100000", "--save_strategy", "steps")
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "run_finetune.py"), *arguments, "--save_steps", "1", "--save_total_limit", "2",
         "--disable_tqdm", "true"],  # no progress bar filling the pipe while the test waits
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob("checkpoint-*/trainer_state.json")) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"still running 120 s after Ctrl-C; its stderr ends: {process.communicate()[1][-3000:]}")
    assert process.returncode == 130, stderr[-3000:]
    hint = [line for line in stderr.splitlines() if line.startswith("Interrupted: the last checkpoint is")]
    assert len(hint) == 1 and "Traceback" not in stderr, stderr[-3000:]
    checkpoint = hint[0].split("the last checkpoint is ")[1].split(". ")[0]
    assert Path(checkpoint).parent == tmp_path and (Path(checkpoint) / "trainer_state.json").is_file()
    assert hint[0].endswith("The same command with --resume_from_checkpoint latest continues from it.")
    assert stderr.rstrip().endswith("interrupted")


def test_small_images_under_the_imagenet_augmentation_get_a_warning(tmp_path: Path):
    """Issue 22: 8x8 images under crops down to 8 % and RandAugment left fine-tuning at chance, silently."""
    write_colours(tmp_path / "small", 1, seed=0)  # 32x32 images
    dataset = open_labelled_datasets({"train_dir": str(tmp_path / "small")}, {"train_dir": str(tmp_path / "small")})[0]
    message = warn_if_images_are_small(dataset, image_size=64, augmentation=AugmentationArguments())
    assert message == (
        "The training images are small (32x32, the first one) for the model's 64x64 input, and the recipe's "
        "augmentation is ImageNet's (a crop may keep 9x9 pixels of an image): for small images start from "
        "configs/finetune-small-images.yaml, or give at least --crop_min_scale 0.5 --rand_augment_magnitude 0 "
        "--random_erasing 0."
    )
    lighter = AugmentationArguments(crop_min_scale=0.5, rand_augment_magnitude=0, random_erasing=0.0)
    assert warn_if_images_are_small(dataset, image_size=64, augmentation=lighter) is None
    assert warn_if_images_are_small(dataset, image_size=63, augmentation=AugmentationArguments()) is None  # < 2x


def test_the_small_images_config_lightens_the_recipe_and_leaves_the_data_to_the_command_line(tmp_path: Path):
    config = str(REPO_ROOT / "configs" / "finetune-small-images.yaml")
    roles = (FineTuningModelArguments, ImageDataArguments, AugmentationArguments, TrainingArguments)
    model_args, _, augmentation, training_args = parse_arguments(
        roles, [config, "--model", "m", "--output_dir", str(tmp_path), "--report_to", "none"]
    )
    assert (augmentation.crop_min_scale, augmentation.rand_augment_magnitude, augmentation.mixup) == (0.5, 0, 0)
    assert (training_args.learning_rate, training_args.warmup_steps, model_args.drop_path_rate) == (1e-3, 0.1, 0)


def test_gradient_accumulation_of_two_batches_matches_one_double_batch(tmp_path: Path):
    accumulated = train_one_step(batch_size=4, accumulation=2, output_dir=tmp_path / "accumulated")
    double = train_one_step(batch_size=8, accumulation=1, output_dir=tmp_path / "double")
    torch.manual_seed(0)
    initial = CAEv2ForImageClassification(build_tiny_config(num_labels=3)).state_dict()
    assert not torch.allclose(double["classifier.weight"], initial["classifier.weight"])
    for name, tensor in double.items():
        torch.testing.assert_close(accumulated[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def test_finetune_transforms_give_normalised_crops_and_erase_with_noise():
    preprocessing = EncoderPreprocessing(32, 37, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    train, evaluate = build_finetune_transforms(
        preprocessing, AugmentationArguments(rand_augment_magnitude=0, random_erasing=1.0)
    )
    grey = Image.new("RGB", (40, 48), (153, 153, 153))  # 0.6 after scaling: (0.6 - 0.5) / 0.25 = 0.4
    torch.testing.assert_close(evaluate(grey), torch.full((3, 32, 32), 0.4), atol=1e-5, rtol=0)
    erased = train(grey)
    assert erased.shape == (3, 32, 32) and erased.dtype == torch.float32
    assert 0.02 * 32 * 32 <= (erased - 0.4).abs().gt(1e-4).any(0).sum() <= 0.34 * 32 * 32  # one noise rectangle
    augmented, _ = build_finetune_transforms(preprocessing, AugmentationArguments(random_erasing=0.0))
    assert augmented(grey).shape == (3, 32, 32)


def test_classification_loss_matches_hand_computed_values():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    log_probabilities = logits.log_softmax(-1)
    loss = build_classification_loss(label_smoothing=0.0)
    hard = loss({"logits": logits}, torch.tensor([0, 2]), num_items_in_batch=4)
    torch.testing.assert_close(hard, -(log_probabilities[0, 0] + log_probabilities[1, 2]) / 4)
    soft_targets = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    soft = loss({"logits": logits}, soft_targets)
    torch.testing.assert_close(soft, -(log_probabilities[0, :2].sum() / 2 + log_probabilities[1, 2]) / 2)


def test_finetune_model_starts_fc_norm_as_the_encoder_final_norm(encoder_dir: str):
    model = load_finetune_model(FineTuningModelArguments(encoder_dir, drop_path_rate=0.0), ["a", "b", "c"])
    final_norm = CAEv2ForPreTraining.from_pretrained(encoder_dir).caev2.layernorm
    # the final norm normalises the pooled feature: BEiT's fc_norm, starting as the pretrained norm, and trained
    torch.testing.assert_close(model.caev2.layernorm.weight, final_norm.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.caev2.layernorm.bias, final_norm.bias, rtol=0, atol=0)
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"} and model.config.classifier_pooling == "mean"
    assert model.classifier.weight.abs().max() < 1e-3  # the official init scaled by 0.001


def test_finetuning_refuses_a_head_with_another_class_count(colours: dict, tmp_path: Path):
    CAEv2ForImageClassification(build_tiny_config(num_labels=5)).save_pretrained(tmp_path / "classifier")
    with pytest.raises(ValueError, match="head has 5 classes but the dataset has 3"):
        finetune(finetune_arguments(str(tmp_path / "classifier"), colours, tmp_path / "out"))
    model_args = FineTuningModelArguments(str(tmp_path / "classifier"), ignore_mismatched_sizes=True)
    replaced = load_finetune_model(model_args, ["a", "b", "c"])
    assert replaced.classifier.weight.shape == (3, 32)


def smoothed(labels: torch.Tensor, smoothing: float, num_classes: int) -> torch.Tensor:
    """timm's smoothed one-hot targets: 1 - s + s/K on the class, s/K elsewhere."""
    return torch.nn.functional.one_hot(labels, num_classes) * (1 - smoothing) + smoothing / num_classes


def test_mixup_mixes_each_image_with_its_neighbour_and_mixes_smoothed_targets_alike():
    torch.manual_seed(0)
    images, labels = torch.rand(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0])  # an odd batch is fine
    mixup = build_mixup(AugmentationArguments(mixup=0.8, cutmix=0.0, label_smoothing=0.1), num_classes=4)
    mixed, targets = mixup(images, labels)
    neighbours = images.roll(1, 0)
    lam = ((mixed - neighbours) / (images - neighbours)).median().item()  # mixed = lam x + (1 - lam) x'
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * neighbours)
    expected = lam * smoothed(labels, 0.1, 4) + (1 - lam) * smoothed(labels.roll(1), 0.1, 4)
    torch.testing.assert_close(targets, expected)
    torch.testing.assert_close(targets.sum(-1), torch.ones(5))


def test_cutmix_pastes_a_box_and_weighs_targets_by_its_area():
    torch.manual_seed(1)
    images, labels = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 1])
    cutmix = build_mixup(AugmentationArguments(mixup=0.0, cutmix=1.0, label_smoothing=0.0), num_classes=3)
    for _ in range(5):
        mixed, targets = cutmix(images, labels)
        pasted = (mixed != images).any(1)[0]  # (16, 16): where the neighbour's pixels are
        assert torch.equal(mixed, torch.where(pasted, images.roll(1, 0), images))
        kept = 1 - pasted.float().mean().item()
        one_hot = smoothed(labels, 0.0, 3)
        torch.testing.assert_close(targets, kept * one_hot + (1 - kept) * one_hot.roll(1, 0))


def test_mixup_and_cutmix_alternate_by_the_switch_probability():
    torch.manual_seed(0)
    images, labels = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    counts = {}
    for switch_probability in (0.5, 0.0):
        augmentation = AugmentationArguments(mixup=0.8, cutmix=1.0, mixup_switch_probability=switch_probability)
        mix = build_mixup(augmentation, num_classes=2)
        # CutMix copies pixels; mixup blends them (a blended pixel equals neither source)
        results = [mix(images, labels)[0] for _ in range(400)]
        counts[switch_probability] = sum(bool(((m == images) | (m == images.roll(1, 0))).all()) for m in results)
    assert 160 <= counts[0.5] <= 240 and counts[0.0] == 0


def test_no_mixing_when_mixup_and_cutmix_are_off():
    assert build_mixup(AugmentationArguments(mixup=0.0, cutmix=0.0), num_classes=3) is None


def test_trainer_refuses_options_the_recipe_does_not_read(encoder_dir: str, colours: dict, tmp_path: Path):
    arguments = finetune_arguments(
        encoder_dir, colours, tmp_path, "--max_steps", "1", "--label_smoothing_factor", "0.1"
    )
    with pytest.raises(ValueError, match="use --label_smoothing"):
        finetune(arguments)


def test_trainer_mixes_every_image_of_a_short_odd_batch_while_training_only():
    seen = []

    def record_mixup(pixel_values, labels):
        seen.append(labels.tolist())
        return pixel_values, torch.nn.functional.one_hot(labels, 3).float()

    trainer = CAEv2FineTuningTrainer.__new__(CAEv2FineTuningTrainer)  # only compute_loss is exercised
    trainer.mixup_fn = record_mixup
    model = torch.nn.Module()
    inputs = {"pixel_values": torch.zeros(3, 3, 4, 4), "labels": torch.arange(3)}
    with patch.object(Trainer, "compute_loss", lambda self, model, inputs, *args: inputs["labels"].shape):
        assert trainer.compute_loss(model, inputs) == (3, 3)  # soft targets of all three images
        model.training = False
        assert trainer.compute_loss(model, inputs) == (3,)  # evaluation batches stay clean
    assert seen == [[0, 1, 2]]


@pytest.mark.parametrize(
    "size, learning_rate, layer_decay, mixup, warmup",
    [("tiny", 4e-3, 0.85, 0.2, 0.05), ("small", 4e-4, 0.75, 0.8, 0.1), ("base", 2e-4, 0.75, 0.8, 0.05)],
)
def test_finetune_config_is_read_and_overridden_by_flags(size, learning_rate, layer_decay, mixup, warmup, tmp_path):
    config = str(REPO_ROOT / "configs" / f"finetune-vit-{size}.yaml")
    roles = (FineTuningModelArguments, ImageDataArguments, AugmentationArguments, TrainingArguments)
    model_args, data_args, augmentation_args, training_args = parse_arguments(
        roles, [config, "--output_dir", str(tmp_path), "--bf16", "false", "--report_to", "none"]
    )
    assert (training_args.learning_rate, model_args.layer_decay, augmentation_args.mixup) == (
        learning_rate, layer_decay, mixup,
    )  # fmt: skip
    assert (training_args.warmup_steps, training_args.weight_decay, training_args.max_grad_norm) == (warmup, 0.05, 0)
    assert training_args.lr_scheduler_kwargs == {"min_lr": 1e-6}
    assert (training_args.output_dir, training_args.bf16, data_args.dataset_name) == (
        str(tmp_path), False, "ILSVRC/imagenet-1k",
    )  # fmt: skip


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--mixup", "-0.2"], "Beta alphas, must be >= 0"),
        (["--mixup_switch_probability", "1.5"], "a probability, must lie in"),
        (["--random_erasing", "-0.1"], "a probability, must lie in"),
        (["--label_smoothing", "1"], "--label_smoothing 1.0: must lie in"),
        (["--rand_augment_magnitude", "11"], "must lie in \\[0, 10\\]"),
    ],
)
def test_augmentation_arguments_out_of_range_are_user_errors_at_parse_time(flags: list[str], message: str):
    with pytest.raises(UserError, match=message):
        parse_arguments((AugmentationArguments,), flags)
