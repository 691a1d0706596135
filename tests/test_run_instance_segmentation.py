"""run_instance_segmentation.py end to end on a tiny encoder and the demo's shapes (issue 24, phase 2): box and mask
AP in results.json and per epoch, the saved folder reloading to the same scores, an exact resume with drop path on,
the step schedule counted in epochs, the recipe files, and bad input ending in one line."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import build_tiny_config, edited_demo_coco, find_free_port, run_script_process, without_demo_data
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from caev2_hf import CAEv2Model
from caev2_hf.evaluation.detection.coco import annotation_masks, open_coco_folder
from caev2_hf.evaluation.detection.demo import write_demo_coco
from caev2_hf.evaluation.detection.maskrcnn import BOX_LOSSES, TRAIN_MIN_SIZES, load_mask_rcnn
from caev2_hf.evaluation.detection.maskrcnn_training import (
    InstanceSegmentationDataset,
    build_maskrcnn_train_transform,
    collate_instances,
    model_images,
)
from caev2_hf.evaluation.detection.metrics import CocoEvaluator, instances_to_coco
from caev2_hf.run_lock import LOCK_NAME, RunLock
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.instance_segmentation import AUTHORS_MIN_SIZES, BOX_LOSS_NAMES


REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "run_instance_segmentation.py"
MODULE_SPEC = importlib.util.spec_from_file_location("run_instance_segmentation", SCRIPT)
run_instance_segmentation = importlib.util.module_from_spec(MODULE_SPEC)
MODULE_SPEC.loader.exec_module(run_instance_segmentation)


def segment(argv: list[str]) -> dict:
    """`python run_instance_segmentation.py ARGV` in this process: the script's one parse and checks, then main."""
    return run_instance_segmentation.main(*run_instance_segmentation.parse_and_check_arguments(argv))


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory) -> str:
    """4 blocks of width 32, patch 8, pretrained at 64 px."""
    torch.manual_seed(0)
    folder = str(tmp_path_factory.mktemp("encoder"))
    CAEv2Model(build_tiny_config(image_size=64, num_hidden_layers=4)).save_pretrained(folder)
    return folder


def tiny_run_arguments(encoder_folder: str, tmp_path: Path, *extra: str) -> list[str]:
    """8 training images of 64 px in batches of 4 (2 steps an epoch), 4 held out, 8-channel heads, two training
    sizes, drop path on, the crop applied to every image."""
    return [
        "--model", encoder_folder, "--drop_path_rate", "0.1", "--fpn_channels", "8", "--box_batch_size_per_image",
        "32", "--min_size", "48", "64", "--max_size", "96", "--detr_crop_probability", "1.0", "--detr_crop_resize",
        "48", "64", "--detr_crop_size", "40", "64", "--demo_data", "true", "--demo_dir", str(tmp_path / "data"),
        "--demo_num_train_images", "8", "--demo_num_validation_images", "4", "--demo_image_size", "64",
        "--random_baseline", "true", "--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4", "--learning_rate", "1e-3", "--warmup_steps", "1",
        "--lr_drop_epochs", "1", "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
        "--eval_strategy", "epoch", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true",
        "--dataloader_num_workers", "0", "--torch_num_threads", "1", "--seed", "0", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(encoder_folder, tmp_path_factory) -> tuple[Path, dict]:
    tmp_path = tmp_path_factory.mktemp("run")
    return tmp_path / "out", segment(tiny_run_arguments(encoder_folder, tmp_path))


# ---- A run


def test_a_run_writes_box_and_mask_ap_a_card_and_logs_each_epoch(tiny_run, encoder_folder):
    output_dir, results = tiny_run
    written = json.loads((output_dir / "results.json").read_text())
    assert written == pytest.approx(results)
    for prefix in ("", "segm_"):
        assert all(0 <= written[f"{prefix}{name}"] <= 1 for name in ("map", "map_50", "map_75", "map_small"))
        assert written[f"{prefix}map_large"] == -1  # no demo shape is that large at 64 px
        assert 0 <= written[f"random_baseline_{prefix}map"] < 0.01
    assert (written["num_train_images"], written["num_eval_images"], written["max_steps"]) == (8, 4, 4)
    assert written["encoder"] == encoder_folder and written["epochs"] == 2
    card = ModelCard.load(output_dir / "README.md")
    entries = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert entries == {name: round(100 * written[name], 2) for name in ("map", "map_50", "segm_map", "segm_map_50")}
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    evaluations = [entry for entry in history if "eval_segm_map" in entry]
    assert [entry["epoch"] for entry in evaluations] == [1, 2, 2]  # each epoch, then the final evaluation
    assert evaluations[-1]["eval_map"] == pytest.approx(written["map"])
    losses = [entry for entry in history if "loss" in entry]
    assert len(losses) == 4 and all(
        set(entry) >= {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
        for entry in losses
    )


def test_the_lr_warms_up_then_drops_at_the_start_of_the_given_epoch(tiny_run):
    """The heads' lr of each step: 1 warmup step at 0.001 x lr, then lr, then x 0.1 from the first step of epoch 1
    (2 steps an epoch)."""
    output_dir, _ = tiny_run
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    rates = [entry["learning_rate"] for entry in history if "loss" in entry]
    torch.testing.assert_close(rates, [1e-6, 1e-3, 1e-4, 1e-4], rtol=1e-6, atol=0)


def test_the_saved_folder_reloads_and_scores_what_the_run_reported(tiny_run):
    output_dir, results = tiny_run
    model, class_names = load_mask_rcnn(output_dir)
    assert class_names == ["ellipse", "rectangle", "triangle"] and not model.training
    with torch.no_grad():
        (detections,) = model([torch.rand(3, 64, 80)])
    assert tuple(detections["masks"].shape[1:]) == (1, 64, 80) and len(detections["boxes"]) <= 100
    scores = evaluate_folder(output_dir, output_dir.parent / "data")
    for name in ("map", "map_50", "segm_map", "segm_map_50"):
        assert scores[name] == pytest.approx(results[name], abs=1e-12), name


def test_resume_from_latest_continues_exactly_with_drop_path_on(encoder_folder, tmp_path):
    """Stopped after step 2 of 4 and resumed: every weight equals the uninterrupted run's (drop path, the random
    training sizes, the RoI sampling and the crops all draw random numbers)."""
    straight = tiny_run_arguments(encoder_folder, tmp_path / "straight", "--eval_strategy", "no")
    segment(straight)
    stopped = tiny_run_arguments(encoder_folder, tmp_path / "stopped", "--eval_strategy", "no")
    with pytest.raises(UserError, match="does not exist, so there is nothing to continue"):
        segment([*stopped, "--resume_from_checkpoint", "latest"])
    segment([*stopped, "--max_steps", "2"])
    segment([*stopped, "--resume_from_checkpoint", "latest"])
    expected = load_file(tmp_path / "straight" / "out" / "model.safetensors")
    resumed = load_file(tmp_path / "stopped" / "out" / "model.safetensors")
    assert json.loads((tmp_path / "stopped" / "out" / "config.json").read_text())["drop_path_rate"] == 0.1
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, atol=0, rtol=0, msg=name)


def test_a_folder_a_live_run_holds_is_refused_before_any_data_is_written(encoder_folder, tmp_path):
    arguments = tiny_run_arguments(encoder_folder, tmp_path)
    live_run = RunLock(str(tmp_path / "out")).acquire()
    try:
        with pytest.raises(UserError, match=f"--output_dir {tmp_path / 'out'} is in use by another run"):
            segment(arguments)
    finally:
        live_run.release()
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(tmp_path / "out") == [LOCK_NAME]


def evaluate_folder(folder: Path, data: Path) -> dict[str, float]:
    """Box and mask AP of a saved detector on the demo's held-out split in `data`, in this process."""
    model, _ = load_mask_rcnn(folder)
    validation = open_coco_folder(str(data / "validation"), str(data / "annotations" / "instances_validation.json"))
    dataset = InstanceSegmentationDataset(validation)
    batch = collate_instances([dataset[index] for index in range(len(dataset))])
    with torch.no_grad():
        outputs = model(model_images(batch["images"]))
    evaluator = CocoEvaluator(validation.ground_truth, ("bbox", "segm"))
    for image_id, output in zip(batch["image_ids"], outputs, strict=True):
        evaluator.add(instances_to_coco(image_id, output, validation.label_to_category_id))
    return evaluator.compute()


def test_two_processes_train_and_score_each_image_once(encoder_folder, tmp_path):
    """Two CPU processes (DDP over gloo): 5 held-out images split 3 + 2 (the sampler repeats one to even the
    shares), gathered and scored once each with process 0's weights, so results.json holds what the saved folder
    scores in one process."""
    arguments = tiny_run_arguments(encoder_folder, tmp_path, "--demo_num_validation_images", "5", "--max_steps",
                                   "2", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
                                   "--save_strategy", "no", "--eval_strategy", "no", "--use_cpu", "true")  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(find_free_port()), str(SCRIPT), *arguments]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("box AP") == 1  # the summary line, from process 0 only
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["num_eval_images"] == 5 and results["max_steps"] == 2 and results["epochs"] == 1
    scores = evaluate_folder(tmp_path / "out", tmp_path / "data")
    for name in ("map", "map_50", "segm_map", "segm_map_50"):
        assert results[name] == pytest.approx(scores[name], abs=1e-12), name


# ---- Data


@pytest.fixture(scope="module")
def demo_split(tmp_path_factory):
    written = write_demo_coco(str(tmp_path_factory.mktemp("coco")), 4, 2, image_size=64, seed=0)
    return open_coco_folder(*written["train"])


def test_examples_are_torchvisions_targets_with_the_annotations_masks(demo_split):
    example = InstanceSegmentationDataset(demo_split)[0]
    annotations = demo_split.examples[0]["annotations"]
    x, y, width, height = np.array([annotation["bbox"] for annotation in annotations]).T
    torch.testing.assert_close(
        example["target"]["boxes"], torch.tensor(np.stack([x, y, x + width, y + height], 1), dtype=torch.float32)
    )
    assert example["target"]["labels"].tolist() == [annotation["category_id"] for annotation in annotations]  # 1..3
    assert torch.equal(example["target"]["masks"], torch.from_numpy(annotation_masks(annotations, 64, 64)))
    assert example["image"].dtype == torch.uint8 and tuple(example["image"].shape) == (3, 64, 64)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(x1, y1, x2, y2) of each mask's pixels."""
    boxes = []
    for mask in masks:
        rows, columns = torch.where(mask > 0)
        boxes.append([columns.min(), rows.min(), columns.max() + 1, rows.max() + 1])
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def test_the_augmentation_moves_masks_with_boxes_and_pixels(demo_split):
    """A flip moves boxes and masks alike; the crop (to at most 40 px) clips the boxes around what the masks keep."""
    flip = build_maskrcnn_train_transform(1.0, 0.0, [48], [32, 40], 1333)
    crop = build_maskrcnn_train_transform(0.0, 1.0, [48], [32, 40], 1333)
    for index in range(len(demo_split.examples)):
        plain = InstanceSegmentationDataset(demo_split)[index]
        flipped = InstanceSegmentationDataset(demo_split, flip)[index]
        assert torch.equal(flipped["image"], plain["image"].flip(-1))
        assert torch.equal(flipped["target"]["masks"], plain["target"]["masks"].flip(-1))
        torch.testing.assert_close(
            flipped["target"]["boxes"], mask_boxes(flipped["target"]["masks"]), atol=1.0, rtol=0
        )
        cropped = InstanceSegmentationDataset(demo_split, crop, seed=index)[index]
        assert (
            max(cropped["image"].shape[-2:]) <= 40
            and cropped["image"].shape[-2:] == cropped["target"]["masks"].shape[-2:]
        )
        boxes, kept = cropped["target"]["boxes"], mask_boxes(cropped["target"]["masks"])
        assert (boxes[:, :2] <= kept[:, :2] + 1).all() and (boxes[:, 2:] >= kept[:, 2:] - 1).all()


def test_images_without_annotations_are_left_out_of_training_only(tmp_path):
    written = write_demo_coco(str(tmp_path), 4, 2, image_size=64, seed=0)
    content = json.loads(Path(written["train"][1]).read_text())
    content["annotations"] = [item for item in content["annotations"] if item["image_id"] != 2]
    Path(written["train"][1]).write_text(json.dumps(content))
    split = open_coco_folder(*written["train"])
    assert len(InstanceSegmentationDataset(split, only_annotated_images=True)) == 3
    assert len(InstanceSegmentationDataset(split)) == 4


def test_perfect_instances_score_one_for_boxes_and_masks(demo_split):
    evaluator = CocoEvaluator(demo_split.ground_truth, ("bbox", "segm"))
    for example in demo_split.examples:
        annotations = example["annotations"]
        x, y, width, height = torch.tensor([annotation["bbox"] for annotation in annotations]).T
        masks = torch.from_numpy(annotation_masks(annotations, 64, 64)).float()[:, None] * 0.9  # probabilities
        detections = {
            "boxes": torch.stack([x, y, x + width, y + height], 1),
            "labels": torch.tensor([annotation["category_id"] for annotation in annotations]),  # model labels 1..3
            "scores": torch.ones(len(annotations)),
            "masks": masks,
        }
        evaluator.add(instances_to_coco(example["image_id"], detections, demo_split.label_to_category_id))
    metrics = evaluator.compute()
    assert metrics["map"] == pytest.approx(1.0) and metrics["segm_map"] == pytest.approx(1.0)


# ---- Arguments, recipes and bad input


def test_the_command_lines_defaults_are_the_models():
    assert BOX_LOSS_NAMES == BOX_LOSSES and AUTHORS_MIN_SIZES == TRAIN_MIN_SIZES


@pytest.mark.parametrize(
    ("size", "drop_path_rate", "paper"), [("small", 0.1, "49.0 / 42.2"), ("base", 0.2, "51.8 / 44.7")]
)
def test_the_coco_recipes_parse_to_the_authors_settings(encoder_folder, size, drop_path_rate, paper):
    config = REPO_ROOT / "configs" / f"maskrcnn-vit-{size}-1x.yaml"
    assert paper in config.read_text()
    model_args, augmentation_args, data_args, _, training_args = run_instance_segmentation.parse_and_check_arguments(
        [str(config), "--model", encoder_folder, "--demo_data", "true", "--output_dir", "unused", "--bf16", "false"]
    )  # bf16 on the command line: this machine may have no GPU (test_bad_input.py: the line that says so)
    assert (model_args.drop_path_rate, model_args.layer_decay, model_args.lr_drop_epochs) == (
        drop_path_rate,
        0.75,
        [9, 11],
    )
    assert model_args.min_size == list(range(480, 801, 32)) and model_args.max_size == 1333
    assert (training_args.learning_rate, training_args.weight_decay, training_args.num_train_epochs) == (
        3e-4,
        0.05,
        12,
    )
    assert (training_args.warmup_steps, model_args.warmup_start_factor, training_args.max_grad_norm) == (500, 0.001, 0)
    assert (augmentation_args.detr_crop_resize, augmentation_args.detr_crop_size) == ([400, 500, 600], [384, 600])
    assert data_args.demo_data  # the command line's source replaced the file's COCO folders
    values = yaml.safe_load(config.read_text())
    assert values["train_image_dir"] == "coco/train2017" and values["bf16"] and values["eval_strategy"] == "epoch"


def test_the_demo_config_fits_the_demo_encoder():
    values = yaml.safe_load((REPO_ROOT / "configs" / "demo-instance-segmentation.yaml").read_text())
    demo = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())["config_overrides"]
    assert values["model"] == "demo_output/final" and values["demo_data"] and values["random_baseline"]
    assert len(values["out_indices"]) == 4 and max(values["out_indices"]) == demo["num_hidden_layers"]
    assert values["min_size"][-1] == values["demo_image_size"]  # evaluated at the images' own size


def no_segmentation(content):
    del content["annotations"][2]["segmentation"]


def rle_of_wrong_size(content):
    content["annotations"][0]["segmentation"] = {"size": [10, 8], "counts": "abc"}


def other_categories(content):
    content["categories"][0]["name"] = "circle"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            no_segmentation,
            r"the training data: annotation 3 \(image '0000\d.jpg'\) has no segmentation: .*"
            "run_object_detection.py",
        ),  # fmt: skip
        (rle_of_wrong_size, r"annotation 1 \(image '00000.jpg', 64x64 px\) has an RLE segmentation of size \[10, 8\]"),
        (
            other_categories,
            r"categories \['ellipse', 'rectangle', 'triangle'\] differ from the training split's "
            r"\['circle'",
        ),  # fmt: skip
    ],
)
def test_bad_annotations_are_refused_naming_the_entry(encoder_folder, tmp_path, edit, message):
    arguments = without_demo_data(tiny_run_arguments(encoder_folder, tmp_path))
    with pytest.raises(UserError, match=message):
        segment([*arguments, *edited_demo_coco(tmp_path, edit)])


def test_the_command_ends_bad_coco_files_in_one_line_and_status_2(encoder_folder, tmp_path):
    (tmp_path / "broken.json").write_text('{"images": [')
    data = edited_demo_coco(tmp_path, lambda content: None)
    data[data.index("--validation_annotation_file") + 1] = str(tmp_path / "broken.json")
    box_outside = edited_demo_coco(
        tmp_path / "box", lambda content: content["annotations"][0].update(bbox=[50, 50, 30, 30])
    )
    cases = [
        (data, ["broken.json is not valid JSON", "line 1", "repair or re-export it"]),
        (box_outside, ["annotation 1 (image '00000.jpg', 64x64 px) has bbox [50, 50, 30, 30]", "outside the image"]),
    ]
    for files, words in cases:
        completed = run_script_process(
            "run_instance_segmentation.py", "--model", encoder_folder, *files, "--output_dir", str(tmp_path / "out")
        )
        lines = completed.stderr.strip().splitlines()
        assert completed.returncode == 2, completed.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and all(word in lines[0] for word in words), lines
    completed = run_script_process(
        "run_instance_segmentation.py", "configs/demo-instance-segmentation.yaml", "--model", "demo_output/missing"
    )
    assert completed.returncode == 2 and completed.stderr.strip().splitlines() == [
        "error: --model demo_output/missing: no such folder. The demo starts from the demo encoder: run python "
        "run_pretrain.py --config configs/demo.yaml first (15-21 CPU s), or give another CAE v2 encoder."
    ]
