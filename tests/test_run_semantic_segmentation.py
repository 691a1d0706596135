"""Tests for run_semantic_segmentation.py (issue 14): its arguments and configs, bad input, the offline demo end to end
(mIoU above a constant prediction, a folder the segmentation pipeline runs) and the segmentation benchmark."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from transformers import pipeline

from caev2_hf.evaluation.segmentation.data import make_demo_segmentation
from caev2_hf.evaluation.segmentation.metrics import MEAN_IOU_PATH
from caev2_hf.evaluation.segmentation_arguments import SegmentationDataArguments, SegmentationModelArguments


REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_SPEC = importlib.util.spec_from_file_location(
    "run_semantic_segmentation", REPO_ROOT / "run_semantic_segmentation.py"
)
run_semantic_segmentation = importlib.util.module_from_spec(MODULE_SPEC)
MODULE_SPEC.loader.exec_module(run_semantic_segmentation)


def test_bad_arguments_end_in_one_clear_line():
    with pytest.raises(ValueError, match="exactly one data source"):
        SegmentationDataArguments(dataset_name="scene_parse_150", demo_data=True)
    with pytest.raises(ValueError, match="--eval_stride 600 must be in"):
        SegmentationDataArguments(demo_data=True, eval_stride=600, crop_size=512)
    with pytest.raises(ValueError, match="--num_labels None"):
        SegmentationDataArguments(dataset_name="scene_parse_150")
    with pytest.raises(ValueError, match="No --model"):
        SegmentationModelArguments()
    with pytest.raises(ValueError, match="--loss_normalization 'mean'"):
        SegmentationModelArguments(model="x", loss_normalization="mean")


DEMO_TEST_ARGUMENTS = [
    "--random_encoder_if_missing", "true", "--model_preset", "tiny", "--config_overrides",
    json.dumps({
        "image_size": 64, "patch_size": 8, "hidden_size": 48, "num_hidden_layers": 4, "num_attention_heads": 4,
        "intermediate_size": 96, "num_masking_patches": 16,
    }),
    "--drop_path_rate", "0", "--decoder_channels", "16", "--auxiliary_channels", "8", "--demo_data", "true",
    "--demo_num_train_images", "128", "--demo_num_validation_images", "24", "--demo_image_size", "64",
    "--crop_size", "64", "--resize_scale", "256", "64", "--eval_stride", "43", "--dataloader_num_workers", "0",
    "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "24", "--learning_rate", "2e-3",
    "--max_steps", "60", "--warmup_steps", "5", "--eval_strategy", "no", "--save_strategy", "no", "--report_to",
    "none", "--seed", "0", "--logging_steps", "20", "--disable_tqdm", "true", "--eval_result_name", "ade20k_miou",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    output_dir = tmp_path_factory.mktemp("segmentation_demo")
    threads = torch.get_num_threads()
    try:  # one thread, as the demo config: far faster on a busy machine
        results = run_semantic_segmentation.main(
            [*DEMO_TEST_ARGUMENTS, "--torch_num_threads", "1", "--output_dir", str(output_dir)]
        )
    finally:
        torch.set_num_threads(threads)
    return output_dir, results


def test_demo_beats_a_constant_prediction_on_held_out_images(demo_run):
    output_dir, results = demo_run
    held_out = make_demo_segmentation(24, 64, seed=0 + 1_000_003)  # the script's validation split
    references = [np.asarray(example["annotation"], dtype=np.int64) for example in held_out]
    metric = evaluate.load(MEAN_IOU_PATH)
    constant = max(
        metric.compute(predictions=[np.full_like(mask, label) for mask in references], references=references,
                       num_labels=4)["mean_iou"]
        for label in range(4)
    )  # fmt: skip
    assert results["num_eval_images"] == 24 and results["encoder"].startswith("Encoder: RANDOMLY INITIALISED")
    assert results["mean_iou"] > constant + 0.05, (results["mean_iou"], constant)


def test_demo_output_runs_in_the_segmentation_pipeline_and_card_has_the_miou(demo_run):
    output_dir, results = demo_run
    saved = json.loads((output_dir / "results.json").read_text())
    assert saved["mean_iou"] == pytest.approx(results["mean_iou"])
    assert set(saved["per_category_iou"]) == {"background", "disk", "square", "triangle"}
    segmenter = pipeline("image-segmentation", model=str(output_dir))
    image = make_demo_segmentation(1, 64, seed=5)[0]["image"].resize((80, 48))
    segments = segmenter(image)
    assert segments and {segment["label"] for segment in segments} <= set(saved["per_category_iou"])
    assert all(segment["mask"].size == (80, 48) for segment in segments)
    card = (output_dir / "README.md").read_text()
    assert "mIoU" in card and str(round(100 * results["mean_iou"], 2)) in card


def test_segmentation_benchmark_runs_on_cpu_and_writes_its_json(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_segmentation", REPO_ROOT / "benchmarks/bench_segmentation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--preset", "tiny-cpu", "--device", "cpu", "--precision", "fp32", "--batch_size", "2", "--num_labels", "5"]
    result = bench.main([*argv, "--warmup_steps", "1", "--steps", "1", "--output_json", str(tmp_path / "seg.json")])
    saved = json.loads((tmp_path / "seg.json").read_text())
    assert saved["images_per_second"] == pytest.approx(result["images_per_second"]) and saved["images_per_second"] > 0
    assert saved["crop_size"] == 64 and saved["loss_is_finite"]


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        (["--random_encoder_if_missing", "true", "--demo_data", "true", "--eval_stride", "0"], ["--eval_stride 0"]),
        (["--model", "/no/such/encoder", "--demo_data", "true"], ["--model /no/such/encoder", "no such folder"]),
        (["--random_encoder_if_missing", "true", "--train_image_dir", "/no/such/images"], ["--train_annotation_dir"]),
    ],
)
def test_script_answers_bad_input_with_one_line_and_status_2(arguments, words):
    command = [sys.executable, str(REPO_ROOT / "run_semantic_segmentation.py"), *arguments]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert finished.returncode == 2, finished.stderr
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(word in lines[0] for word in words), lines


@pytest.mark.parametrize(
    ("size", "learning_rate", "layer_decay", "drop_path_rate"),
    [("base", 1e-4, 0.65, 0.1), ("large", 4e-5, 0.95, 0.15)],
)
def test_ade20k_configs_hold_the_authors_recipe(size, learning_rate, layer_decay, drop_path_rate):
    from transformers import TrainingArguments

    from caev2_hf.cli import parse_arguments_with_config

    config = str(REPO_ROOT / "configs" / f"segmentation-vit-{size}.yaml")
    model, data, training = parse_arguments_with_config(
        (SegmentationModelArguments, SegmentationDataArguments, TrainingArguments), [config, "--use_cpu", "true"]
    )
    assert (training.learning_rate, model.layer_decay, model.drop_path_rate) == (
        learning_rate,
        layer_decay,
        drop_path_rate,
    )
    assert (
        training.max_steps,
        training.warmup_steps,
        training.weight_decay,
        training.per_device_train_batch_size,
    ) == (
        160_000,
        1500,
        0.05,
        2,  # x 8 GPUs = 16
    )
    assert (data.num_labels, data.reduce_labels, data.crop_size, data.eval_stride) == (150, True, 512, 341)
    assert (data.resize_scale, data.ratio_range, data.cat_max_ratio) == ([2048, 512], [0.5, 2.0], 0.75)
    assert (model.auxiliary_loss_weight, model.loss_normalization, model.position_table) == (
        0.4,
        "all_pixels",
        "interpolate",
    )
