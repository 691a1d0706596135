"""Training LW-DETR with the Trainer: the authors' augmentation on boxes, examples and batches, their parameter
groups, the weight average, COCO metrics while evaluating, and a run that resumes exactly."""

import json
import logging
import os
from types import SimpleNamespace

import pytest
import torch
from test_detection_lwdetr import SMALL_DECODER, tiny_encoder_config, tiny_vit
from torchvision import tv_tensors
from transformers import EvalPrediction, TrainingArguments

from caev2_hf import CAEv2Model
from caev2_hf.evaluation.detection.coco import CocoFormatError, open_coco_folder
from caev2_hf.evaluation.detection.demo import write_demo_coco
from caev2_hf.evaluation.detection.lwdetr import build_lwdetr_from_caev2, build_lwdetr_image_processor
from caev2_hf.evaluation.detection.training import (
    EMA_FILE,
    DetectionCollator,
    DetectionDataset,
    DetrCocoMetrics,
    EpochCallback,
    LwDetrTrainer,
    ModelEma,
    RandomSizeCrop,
    build_lwdetr_parameter_groups,
    build_train_transform,
    square_sizes,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, tuple[str, str]]:
    return write_demo_coco(str(tmp_path_factory.mktemp("demo")), 8, 4, image_size=64, seed=0)


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory) -> str:
    torch.manual_seed(0)
    folder = str(tmp_path_factory.mktemp("encoder"))
    CAEv2Model(tiny_encoder_config(num_hidden_layers=2)).save_pretrained(folder)
    return folder


def tiny_lwdetr(encoder_folder: str, id2label: dict):
    model, _ = build_lwdetr_from_caev2(
        encoder_folder, "small", id2label, image_size=64, backbone_overrides=tiny_vit(2, window_block_indices=[0]),
        **SMALL_DECODER,
    )  # fmt: skip
    return model


# ---- Augmentation


def test_square_sizes_are_the_authors_at_640_and_scale_with_the_resolution():
    assert square_sizes(640) == [448, 512, 576, 640, 704, 768, 832, 896]
    assert square_sizes(320) == [256, 320, 384, 448]
    assert square_sizes(64) == [64]


def test_the_training_augmentation_moves_boxes_with_the_pixels():
    """A white and a grey rectangle on black: after any draw of the augmentation each kept box still frames its
    rectangle's pixels, the image is a square of a training size, and boxes and labels stay paired."""
    image = torch.zeros(3, 96, 128, dtype=torch.uint8)
    image[:, 20:50, 30:70] = 255
    image[:, 60:90, 90:120] = 128
    boxes = tv_tensors.BoundingBoxes([[30, 20, 40, 30], [90, 60, 30, 30]], format="XYWH", canvas_size=(96, 128))
    transform = build_train_transform(128)
    cropped = 0
    for seed in range(40):
        torch.manual_seed(seed)
        pixels, target = transform(tv_tensors.Image(image), {"boxes": boxes, "labels": torch.tensor([0, 1])})
        assert pixels.shape[-1] == pixels.shape[-2] and pixels.shape[-1] in square_sizes(128)
        assert len(target["boxes"]) == len(target["labels"])
        cropped += len(target["labels"]) < 2
        for (x, y, width, height), label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            inside = pixels[0, round(y) + 2 : round(y + height) - 2, round(x) + 2 : round(x + width) - 2].float()
            if inside.numel():
                assert abs(inside.mean().item() - (255 if label == 0 else 128)) < 12
    assert cropped > 0  # the crop branch ran and dropped a box at least once


def test_random_size_crop_keeps_its_range():
    crop = RandomSizeCrop(20, 40)
    for seed in range(20):
        torch.manual_seed(seed)
        height, width = crop(torch.zeros(3, 30, 100)).shape[-2:]
        assert 20 <= height <= 30 and 20 <= width <= 40


# ---- Examples and batches


def test_examples_carry_model_labels_and_leave_crowd_regions_out(demo, tmp_path):
    with open(demo["train"][1]) as file:
        content = json.load(file)
    content["annotations"][0]["iscrowd"] = 1
    (tmp_path / "instances.json").write_text(json.dumps(content))
    split = open_coco_folder(demo["train"][0], str(tmp_path / "instances.json"))
    example = DetectionDataset(split)[0]
    annotations = [a for a in split.examples[0]["annotations"] if not a["iscrowd"]]
    assert example["image"].shape == (3, 64, 64) and example["image"].dtype == torch.uint8
    assert not example["augmented"] and example["target"]["image_id"] == split.examples[0]["image_id"]
    assert [a["category_id"] for a in example["target"]["annotations"]] == [a["category_id"] - 1 for a in annotations]
    assert [a["bbox"] for a in example["target"]["annotations"]] == [a["bbox"] for a in annotations]


def test_the_collator_pads_training_images_and_resizes_evaluation_images(demo):
    processor = build_lwdetr_image_processor(tiny_encoder_config(), image_size=128)
    collate = DetectionCollator(processor)
    examples = [
        {"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "augmented": True,
         "target": {"image_id": 1, "annotations": [{"bbox": [0, 0, 64, 64], "category_id": 0, "area": 4096.0}]}},
        {"image": torch.zeros(3, 32, 48, dtype=torch.uint8), "augmented": True,
         "target": {"image_id": 2, "annotations": [{"bbox": [8, 4, 16, 8], "category_id": 2, "area": 128.0}]}},
    ]  # fmt: skip
    batch = collate([examples[0], None, examples[1]])  # an unreadable image (None) is dropped
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["pixel_mask"][1].sum() == 32 * 48 and batch["pixel_mask"][1, :32, :48].all()
    # (cx, cy, w, h) relative to the padded 64 x 64 canvas
    torch.testing.assert_close(batch["labels"][1]["boxes"], torch.tensor([[0.25, 0.125, 0.25, 0.125]]))
    assert batch["labels"][1]["class_labels"].tolist() == [2]
    evaluation = collate([DetectionDataset(open_coco_folder(*demo["validation"]))[0]])
    assert evaluation["pixel_values"].shape == (1, 3, 128, 128)  # square-resized as pipeline() does
    assert evaluation["labels"][0]["orig_size"].tolist() == [64, 64]  # where predictions are scored
    with pytest.raises(CocoFormatError, match="Every image of a batch was unreadable"):
        collate([None, None])


def test_augmentation_depends_on_seed_epoch_and_example_only(demo):
    """Not on the global random state (which a resumed run restores only as of its checkpoint)."""
    dataset = DetectionDataset(open_coco_folder(*demo["train"]), build_train_transform(64), seed=3)
    first = dataset[5]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    again = dataset[5]
    assert torch.equal(torch.get_rng_state(), state)  # the global state is left as it was
    assert torch.equal(first["image"], again["image"]) and first["target"] == again["target"]
    EpochCallback().on_epoch_begin(
        None, SimpleNamespace(epoch=1.0), None, train_dataloader=SimpleNamespace(dataset=dataset)
    )
    assert dataset.epoch == 1
    draws = [dataset[5]] + [DetectionDataset(open_coco_folder(*demo["train"]), build_train_transform(64), seed=4)[5]]
    assert all(not torch.equal(first["image"], draw["image"]) or first["target"] != draw["target"] for draw in draws)


def test_unreadable_or_mis_sized_images_are_skipped_and_named(demo, tmp_path, caplog):
    image_dir, annotation_file = demo["train"]
    with open(annotation_file) as file:
        content = json.load(file)
    content["images"][1]["width"] = 65
    (tmp_path / "instances.json").write_text(json.dumps(content))
    (tmp_path / "images").mkdir()
    for name in os.listdir(image_dir):
        os.link(os.path.join(image_dir, name), tmp_path / "images" / name)
    os.remove(tmp_path / "images" / "00000.jpg")
    (tmp_path / "images" / "00000.jpg").write_bytes(b"not a jpeg")
    dataset = DetectionDataset(open_coco_folder(str(tmp_path / "images"), str(tmp_path / "instances.json")))
    with caplog.at_level(logging.WARNING):
        assert dataset[0] is None and dataset[1] is None and dataset[2] is not None
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0].startswith(f"Skipping image 1 ({tmp_path / 'images' / '00000.jpg'}): UnidentifiedImageError")
    assert messages[1].endswith("00001.jpg): 64x64 px, annotated as 65x64.")


# ---- Optimisation


def test_parameter_groups_follow_the_authors_recipe(encoder_folder):
    model = tiny_lwdetr(encoder_folder, {0: "a", 1: "b"})
    groups = build_lwdetr_parameter_groups(
        model, learning_rate=1e-4, encoder_learning_rate=1.5e-4, weight_decay=1e-4, layer_decay=0.8,
        component_decay=0.7,
    )  # fmt: skip
    setting = {name: (group["lr"], group["weight_decay"]) for group in groups for name in group["names"]}
    names = [name for group in groups for name in group["names"]]
    assert len(names) == len(set(names)) == sum(1 for p in model.parameters() if p.requires_grad)
    encoder_lr = 1.5e-4 * 0.7**2  # component decay squared on the ViT
    assert setting["vit.embeddings.projection.weight"] == pytest.approx((encoder_lr * 0.8**3, 1e-4))
    assert setting["vit.embeddings.position_embeddings"] == pytest.approx((encoder_lr * 0.8**3, 0.0))
    assert setting["vit.encoder.layer.0.attention.q_proj.weight"] == pytest.approx((encoder_lr * 0.8**2, 1e-4))
    assert setting["vit.encoder.layer.1.attention.q_proj.bias"] == pytest.approx((encoder_lr * 0.8, 0.0))
    assert setting["vit.encoder.layer.1.gamma_2"] == pytest.approx((encoder_lr * 0.8, 0.0))
    assert setting["vit.encoder.layer.1.layernorm_after.weight"] == pytest.approx((encoder_lr * 0.8, 0.0))
    assert setting["model.decoder.layers.0.mlp.fc1.bias"] == pytest.approx((1e-4 * 0.7, 1e-4))
    assert setting["model.backbone.projector.scale_layers.0.layer_norm.bias"] == pytest.approx((1e-4, 1e-4))
    assert setting["class_embed.weight"] == pytest.approx((1e-4, 1e-4))


def test_the_weight_average_follows_the_authors_update_and_swaps_in_and_out(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    start = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    ema = ModelEma(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(4, 2))  # BatchNorm counts a batch: an integer buffer, copied rather than averaged
    ema.update(model)
    torch.testing.assert_close(ema.shadow["0.weight"], 0.9 * start["0.weight"] + 0.1 * model[0].weight.detach())
    assert ema.shadow["1.num_batches_tracked"].item() == 1
    trained = model[0].weight.detach().clone()
    with ema.applied_to(model):
        torch.testing.assert_close(model[0].weight.detach(), ema.shadow["0.weight"])
    torch.testing.assert_close(model[0].weight.detach(), trained)
    ema.save(str(tmp_path / EMA_FILE))
    restored = ModelEma(model, decay=0.9)
    restored.load(str(tmp_path / EMA_FILE))
    torch.testing.assert_close(restored.shadow["0.weight"], ema.shadow["0.weight"], atol=0, rtol=0)


# ---- Evaluation and a run


def test_coco_metrics_from_model_outputs_score_a_perfect_detector_one(demo):
    """Logits and normalised boxes that reproduce the ground truth, fed batch by batch as the Trainer does."""
    split = open_coco_folder(*demo["validation"])
    processor = build_lwdetr_image_processor(tiny_encoder_config(), image_size=64)
    metrics = DetrCocoMetrics(processor, split)
    result = None
    for index, example in enumerate(split.examples):
        logits, boxes = torch.full((1, 5, 3), -10.0), torch.full((1, 5, 4), 0.5)
        for query, annotation in enumerate(example["annotations"]):
            x, y, width, height = annotation["bbox"]
            logits[0, query, annotation["category_id"] - 1] = 10.0
            boxes[0, query] = torch.tensor([(x + width / 2) / 64, (y + height / 2) / 64, width / 64, height / 64])
        labels = [{"image_id": torch.tensor([example["image_id"]]), "orig_size": torch.tensor([64, 64])}]
        last = index == len(split.examples) - 1
        result = metrics(EvalPrediction(predictions=(logits, boxes), label_ids=labels), compute_result=last)
        assert (result is None) != last
    assert result["map"] == pytest.approx(1.0) and result["map_50"] == pytest.approx(1.0)


def train_briefly(encoder_folder, demo, output_dir, max_steps, resume=None):
    train, validation = open_coco_folder(*demo["train"]), open_coco_folder(*demo["validation"])
    torch.manual_seed(0)
    model = tiny_lwdetr(encoder_folder, train.id2label)
    processor = build_lwdetr_image_processor(tiny_encoder_config(), image_size=64)
    groups = build_lwdetr_parameter_groups(model, 1e-3, 1.5e-3, 1e-4, 0.8)
    args = TrainingArguments(
        output_dir, per_device_train_batch_size=2, per_device_eval_batch_size=2, max_steps=max_steps, save_steps=2,
        eval_strategy="steps", eval_steps=2, batch_eval_metrics=True, report_to=[], max_grad_norm=0.1,
        lr_scheduler_type="constant", use_cpu=True, seed=0, disable_tqdm=True, logging_steps=1,
    )  # fmt: skip
    trainer = LwDetrTrainer(
        model=model, args=args, train_dataset=DetectionDataset(train, build_train_transform(64), seed=0),
        eval_dataset=DetectionDataset(validation), data_collator=DetectionCollator(processor),
        compute_metrics=DetrCocoMetrics(processor, validation), optimizers=(torch.optim.AdamW(groups), None),
        ema_decay=0.9,
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_a_run_evaluates_with_coco_metrics_saves_its_average_and_resumes_exactly(encoder_folder, demo, tmp_path):
    full = train_briefly(encoder_folder, demo, str(tmp_path / "full"), max_steps=4)
    evaluations = [entry for entry in full.state.log_history if "eval_map" in entry]
    assert [entry["step"] for entry in evaluations] == [2, 4]
    assert {"eval_map", "eval_map_50", "eval_map_75", "eval_map_small"} <= set(evaluations[-1])
    assert os.path.isfile(tmp_path / "full" / "checkpoint-2" / EMA_FILE)
    # Stopped after step 2, then resumed from its checkpoint: the same weights and the same average at step 4.
    train_briefly(encoder_folder, demo, str(tmp_path / "resumed"), max_steps=2)
    resumed = train_briefly(encoder_folder, demo, str(tmp_path / "resumed"), max_steps=4, resume=True)
    for name, tensor in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, atol=0, rtol=0, msg=name)
    for name, tensor in full.ema_callback.ema.shadow.items():
        torch.testing.assert_close(resumed.ema_callback.ema.shadow[name], tensor, atol=0, rtol=0, msg=name)
    assert [e["eval_map"] for e in resumed.state.log_history if "eval_map" in e] == [
        e["eval_map"] for e in evaluations
    ]
