"""run_object_detection.py end to end on a tiny encoder and the demo's shapes: results.json, the card's model-index,
the folder in pipeline("object-detection"), resuming from the latest checkpoint, and bad input ending in one line."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_tiny_config, edited_demo_coco, run_script_process, without_demo_data
from huggingface_hub import ModelCard
from test_detection_lwdetr import SMALL_DECODER, tiny_vit
from transformers import pipeline

from caev2_hf import CAEv2Config, CAEv2Model
from caev2_hf.evaluation.detection.lwdetr import LWDETR_SIZES
from caev2_hf_cli.detection import LWDETR_SIZE_NAMES, DetectionDataArguments
from caev2_hf_cli.errors import UserError


REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "run_object_detection.py"
MODULE_SPEC = importlib.util.spec_from_file_location("run_object_detection", SCRIPT)
run_object_detection = importlib.util.module_from_spec(MODULE_SPEC)
MODULE_SPEC.loader.exec_module(run_object_detection)


def detect(argv: list[str]) -> dict:
    """`python run_object_detection.py ARGV` in this process: the script's one parse and checks, then its main."""
    return run_object_detection.main(*run_object_detection.parse_and_check_arguments(argv))


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory) -> str:
    """Width 32, 4 heads, patch 8, 2 blocks, pretrained at 64 px: an 8 x 8 grid, 2 x 2 patches per window."""
    torch.manual_seed(0)
    folder = str(tmp_path_factory.mktemp("encoder"))
    CAEv2Model(build_tiny_config(image_size=64, intermediate_size=128)).save_pretrained(folder)
    return folder


def tiny_run_arguments(encoder_folder: str, tmp_path: Path, *extra: str) -> list[str]:
    backbone = tiny_vit(2, window_block_indices=[0], patch_size=8)
    return [
        "--model", encoder_folder, "--image_size", "64", "--backbone_overrides", json.dumps(backbone),
        "--config_overrides", json.dumps(SMALL_DECODER), "--encoder_learning_rate", "1e-3", "--ema_decay", "0.9",
        "--demo_data", "true", "--demo_dir", str(tmp_path / "data"), "--demo_num_train_images", "16",
        "--demo_num_validation_images", "8", "--demo_image_size", "64", "--random_baseline", "true",
        "--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "4", "--per_device_eval_batch_size",
        "8", "--learning_rate", "1e-3", "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
        "--eval_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--dataloader_num_workers", "0",
        "--torch_num_threads", "1", "--seed", "0", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(encoder_folder, tmp_path_factory) -> tuple[Path, dict]:
    tmp_path = tmp_path_factory.mktemp("run")
    return tmp_path / "out", detect(tiny_run_arguments(encoder_folder, tmp_path))


def test_a_run_writes_results_a_card_with_its_map_and_a_folder_the_pipeline_runs(tiny_run, encoder_folder):
    output_dir, results = tiny_run
    written = json.loads((output_dir / "results.json").read_text())
    assert written == pytest.approx(results)
    assert {"map", "map_50", "map_75", "map_small", "map_medium", "map_large", "random_baseline_map"} <= set(written)
    assert 0 <= written["map"] <= 1 and written["map_large"] == -1  # no demo object is that large at 64 px
    assert (written["num_train_images"], written["num_eval_images"], written["max_steps"]) == (16, 8, 4)
    assert written["encoder"] == encoder_folder and written["lwdetr_size"] == "small"
    card = ModelCard.load(output_dir / "README.md")
    entries = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert entries == {"map": round(100 * written["map"], 2), "map_50": round(100 * written["map_50"], 2),
                       "map_75": round(100 * written["map_75"], 2)}  # fmt: skip
    assert card.data.pipeline_tag == "object-detection"
    detector = pipeline("object-detection", model=str(output_dir))
    image = str(output_dir.parent / "data" / "validation" / "00000.jpg")
    detections = detector(image, threshold=0.0)
    assert len(detections) == 10 * 3  # every query and class pair clears threshold 0 (10 queries, 3 classes)
    assert {detection["label"] for detection in detections} <= {"ellipse", "rectangle", "triangle"}
    assert all(d["box"]["xmin"] <= d["box"]["xmax"] and d["box"]["ymin"] <= d["box"]["ymax"] for d in detections)


def test_resume_from_latest_continues_the_checkpoint(encoder_folder, tmp_path):
    arguments = tiny_run_arguments(encoder_folder, tmp_path)
    with pytest.raises(UserError, match="does not exist, so there is nothing to continue"):
        detect([*arguments, "--resume_from_checkpoint", "latest"])
    detect([*arguments, "--max_steps", "2"])
    results = detect([*arguments, "--resume_from_checkpoint", "latest"])
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and results["max_steps"] == 4
    assert (tmp_path / "out" / "checkpoint-4" / "ema.safetensors").is_file()


def bad_box(content):
    content["annotations"][0]["bbox"] = [50, 50, 30, 30]


def unknown_category(content):
    content["annotations"][0]["category_id"] = 9


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (bad_box, r"annotation 1 \(image '00000.jpg', 64x64 px\) has bbox \[50, 50, 30, 30\] .* reaching outside"),
        (unknown_category, r"has category_id 9, which is not in 'categories' \(ids \[1, 2, 3\]\)"),
    ],
)
def test_bad_annotations_end_in_one_line_naming_the_entry(encoder_folder, tmp_path, edit, message):
    arguments = without_demo_data(tiny_run_arguments(encoder_folder, tmp_path))
    with pytest.raises(UserError, match=message):
        detect([*arguments, *edited_demo_coco(tmp_path, edit)])


def test_images_named_but_absent_are_counted_not_fatal(encoder_folder, tmp_path):
    arguments = without_demo_data(tiny_run_arguments(encoder_folder, tmp_path))
    data = edited_demo_coco(tmp_path, lambda content: None)
    os.remove(os.path.join(data[1], "00003.jpg"))
    results = detect([*arguments, *data, "--max_steps", "1", "--save_strategy", "no"])
    assert results["num_missing_images"] == 1 and results["num_train_images"] == 7


def test_the_command_ends_bad_input_in_one_line_and_status_2(encoder_folder, tmp_path):
    (tmp_path / "broken.json").write_text('{"images": [')
    (tmp_path / "images").mkdir()
    cases = [
        (["--train_annotation_file", str(tmp_path / "missing.json")], "--train_annotation_file", "no such file"),
        (["--train_annotation_file", str(tmp_path / "broken.json")], "broken.json is not valid JSON", "line 1"),
    ]
    completed = run_script_process(
        "run_object_detection.py", "configs/demo-detection.yaml", "--model", "demo_output/missing"
    )
    assert completed.returncode == 2 and completed.stderr.strip().splitlines() == [
        "error: --model demo_output/missing: no such folder. The demo starts from the demo encoder: run python "
        "run_pretrain.py --config configs/demo.yaml first (15-21 CPU s), or give another CAE v2 encoder."
    ]
    for swap, *words in cases:
        data = ["--train_image_dir", str(tmp_path / "images"), "--train_annotation_file", str(tmp_path / "x.json"),
                "--validation_image_dir", str(tmp_path / "images"), "--validation_annotation_file",
                str(tmp_path / "broken.json"), *swap, "--output_dir", str(tmp_path / "out")]  # fmt: skip
        completed = run_script_process("run_object_detection.py", "--model", encoder_folder, *data)
        lines = completed.stderr.strip().splitlines()
        assert completed.returncode == 2, completed.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and all(word in lines[0] for word in words), lines


def test_the_size_configs_parse_and_build_the_authors_sizes(encoder_folder):
    assert tuple(LWDETR_SIZES) == LWDETR_SIZE_NAMES
    for size in LWDETR_SIZE_NAMES:
        config = REPO_ROOT / "configs" / f"detection-lwdetr-{size}.yaml"
        model_args, _, _, training_args = run_object_detection.parse_and_check_arguments(
            [str(config), "--model", encoder_folder, "--demo_data", "true", "--output_dir", "unused"]
        )
        assert model_args.lwdetr_size == size and model_args.ema_decay == 0.9997
        assert (training_args.learning_rate, model_args.encoder_learning_rate) == (4e-4, 6e-4)
        assert (training_args.max_grad_norm, training_args.num_train_epochs) == (0.1, 30)
        encoder = yaml.safe_load(config.read_text())["model"]
        assert encoder.endswith(f"caev2-vit-{LWDETR_SIZES[size].encoder_preset}/final")


def test_the_demo_config_fits_the_demo_encoder():
    values = yaml.safe_load((REPO_ROOT / "configs" / "demo-detection.yaml").read_text())
    assert values["model"] == "demo_output/final" and values["demo_data"] and values["random_baseline"]
    demo_encoder = CAEv2Config(**yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())["config_overrides"])
    backbone = values["backbone_overrides"]
    assert (backbone["hidden_size"], backbone["patch_size"]) == (demo_encoder.hidden_size, demo_encoder.patch_size)
    assert DetectionDataArguments(demo_data=True).source_name == "the offline demo (shapes on photos)"


def test_the_benchmark_times_a_training_step_and_writes_json(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_detection", REPO_ROOT / "benchmarks" / "bench_detection.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    arguments = ["--device", "cpu", "--precision", "fp32", "--batch_size", "1", "--image_size", "384",
                 "--warmup_steps", "0", "--steps", "1", "--output_json", str(tmp_path / "bench.json")]  # fmt: skip
    result = bench.main(arguments)
    assert json.loads((tmp_path / "bench.json").read_text()) == result
    assert result["loss_is_finite"] and result["images_per_second"] > 0 and result["size"] == "small"
