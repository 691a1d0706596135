"""Semantic segmentation (issue 14): mIoU, layer decay, poly schedule, sliding window, data, script and demo."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from conftest import build_tiny_config
from PIL import Image
from transformers import UperNetConfig, UperNetForSemanticSegmentation, pipeline

from caev2_hf import CAEv2ForPreTraining
from caev2_hf.evaluation.segmentation import (
    SegmentationTrainer,
    build_segmentation_optimizer,
    load_segmentation_model,
    poly_schedule_factor,
    predict_label_map,
    slide_inference,
)
from caev2_hf.evaluation.segmentation_data import (
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    collate_segmentation_batch,
    make_demo_segmentation,
    pair_image_and_mask_folders,
    photometric_distortion,
    random_crop_box,
    reduce_zero_label,
)
from caev2_hf.evaluation.segmentation_metrics import MEAN_IOU_PATH, MeanIoUAccumulator, count_confusion
from caev2_hf_cli.parsing import parse_arguments
from caev2_hf_cli.segmentation import SegmentationDataArguments, SegmentationModelArguments


REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_SPEC = importlib.util.spec_from_file_location(
    "run_semantic_segmentation", REPO_ROOT / "run_semantic_segmentation.py"
)
run_semantic_segmentation = importlib.util.module_from_spec(MODULE_SPEC)
MODULE_SPEC.loader.exec_module(run_semantic_segmentation)

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def tiny_upernet(num_labels: int = 3, **overrides) -> UperNetForSemanticSegmentation:
    backbone = build_tiny_config(num_hidden_layers=4, **overrides)
    config = UperNetConfig(backbone_config=backbone, num_labels=num_labels, hidden_size=16, auxiliary_channels=8)
    return UperNetForSemanticSegmentation(config)


# ---- mIoU


def test_mean_iou_matches_a_hand_computed_confusion_matrix():
    # References (rows) x predictions (columns), 255 ignored:
    #   reference 0 0 1 1 2 255       confusion: ref 0 -> pred 0: 1, pred 1: 1
    #   predicted 0 1 1 2 2 0                    ref 1 -> pred 1: 1, pred 2: 1
    #                                            ref 2 -> pred 2: 1
    # IoU_0 = 1 / (2 + 1 - 1) = 1/2; IoU_1 = 1 / (2 + 2 - 1) = 1/3; IoU_2 = 1 / (1 + 2 - 1) = 1/2
    # accuracy per class 1/2, 1/2, 1; pixel accuracy 3/5.
    predictions = [np.array([[0, 1, 1], [2, 2, 0]])]
    references = [np.array([[0, 0, 1], [1, 2, 255]])]
    result = evaluate.load(MEAN_IOU_PATH).compute(predictions=predictions, references=references, num_labels=3)
    np.testing.assert_allclose(result["per_category_iou"], [1 / 2, 1 / 3, 1 / 2])
    assert result["mean_iou"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    np.testing.assert_allclose(result["per_category_accuracy"], [1 / 2, 1 / 2, 1.0])
    assert result["overall_accuracy"] == pytest.approx(3 / 5)
    confusion = count_confusion(torch.tensor(predictions[0]), torch.tensor(references[0]), 3, 255)
    assert confusion.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_absent_class_is_left_out_of_the_mean_and_reduce_labels_ignores_zero():
    # 4 classes, class 3 never referenced nor predicted: NaN, not a zero in the mean.
    result = evaluate.load(MEAN_IOU_PATH).compute(
        predictions=[np.array([[0, 2], [2, 2]])], references=[np.array([[1, 2], [3, 0]])], num_labels=4,
        reduce_labels=True,
    )  # fmt: skip
    # Reduced references [[0, 1], [2, 255]]: ref 0 -> pred 0, ref 1 -> pred 2, ref 2 -> pred 2, the last pixel
    # ignored (its prediction too). IoU_0 = 1, IoU_1 = 0 / 1, IoU_2 = 1 / (1 + 2 - 1); class 3 absent: NaN.
    np.testing.assert_allclose(result["per_category_iou"][:3], [1.0, 0.0, 1 / 2])
    assert math.isnan(result["per_category_iou"][3]) and result["mean_iou"] == pytest.approx(1.5 / 3)


def test_references_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match="outside \\[0, 3\\)"):
        evaluate.load(MEAN_IOU_PATH).compute(predictions=[[[0, 1]]], references=[[[0, 7]]], num_labels=3)


def test_accumulator_sums_batches_then_scores_once():
    metric = MeanIoUAccumulator(num_labels=2)
    first = torch.tensor([[[3, 1], [0, 2]]])
    second = torch.tensor([[[1, 0], [1, 1]], [[0, 0], [0, 4]]])
    from transformers import EvalPrediction

    assert metric(EvalPrediction(predictions=first, label_ids=torch.zeros(1)), compute_result=False) == {}
    scores = metric(EvalPrediction(predictions=second, label_ids=torch.zeros(2)), compute_result=True)
    # total [[4, 1], [1, 7]]: IoU_0 = 4 / (5 + 5 - 4) = 2/3, IoU_1 = 7 / (8 + 8 - 7) = 7/9
    assert scores["mean_iou"] == pytest.approx((2 / 3 + 7 / 9) / 2)
    assert scores["overall_accuracy"] == pytest.approx(11 / 13)
    assert metric.total.sum() == 0  # reset for the next evaluation


# ---- Optimisation


def test_layer_decay_groups_match_a_hand_written_table():
    torch.manual_seed(0)
    model = tiny_upernet()  # 4 blocks: embeddings 0.5**5, block i 0.5**(4 - i), neck and heads 1
    optimizer = build_segmentation_optimizer(model, learning_rate=1.0, weight_decay=0.05, layer_decay=0.5)
    found = {name: (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for name in group["names"]}
    expected = {
        "backbone.embeddings.cls_token": (1 / 32, 0.05),  # 3-D: decays, as in the authors' constructor
        "backbone.embeddings.patch_embeddings.projection.weight": (1 / 32, 0.05),
        "backbone.embeddings.patch_embeddings.projection.bias": (1 / 32, 0.0),
        "backbone.encoder.layers.0.attention.q_proj.weight": (1 / 16, 0.05),
        "backbone.encoder.layers.0.attention.q_proj.bias": (1 / 16, 0.0),
        "backbone.encoder.layers.0.relative_position_bias.relative_position_bias_table": (1 / 16, 0.05),
        "backbone.encoder.layers.1.layer_scale1.lambda1": (1 / 8, 0.0),
        "backbone.encoder.layers.3.mlp.fc2.weight": (1 / 2, 0.05),
        "backbone.encoder.layers.3.layernorm_after.weight": (1 / 2, 0.0),
        "backbone.fpn1.0.weight": (1.0, 0.05),
        "decode_head.classifier.weight": (1.0, 0.05),
        "decode_head.classifier.bias": (1.0, 0.0),
        "auxiliary_head.convs.0.batch_norm.weight": (1.0, 0.0),
    }
    assert {name: found[name] for name in expected} == expected  # powers of 2: exact
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert sorted(found) == sorted(trainable)  # every parameter once
    assert {group["lr"] for group in optimizer.param_groups} == {1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0}


def test_poly_schedule_with_linear_warmup_as_mmcv():
    # 1000 steps, 100 of warmup, power 1, warmup ratio 1e-6: warmup scales the poly value.
    assert poly_schedule_factor(0, 100, 1000) == pytest.approx(1e-6)
    assert poly_schedule_factor(50, 100, 1000) == pytest.approx((1 - 0.05) * (1e-6 + (1 - 1e-6) * 0.5))
    assert poly_schedule_factor(100, 100, 1000) == pytest.approx(0.9)
    assert poly_schedule_factor(550, 100, 1000) == pytest.approx(0.45)
    assert poly_schedule_factor(1000, 100, 1000) == 0.0
    assert poly_schedule_factor(500, 0, 1000, power=0.9) == pytest.approx(0.5**0.9)


# ---- Inference


def test_sliding_window_equals_whole_image_when_the_window_covers_it():
    torch.manual_seed(0)
    model = tiny_upernet().eval()
    pixel_values = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        whole = model(pixel_values).logits
        torch.testing.assert_close(slide_inference(model, pixel_values, 3, 48, 32, 8), whole)
        torch.testing.assert_close(slide_inference(model, pixel_values, 3, 64, 40, 8), whole)


class PixelwiseModel(torch.nn.Module):
    """Logits computed pixel by pixel: any tiling must give the whole image's result."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.nn.Conv2d(3, 4, kernel_size=1)

    def forward(self, pixel_values):
        return type("Output", (), {"logits": self.mix(pixel_values)})()


def test_overlapping_windows_average_to_the_whole_image_result():
    torch.manual_seed(0)
    model, pixel_values = PixelwiseModel(), torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        expected = model(pixel_values).logits
        # windows of 32 every 21 px: overlaps counted 1 to 4 times, and 50/70 are not multiples of the patch (8)
        torch.testing.assert_close(slide_inference(model, pixel_values, 4, 32, 21, 8), expected)
        labels = predict_label_map(model, pixel_values, (25, 35), 4, 32, 21, 8)
    assert labels.shape == (1, 25, 35)


# ---- Data


def test_reduce_zero_label_moves_other_to_ignore():
    mask = np.array([[0, 1, 150], [255, 2, 0]])
    assert reduce_zero_label(mask, 255).tolist() == [[255, 0, 149], [255, 1, 255]]


def test_train_transform_crops_pads_and_keeps_image_and_mask_aligned():
    image = np.zeros((40, 24, 3), dtype=np.uint8)
    image[:, 12:] = 255  # right half white, its mask class 1
    mask = np.zeros((40, 24), dtype=np.uint8)
    mask[:, 12:] = 1
    example = {"image": Image.fromarray(image), "annotation": Image.fromarray(mask)}
    transform = SegmentationTrainTransform(
        crop_size=32, scale=(40, 24), ratio_range=(1.0, 1.0), image_mean=[0.5] * 3, image_std=[0.5] * 3,
        photometric=False,
    )  # fmt: skip
    for seed in range(4):
        output = transform(example, torch.Generator().manual_seed(seed))
        pixels, labels = output["pixel_values"], output["labels"]
        assert pixels.shape == (3, 32, 32) and labels.shape == (32, 32)
        assert (labels[:, 24:] == 255).all() and (pixels[:, :, 24:] == 0).all()  # padded: 24 px wide image
        assert ((pixels[0, :, :24] > 0) == (labels[:, :24] == 1)).all()  # white exactly where class 1


def test_crop_redraw_avoids_one_class_filling_the_crop():
    mask = np.zeros((100, 100), dtype=np.int64)
    mask[:, 60:] = 1  # a 20 px crop has neither class above 75% only when its left edge is in 46..54: 9 in 81
    generator = torch.Generator().manual_seed(0)

    def balanced(cat_max_ratio: float) -> int:
        boxes = [random_crop_box(mask, 20, cat_max_ratio, 255, generator) for _ in range(40)]
        return sum(46 <= left <= 54 for _, left in boxes)

    # up to 10 draws each: about 1 - (72/81)**10 = 69% of crops are balanced, against 11% with a single draw
    assert balanced(0.75) > 18 and balanced(1.0) < 10


def test_photometric_distortion_stays_in_range_and_changes_colours():
    image = torch.rand(3, 16, 16) * 255
    outputs = [photometric_distortion(image, torch.Generator().manual_seed(seed)) for seed in range(8)]
    assert all(output.min() >= 0 and output.max() <= 255 for output in outputs)
    assert sum(not torch.allclose(output, image) for output in outputs) >= 6


def test_eval_transform_rescales_the_image_and_keeps_the_mask_size():
    example = {"image": Image.new("RGB", (200, 100)), "annotation": Image.new("L", (200, 100))}
    output = SegmentationEvalTransform((2048, 64), MEAN, STD)(example)
    assert output["pixel_values"].shape == (3, 64, 128) and output["labels"].shape == (100, 200)
    batch = collate_segmentation_batch([output, SegmentationEvalTransform((2048, 32), MEAN, STD)(example)])
    assert isinstance(batch["pixel_values"], list) and batch["image_sizes"].tolist() == [[100, 200], [100, 200]]


def test_folders_pair_images_with_masks_by_name(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (8, 8)).save(tmp_path / "img" / f"{name}.jpg")
        Image.new("L", (8, 8)).save(tmp_path / "ann" / f"{name}.png")
    rows = pair_image_and_mask_folders(str(tmp_path / "img"), str(tmp_path / "ann"))
    assert [Path(row["annotation"]).name for row in rows] == ["a.png", "b.png"]
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "c.jpg")
    with pytest.raises(ValueError, match="have no mask of the same name.*'c'"):
        pair_image_and_mask_folders(str(tmp_path / "img"), str(tmp_path / "ann"))


def test_demo_task_is_deterministic_and_has_every_class():
    first, second = make_demo_segmentation(8, 64, seed=3), make_demo_segmentation(8, 64, seed=3)
    masks = np.stack([np.asarray(example["annotation"]) for example in first])
    assert np.array_equal(masks, np.stack([np.asarray(example["annotation"]) for example in second]))
    assert set(np.unique(masks)) == {0, 1, 2, 3} and 0.3 < (masks == 0).mean() < 0.95


# ---- Arguments, model loading, the script


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


def test_upernet_from_a_pretraining_checkpoint_loads_the_whole_encoder(tmp_path):
    torch.manual_seed(0)
    source = CAEv2ForPreTraining(build_tiny_config(num_hidden_layers=4))
    source.save_pretrained(tmp_path)
    model, message = load_segmentation_model(str(tmp_path), 3, {0: "a", 1: "b", 2: "c"}, crop_size=32)
    assert "all 71 encoder tensors loaded" in message and "none missing or unexpected" in message
    torch.testing.assert_close(
        model.backbone.encoder.layers[2].mlp.fc1.weight, source.caev2.encoder.layers[2].mlp.fc1.weight
    )
    assert model.config.backbone_config.backbone_image_size == 32 and model.config.num_labels == 3


def test_upernet_from_another_model_is_refused(tmp_path):
    UperNetConfig(num_labels=2).backbone_config.save_pretrained(tmp_path)  # a ResNet config
    with pytest.raises(ValueError, match="not CAE v2"):
        load_segmentation_model(str(tmp_path), 2, {0: "a", 1: "b"}, crop_size=32)


def test_all_pixels_loss_is_the_valid_pixel_loss_times_the_valid_fraction(tmp_path):
    torch.manual_seed(0)
    model = tiny_upernet()
    labels = torch.randint(0, 3, (2, 32, 32))
    labels[:, :8] = 255  # a quarter ignored
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32), "labels": labels}
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainers = {
        mode: SegmentationTrainer(
            model=model, args=args, num_labels=3, crop_size=32, eval_stride=21, loss_normalization=mode
        )
        for mode in ("all_pixels", "valid_pixels")
    }
    model.eval()  # no dropout, BatchNorm in eval: both losses see the same logits
    with torch.no_grad():
        valid = trainers["valid_pixels"].compute_loss(model, inputs)
        every = trainers["all_pixels"].compute_loss(model, inputs)
    assert every == pytest.approx(0.75 * float(valid))


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
        arguments = [*DEMO_TEST_ARGUMENTS, "--torch_num_threads", "1", "--output_dir", str(output_dir)]
        results = run_semantic_segmentation.main(*run_semantic_segmentation.parse_and_check_arguments(arguments))
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

    config = str(REPO_ROOT / "configs" / f"segmentation-vit-{size}.yaml")
    model, data, training = parse_arguments(
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


def test_a_source_on_the_command_line_replaces_the_config_files_with_its_settings():
    from transformers import TrainingArguments

    classes = (SegmentationModelArguments, SegmentationDataArguments, TrainingArguments)
    local = ["--train_image_dir", "i/train", "--train_annotation_dir", "a/train", "--validation_image_dir", "i/val",
             "--validation_annotation_dir", "a/val"]  # fmt: skip
    ade20k = str(REPO_ROOT / "configs" / "segmentation-vit-base.yaml")
    _, data, _ = parse_arguments(classes, [ade20k, *local, "--model", "m", "--use_cpu", "true"])
    assert (data.dataset_name, data.dataset_config_name, data.dataset_revision) == (None, None, None)
    assert (data.train_image_dir, data.validation_annotation_dir, data.num_labels) == ("i/train", "a/val", 150)
    demo = str(REPO_ROOT / "configs" / "demo-segmentation.yaml")
    _, data, _ = parse_arguments(classes, [demo, "--dataset_name", "scene_parse_150", "--num_labels", "150"])
    assert (data.demo_data, data.dataset_name, data.num_labels) == (False, "scene_parse_150", 150)
    model, _, _ = parse_arguments(classes, [demo, "--config_overrides", '{"num_hidden_layers": 2}'])
    assert model.config_overrides["num_hidden_layers"] == 2 and model.config_overrides["hidden_size"] == 96
