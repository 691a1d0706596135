"""Mask R-CNN on a CAE v2 encoder (issue 24, phase 1): shapes through torchvision's heads, losses and gradients,
inference outputs, the authors' GIoU box loss and aligned RoIAlign, weights from an encoder folder, refusals, layer
decay and the 1x schedule. Tiny encoders (4 blocks of width 32, patch 8) and narrow heads keep it on the CPU."""

import inspect
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_tiny_config
from safetensors.torch import load_file
from torchvision.ops import MultiScaleRoIAlign, generalized_box_iou, roi_align
from transformers import ViTConfig

from caev2_hf import CAEv2ForPreTraining, CAEv2Model
from caev2_hf.evaluation.detection.maskrcnn import (
    AlignedMultiScaleRoIAlign,
    CAEv2FeaturePyramid,
    build_mask_rcnn,
    build_step_schedule,
    load_encoder,
)
from caev2_hf.optim import build_layer_decay_optimizer


REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 4  # 3 object classes + background
LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def tiny_detector(**overrides):
    torch.manual_seed(0)
    settings = {"min_size": (64,), "max_size": 128, "fpn_channels": 16, **overrides}
    return build_mask_rcnn(build_tiny_config(num_hidden_layers=4), NUM_CLASSES, **settings)


def images_and_targets():
    """Two images of different shapes, each with two boxes (classes 1 and 3) and their rectangular masks."""
    generator = torch.Generator().manual_seed(0)
    images, targets = [], []
    for height, width in ((64, 96), (80, 64)):
        boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [10.0, 12.0, 30.0, 60.0]])
        masks = torch.zeros(2, height, width, dtype=torch.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist(), strict=True):
            mask[y1:y2, x1:x2] = 1
        images.append(torch.rand(3, height, width, generator=generator))
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 3]), "masks": masks})
    return images, targets


# ---- Shapes


@pytest.mark.parametrize(("height", "width"), [(64, 64), (64, 96), (96, 64), (160, 96)])
def test_pyramid_gives_strides_4_to_64_for_several_sizes(height, width):
    torch.manual_seed(0)
    pyramid = CAEv2FeaturePyramid(load_encoder(build_tiny_config(num_hidden_layers=4), 0.0, False, None, 64)[0], 16)
    features = pyramid(torch.randn(2, 3, height, width))
    assert list(features) == ["0", "1", "2", "3", "pool"]
    expected = [(2, 16, height // s, width // s) for s in (4, 8, 16, 32)] + [
        (2, 16, math.ceil(height / 64), math.ceil(width / 64))
    ]
    assert [tuple(feature.shape) for feature in features.values()] == expected


def test_padded_batch_of_two_sizes_feeds_rpn_and_roi_heads_with_matching_shapes():
    model = tiny_detector(min_size=(64,)).eval()
    images, targets = images_and_targets()
    batch, _ = model.transform(images, targets)
    assert batch.image_sizes == [(64, 96), (80, 64)]  # shorter sides already 64: not resized
    assert tuple(batch.tensors.shape) == (2, 3, 96, 96)  # padded to multiples of 32
    features = model.backbone(batch.tensors)
    grids = [(96 // s, 96 // s) for s in (4, 8, 16, 32)] + [(2, 2)]
    assert [tuple(feature.shape[-2:]) for feature in features.values()] == grids
    objectness, deltas = model.rpn.head(list(features.values()))
    assert [tuple(o.shape) for o in objectness] == [(2, 3, *grid) for grid in grids]  # 3 ratios per place
    assert [tuple(d.shape) for d in deltas] == [(2, 12, *grid) for grid in grids]
    anchors = model.rpn.anchor_generator(batch, list(features.values()))
    assert [len(a) for a in anchors] == [3 * sum(h * w for h, w in grids)] * 2
    boxes = [target["boxes"] for target in targets]
    heads = model.roi_heads
    box_features = heads.box_roi_pool(features, boxes, batch.image_sizes)
    assert tuple(box_features.shape) == (4, 16, 7, 7)
    class_logits, box_regression = heads.box_predictor(heads.box_head(box_features))
    assert (tuple(class_logits.shape), tuple(box_regression.shape)) == ((4, NUM_CLASSES), (4, 4 * NUM_CLASSES))
    mask_features = heads.mask_roi_pool(features, boxes, batch.image_sizes)
    assert tuple(heads.mask_predictor(heads.mask_head(mask_features)).shape) == (4, NUM_CLASSES, 28, 28)


# ---- Training and inference


@pytest.mark.parametrize("box_loss", ["giou", "smooth_l1"])
def test_training_gives_five_finite_losses_and_a_gradient_to_every_parameter(box_loss):
    model = tiny_detector(box_loss=box_loss).train()
    images, targets = images_and_targets()
    losses = model(images, targets)
    assert set(losses) == LOSSES
    assert all(torch.isfinite(loss) and loss > 0 for loss in losses.values()), losses
    sum(losses.values()).backward()
    without = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert without == []
    assert all(torch.isfinite(parameter.grad).all() for parameter in model.parameters())
    for block in model.encoder.encoder.layers:  # the loss reaches every encoder block
        assert block.mlp.fc1.weight.grad.abs().sum() > 0


def test_an_image_without_objects_trains_with_finite_losses():
    model = tiny_detector().train()
    images, targets = images_and_targets()
    height, width = images[1].shape[-2:]
    targets[1] = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, height, width, dtype=torch.uint8),
    }
    losses = model(images, targets)
    assert set(losses) == LOSSES and all(torch.isfinite(loss) for loss in losses.values()), losses
    sum(losses.values()).backward()


def test_evaluation_returns_boxes_labels_scores_and_masks_at_each_image_size():
    model = tiny_detector().eval()
    images, _ = images_and_targets()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for output, image in zip(outputs, images, strict=True):
        height, width = image.shape[-2:]
        count = len(output["boxes"])
        assert 0 < count <= 100
        assert set(output) == {"boxes", "labels", "scores", "masks"}
        assert tuple(output["masks"].shape) == (count, 1, height, width)
        assert ((output["labels"] >= 1) & (output["labels"] < NUM_CLASSES)).all()
        assert ((output["scores"] >= 0.05) & (output["scores"] <= 1)).all()  # the authors' score threshold
        assert (output["boxes"][:, 2] <= width).all() and (output["boxes"][:, 3] <= height).all()
        assert ((output["masks"] >= 0) & (output["masks"] <= 1)).all()


def test_box_coordinates_stay_float32_under_bf16_autocast():
    model = tiny_detector()
    images, targets = images_and_targets()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        anchors = model.rpn.anchor_generator(batch, list(features.values()))
        model.eval()
        with torch.no_grad():
            outputs = model(images)
        model.train()
        losses = model(images, targets)
    assert {feature.dtype for feature in features.values()} == {torch.float32}
    assert {anchor.dtype for anchor in anchors} == {torch.float32}  # torchvision takes the features' dtype
    assert {output["boxes"].dtype for output in outputs} == {torch.float32}
    assert all(torch.isfinite(loss) for loss in losses.values()), losses


def test_giou_box_loss_is_ten_times_one_minus_giou_over_all_sampled_rois():
    heads = tiny_detector().roi_heads
    proposal = torch.tensor([[10.0, 10.0, 50.0, 30.0], [0.0, 0.0, 8.0, 8.0]])
    ground_truth = torch.tensor([[20.0, 0.0, 60.0, 40.0], [0.0, 0.0, 8.0, 8.0]])
    regression = torch.zeros(2, 4 * NUM_CLASSES)  # zero deltas: the prediction is the proposal itself
    labels = [torch.tensor([2, 0])]  # one positive (class 2), one background RoI
    targets = heads.box_coder.encode_single(ground_truth, proposal)  # as torchvision's sampling gives them
    loss = heads.giou_box_loss(regression, [proposal], labels, [targets])
    giou = generalized_box_iou(proposal[:1], ground_truth[:1])[0, 0]
    # by hand: intersection 30 x 20 = 600, union 800 + 1600 - 600 = 1800, hull 50 x 40 = 2000
    torch.testing.assert_close(giou, torch.tensor(600 / 1800 - 200 / 2000))
    torch.testing.assert_close(loss, 10 * (1 - giou) / 2)


def test_pooler_without_alignment_equals_torchvisions_and_aligned_reads_the_mmdet_level():
    generator = torch.Generator().manual_seed(0)
    features = {
        name: torch.randn(1, 4, 256 // s, 256 // s, generator=generator)
        for name, s in zip("0123", (4, 8, 16, 32), strict=True)
    }
    boxes = [torch.tensor([[3.0, 5.0, 30.0, 41.0], [10.0, 7.0, 120.0, 130.0], [0.0, 2.0, 250.0, 240.0]])]
    reference = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio=0)
    expected = reference(features, boxes, [(256, 256)])
    torch.testing.assert_close(AlignedMultiScaleRoIAlign(7, aligned=False)(features, boxes, [(256, 256)]), expected)
    pooler = AlignedMultiScaleRoIAlign(7)
    assert pooler.level_of(boxes[0]).tolist() == [0, 1, 2]  # sides 31, 115, 245 against 56, 112, 224
    aligned = pooler(features, boxes, [(256, 256)])
    rois = torch.cat([torch.zeros(3, 1), boxes[0]], dim=1)
    for index, (name, stride) in enumerate(zip("012", (4, 8, 16), strict=True)):
        direct = roi_align(features[name], rois[index : index + 1], 7, 1 / stride, 0, aligned=True)
        torch.testing.assert_close(aligned[index : index + 1], direct)
    assert not torch.allclose(aligned, expected)


# ---- Weights


@pytest.mark.parametrize("head", [CAEv2ForPreTraining, CAEv2Model])
def test_encoder_weights_equal_the_folders_and_the_rest_starts_fresh(tmp_path, head):
    torch.manual_seed(0)
    head(build_tiny_config(num_hidden_layers=4)).save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    prefix = "caev2." if head is CAEv2ForPreTraining else ""
    backbone, message = load_encoder(str(tmp_path), 0.1, True, None, 64)
    state = backbone.state_dict()
    loaded = [name for name in state if prefix + name in saved]
    for name in loaded:
        torch.testing.assert_close(state[name], saved[prefix + name], rtol=0, atol=0)
    fresh = sorted(set(state) - set(loaded))
    assert fresh and all(name.startswith("fpn") or name.endswith("relative_position_bias_table") for name in fresh)
    assert f"all {len(loaded)} encoder tensors loaded" in message and "4 relative position bias tables" in message
    for block in backbone.encoder.layers:  # zero at init, as the authors'
        assert block.relative_position_bias.relative_position_bias_table.abs().sum() == 0
    model = build_mask_rcnn(str(tmp_path), NUM_CLASSES, min_size=(64,), max_size=128, fpn_channels=16)
    for name, tensor in model.encoder.state_dict().items():
        if name in loaded:
            torch.testing.assert_close(tensor, saved[prefix + name], rtol=0, atol=0)
    assert model.encoder.config.drop_path_rate == 0.1 and not model.encoder.config.backbone_relative_position_bias


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"num_classes": 1}, "counts the background"),
        ({"min_size": (16, 64)}, "at least 32 px"),
        ({"max_size": 48}, "below the largest min_size"),
        ({"box_loss": "l1"}, "choose one of"),
        ({"out_indices": [2, 3, 4]}, "needs 4 encoder stages"),
    ],
)
def test_bad_geometry_is_refused_in_one_line(settings, words):
    arguments = {"num_classes": NUM_CLASSES, "min_size": (64,), "max_size": 128, **settings}
    with pytest.raises(ValueError, match=words) as error:
        build_mask_rcnn(build_tiny_config(num_hidden_layers=4), **arguments)
    assert "\n" not in str(error.value)


def test_a_folder_of_another_model_is_refused(tmp_path):
    ViTConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not CAE v2"):
        build_mask_rcnn(str(tmp_path), NUM_CLASSES)


# ---- Optimisation


def test_layer_decay_groups_scale_each_block_and_leave_the_detector_at_full_lr():
    model = tiny_detector()  # 4 blocks, decay 0.5: embeddings 0.5**5, block i 0.5**(4 - i), all else 1
    optimizer = build_layer_decay_optimizer(model, learning_rate=1.0, weight_decay=0.05, layer_decay=0.5, num_layers=4)
    by_parameter = {
        id(p): (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for p in group["params"]
    }
    found = {name: by_parameter[id(parameter)] for name, parameter in model.named_parameters()}
    expected = {
        "backbone.body.embeddings.cls_token": (1 / 32, 0.05),  # 3-D: decays, as in the authors' constructor
        "backbone.body.embeddings.patch_embeddings.projection.weight": (1 / 32, 0.05),
        "backbone.body.embeddings.patch_embeddings.projection.bias": (1 / 32, 0.0),
        "backbone.body.encoder.layers.0.attention.q_proj.weight": (1 / 16, 0.05),
        "backbone.body.encoder.layers.1.layer_scale1.lambda1": (1 / 8, 0.0),
        "backbone.body.encoder.layers.2.layernorm_before.weight": (1 / 4, 0.0),
        "backbone.body.encoder.layers.3.mlp.fc2.weight": (1 / 2, 0.05),
        "backbone.body.fpn1.0.weight": (1.0, 0.05),
        "backbone.fpn.inner_blocks.0.0.weight": (1.0, 0.05),
        "rpn.head.conv.0.0.bias": (1.0, 0.0),
        "roi_heads.box_head.0.1.weight": (1.0, 0.0),  # BatchNorm
        "roi_heads.box_predictor.bbox_pred.weight": (1.0, 0.05),
        "roi_heads.mask_predictor.mask_fcn_logits.weight": (1.0, 0.05),
    }
    assert {name: found[name] for name in expected} == expected  # powers of 2: exact
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(found)  # every parameter once
    assert {group["lr"] for group in optimizer.param_groups} == {1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0}


def test_step_schedule_warms_up_linearly_then_drops_tenfold_at_each_milestone():
    # mmcv's rule, by hand: 500 warmup steps from 0.001, milestones at steps 900 and 1100 (epochs 9 and 11 of 100 steps)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = build_step_schedule(optimizer, 500, [900, 1100])
    factors = []
    for _ in range(1200):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = {0: 0.001, 250: 0.001 + 0.999 * 0.5, 499: 0.001 + 0.999 * 499 / 500, 500: 1.0, 899: 1.0, 900: 0.1}
    expected |= {1099: 0.1, 1100: 0.01, 1199: 0.01}
    assert {step: factors[step] for step in expected} == pytest.approx(expected, rel=1e-5)
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = build_step_schedule(optimizer, 0, [2])  # no warmup: the full lr from the first step
    factors = []
    for _ in range(3):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert factors == pytest.approx([1.0, 1.0, 0.1])


def test_schedule_keeps_each_layer_decay_group_at_its_own_scale():
    model = tiny_detector()
    optimizer = build_layer_decay_optimizer(
        model, learning_rate=2e-4, weight_decay=0.05, layer_decay=0.5, num_layers=4
    )
    schedule = build_step_schedule(optimizer, 2, [3])
    rates = []
    for _ in range(4):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    scales = [group["lr_scale"] for group in optimizer.param_groups]
    for rate, factor in zip(rates, (0.001, 0.5005, 1.0, 0.1), strict=True):
        torch.testing.assert_close(rate, [2e-4 * factor * scale for scale in scales])


# ---- Configs


@pytest.mark.parametrize(("size", "drop_path_rate"), [("small", 0.1), ("base", 0.2)])
def test_coco_configs_build_the_authors_detector(size, drop_path_rate):
    config = yaml.safe_load((REPO_ROOT / "configs" / f"maskrcnn-vit-{size}-1x.yaml").read_text())
    accepted = set(inspect.signature(build_mask_rcnn).parameters) - {"encoder"}
    settings = {key: config[key] for key in accepted if key in config}
    assert settings["min_size"] == list(range(480, 801, 32)) and settings["max_size"] == 1333
    assert settings["drop_path_rate"] == drop_path_rate and "num_classes" not in settings  # from the data: 81
    encoder = build_tiny_config(num_hidden_layers=12, patch_size=16, image_size=224)
    model = build_mask_rcnn(encoder, num_classes=81, **settings)
    assert model.encoder.config.out_indices == [4, 6, 8, 12]
    assert model.roi_heads.box_loss == "giou" and not model.encoder.config.backbone_relative_position_bias
    assert (config["learning_rate"], config["layer_decay"], config["weight_decay"]) == (3e-4, 0.75, 0.05)
