"""CAE v2 models: architecture sizes, the numerics of docs/method.md (encoder to loss), the frozen teacher, saving and
loading."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPVisionModelWithProjection

from caev2_hf import CAEv2Config, CAEv2ForImageClassification, CAEv2ForPreTraining, CAEv2Model
from caev2_hf.modeling_caev2 import build_2d_sincos_position_embedding


def build_model(config=None, seed=0, cls=CAEv2ForPreTraining):
    torch.manual_seed(seed)
    return cls(config or build_tiny_config()).eval()


def count_trainable(module):
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)


def pooled_as(model: CAEv2Model, pixel_values: torch.Tensor) -> str:
    """Which feature `pooler_output` is: the normalised [CLS] token or the normalised mean of the patch tokens."""
    with torch.no_grad():
        outputs = model.eval()(pixel_values, output_hidden_states=True)
        last_block = outputs.hidden_states[-1]
        features = {
            "cls": model.layernorm(last_block[:, 0]),
            "mean": model.layernorm(last_block[:, 1:].mean(dim=1)),
        }
    matching = [name for name, feature in features.items() if torch.allclose(outputs.pooler_output, feature)]
    assert len(matching) == 1, matching
    return matching[0]


@pytest.mark.parametrize(
    ("preset", "encoder_count", "pretraining_count"),
    [("tiny", 5_488_896, 5_669_888), ("small", 21_594_624, 23_569_280), ("base", 85_656_576, 114_419_456)],
)
def test_parameter_counts_match_official_architecture(preset, encoder_count, pretraining_count):
    with torch.device("meta"):
        model = CAEv2ForPreTraining(CAEv2Config.from_preset(preset))
    assert count_trainable(model.caev2) == encoder_count
    assert count_trainable(model) == pretraining_count  # fixed sin-cos tables and the frozen teacher excluded


def test_sincos_table_is_row_first_with_zero_cls():
    table = build_2d_sincos_position_embedding(grid_height=3, grid_width=4, dim=8)
    assert table.shape == (13, 8)
    assert torch.equal(table[0], torch.zeros(8))
    row, col, omegas = 1, 2, (1.0, 0.01)  # dim 8 -> 2 frequencies: 1 and 1/10000^(1/2)
    expected = [math.sin(row * w) for w in omegas] + [math.cos(row * w) for w in omegas]
    expected += [math.sin(col * w) for w in omegas] + [math.cos(col * w) for w in omegas]
    torch.testing.assert_close(table[1 + row * 4 + col], torch.tensor(expected), rtol=0, atol=1e-6)


def test_position_tables_are_fixed_buffers_outside_checkpoints():
    model = build_model()
    names = {name for name, _ in model.named_parameters()}
    assert not any("position_embeddings" in name for name in names)
    assert not any("position_embeddings" in key for key in model.state_dict())
    torch.testing.assert_close(
        model.caev2.embeddings.position_embeddings[0], build_2d_sincos_position_embedding(4, 4, 32)
    )
    torch.testing.assert_close(model.regressor.position_embeddings[0], build_2d_sincos_position_embedding(4, 4, 16))


def test_initialisation_follows_official_recipe():
    model = build_model(build_tiny_config(layer_scale_init_value=0.1, regressor_layer_scale_init_value=0.1))
    attention = model.caev2.encoder.layers[0].attention
    fused_bound = math.sqrt(6 / (32 + 3 * 32))  # xavier bound of the official fused (3D, D) qkv
    assert attention.q_proj.weight.abs().max() <= fused_bound
    assert attention.q_proj.weight.abs().max() > 0.8 * fused_bound
    assert torch.equal(attention.q_proj.bias, torch.zeros(32)) and attention.k_proj.bias is None
    assert model.caev2.embeddings.cls_token.abs().max() <= 0.02  # truncated at +-1 std
    assert torch.equal(model.caev2.encoder.layers[1].layer_scale2.lambda1, torch.full((32,), 0.1))
    assert torch.equal(model.head.layernorm.weight, torch.ones(16))


def manual_token_loss(prediction, target, loss_type):
    if loss_type == "cosine":
        return 1 - torch.dot(prediction, target)
    if loss_type == "mse":
        return ((prediction - target) ** 2).mean()
    difference = (prediction - target).abs()
    return torch.where(difference < 1, 0.5 * difference**2, difference - 0.5).mean()


@pytest.mark.parametrize("loss_type", ["cosine", "mse", "smooth_l1"])
@pytest.mark.parametrize(
    "supervision",
    [(True, True, True), (True, False, False), (True, True, False), (False, True, False), (False, False, True)],
)
def test_loss_equals_hand_computation(loss_type, supervision, pixel_values, fixed_mask):
    visible, masked, cls = supervision
    config = build_tiny_config(
        loss_type=loss_type, supervise_visible=visible, supervise_masked=masked, supervise_cls=cls
    )
    model = build_model(config)
    targets = torch.nn.functional.normalize(torch.randn(3, 17, 16), dim=-1)
    outputs = model(pixel_values, bool_masked_pos=fixed_mask, target_features=targets)
    total, count, group_sums = 0.0, 0, {"cls": 0.0, "visible": 0.0, "masked": 0.0}
    for image in range(3):
        visible_ids = [i for i in range(16) if not fixed_mask[image, i]]
        masked_ids = [i for i in range(16) if fixed_mask[image, i]]
        order = [("cls", 0)] + [("visible", 1 + i) for i in visible_ids] + [("masked", 1 + i) for i in masked_ids]
        for position, (group, target_index) in enumerate(order):
            token_loss = manual_token_loss(outputs.logits[image, position], targets[image, target_index], loss_type)
            group_sums[group] += token_loss
            if {"cls": cls, "visible": visible, "masked": masked}[group]:
                total, count = total + token_loss, count + 1
    torch.testing.assert_close(outputs.loss, total / count, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs.cls_loss, group_sums["cls"] / 3, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs.visible_loss, group_sums["visible"] / 30, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs.masked_loss, group_sums["masked"] / 18, rtol=1e-5, atol=1e-6)


def test_default_loss_is_mean_cosine_distance_over_all_tokens(pixel_values, fixed_mask):
    model = build_model()
    outputs = model(pixel_values, bool_masked_pos=fixed_mask)
    cosine = torch.nn.functional.cosine_similarity(outputs.logits, outputs.targets, dim=-1)
    torch.testing.assert_close(outputs.loss, (1 - cosine).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs.logits.norm(dim=-1), torch.ones(3, 17))


def test_targets_are_reordered_cls_visible_masked(pixel_values, fixed_mask):
    """The input `target_features` is in image order; the output `targets` in the predictions' order: two names."""
    model = build_model()
    image_order = torch.arange(3 * 17 * 16, dtype=torch.float32).view(3, 17, 16)
    outputs = model(pixel_values, bool_masked_pos=fixed_mask, target_features=image_order)
    assert "target_features" not in outputs and outputs.targets.shape == image_order.shape
    for image in range(3):
        visible = [1 + i for i in range(16) if not fixed_mask[image, i]]
        masked = [1 + i for i in range(16) if fixed_mask[image, i]]
        expected = torch.nn.functional.normalize(image_order[image, [0] + visible + masked], dim=-1)
        torch.testing.assert_close(outputs.targets[image], expected)


@pytest.mark.parametrize("loss_type", ["cosine", "mse", "smooth_l1"])
def test_given_targets_are_normalised_as_the_authors_do(loss_type, pixel_values, fixed_mask):
    """Cached raw CLIP features (any norm per token) give the loss of the same features L2-normalised."""
    model = build_model(build_tiny_config(loss_type=loss_type)).eval()
    unit = torch.nn.functional.normalize(torch.randn(3, 17, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    scales = torch.rand(3, 17, 1, generator=torch.Generator().manual_seed(2)) * 20 + 0.05
    raw = model(pixel_values, bool_masked_pos=fixed_mask, target_features=unit * scales)
    normalised = model(pixel_values, bool_masked_pos=fixed_mask, target_features=unit)
    for name in ("loss", "visible_loss", "masked_loss", "cls_loss", "targets"):
        torch.testing.assert_close(getattr(raw, name), getattr(normalised, name), rtol=1e-6, atol=1e-6, msg=name)
    assert not torch.allclose((unit * scales).norm(dim=-1), torch.ones(3, 17))  # the raw ones really were not unit


def test_teacher_targets_are_projected_post_norm_tokens(pixel_values):
    model = build_model()
    config = model.config
    mean, std = torch.tensor(config.image_mean).view(1, 3, 1, 1), torch.tensor(config.image_std).view(1, 3, 1, 1)
    clip_mean = torch.tensor(config.teacher_image_mean).view(1, 3, 1, 1)
    clip_std = torch.tensor(config.teacher_image_std).view(1, 3, 1, 1)
    clip_pixels = (pixel_values * std + mean - clip_mean) / clip_std
    clip = model.teacher.model
    hidden = clip(pixel_values=clip_pixels).last_hidden_state
    expected = torch.nn.functional.normalize(clip.visual_projection(clip.vision_model.post_layernorm(hidden)), dim=-1)
    torch.testing.assert_close(model.compute_target_features(pixel_values), expected, rtol=1e-5, atol=1e-5)


def test_teacher_is_in_eval_mode_from_construction_and_loading(tmp_path):
    model = CAEv2ForPreTraining(build_tiny_config())
    assert model.caev2.training and not model.teacher.model.training
    model.save_pretrained(tmp_path)
    assert not CAEv2ForPreTraining.from_pretrained(tmp_path).teacher.model.training


def test_teacher_stays_frozen_in_train_mode(pixel_values, fixed_mask):
    model = build_model().train()
    assert not model.teacher.training and not model.teacher.model.training
    assert model.caev2.training
    model(pixel_values, bool_masked_pos=fixed_mask).loss.backward()
    assert all(parameter.grad is None for parameter in model.teacher.parameters())
    assert all(not parameter.requires_grad for parameter in model.teacher.parameters())
    assert model.caev2.embeddings.cls_token.grad is not None


def test_target_features_skip_the_teacher(pixel_values, fixed_mask, monkeypatch):
    model = build_model()
    monkeypatch.setattr(model.teacher, "forward", lambda *args: pytest.fail("the teacher ran"))
    targets = torch.nn.functional.normalize(torch.randn(3, 17, 16), dim=-1)
    assert model(pixel_values, bool_masked_pos=fixed_mask, target_features=targets).loss > 0


def test_teacher_without_weights_refuses_to_train(pixel_values, fixed_mask):
    model = build_model(build_tiny_config(use_random_teacher=False))
    with pytest.raises(RuntimeError, match="load_teacher"):
        model(pixel_values, bool_masked_pos=fixed_mask)


def test_load_teacher_copies_clip_weights(tmp_path, pixel_values, fixed_mask):
    model = build_model(build_tiny_config(use_random_teacher=False))
    torch.manual_seed(1)
    clip = CLIPVisionModelWithProjection(model.config.teacher_config)
    clip.save_pretrained(tmp_path / "clip")
    model.load_teacher(tmp_path / "clip")
    assert model.teacher.has_weights
    torch.testing.assert_close(model.teacher.model.visual_projection.weight, clip.visual_projection.weight)
    assert torch.isfinite(model(pixel_values, bool_masked_pos=fixed_mask).loss)


def test_load_teacher_rejects_another_architecture(tmp_path):
    model = build_model()
    other = {**model.config.teacher_config.to_dict(), "projection_dim": 8}
    CLIPVisionModelWithProjection(type(model.config.teacher_config)(**other)).save_pretrained(tmp_path / "clip")
    with pytest.raises(ValueError, match="projection_dim: 8 != 16"):
        model.load_teacher(tmp_path / "clip")


def save_tiny_clip(folder, config, seed=1):
    torch.manual_seed(seed)
    clip = CLIPVisionModelWithProjection(config.teacher_config)
    clip.save_pretrained(folder)
    return clip


def test_pretraining_folder_holds_the_teacher_and_its_flag(tmp_path):
    model = build_model(build_tiny_config(use_random_teacher=False))
    clip = save_tiny_clip(tmp_path / "clip", model.config)
    model.load_teacher(tmp_path / "clip")
    model.save_pretrained(tmp_path / "pretraining")
    with safe_open(tmp_path / "pretraining" / "model.safetensors", "pt") as checkpoint:
        saved = {key: checkpoint.get_tensor(key) for key in checkpoint.keys()}
    assert saved["teacher.has_weights"].dtype == torch.bool and bool(saved["teacher.has_weights"])
    for name, tensor in clip.state_dict().items():
        torch.testing.assert_close(saved[f"teacher.model.{name}"], tensor, rtol=0, atol=0)
    assert set(saved) == set(model.state_dict())  # nothing hidden from or added to the state dict
    assert {name for name, _ in model.named_parameters()} <= set(saved)


def test_loaded_teacher_comes_back_without_a_download(tmp_path, pixel_values, fixed_mask, monkeypatch):
    model = build_model(build_tiny_config(use_random_teacher=False))
    save_tiny_clip(tmp_path / "clip", model.config)
    model.load_teacher(tmp_path / "clip")
    model.save_pretrained(tmp_path / "pretraining")
    monkeypatch.setattr(CLIPVisionModelWithProjection, "from_pretrained", lambda *a, **k: pytest.fail("downloaded"))
    loaded = CAEv2ForPreTraining.from_pretrained(tmp_path / "pretraining").eval()
    assert bool(loaded.teacher.has_weights) and not loaded.config.use_random_teacher
    expected = model(pixel_values, bool_masked_pos=fixed_mask)
    actual = loaded(pixel_values, bool_masked_pos=fixed_mask)
    torch.testing.assert_close(actual.targets, expected.targets, rtol=0, atol=0)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=0, atol=0)


def test_folder_whose_teacher_never_received_weights_still_refuses(tmp_path, pixel_values, fixed_mask):
    build_model(build_tiny_config(use_random_teacher=False)).save_pretrained(tmp_path)
    loaded = CAEv2ForPreTraining.from_pretrained(tmp_path)
    assert not bool(loaded.teacher.has_weights)
    with pytest.raises(RuntimeError, match="load_teacher"):
        loaded(pixel_values, bool_masked_pos=fixed_mask)
    targets = torch.nn.functional.normalize(torch.randn(3, 17, 16), dim=-1)
    assert loaded(pixel_values, bool_masked_pos=fixed_mask, target_features=targets).loss > 0


def test_teacher_flag_restored_by_load_state_dict_is_checked_again(tmp_path, pixel_values, fixed_mask):
    model = build_model(build_tiny_config(use_random_teacher=False))
    untrained_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    save_tiny_clip(tmp_path / "clip", model.config)
    model.load_teacher(tmp_path / "clip")
    assert torch.isfinite(model(pixel_values, bool_masked_pos=fixed_mask).loss)
    model.load_state_dict(untrained_state)  # e.g. Accelerate's load_state with a checkpoint of an unloaded teacher
    with pytest.raises(RuntimeError, match="load_teacher"):
        model(pixel_values, bool_masked_pos=fixed_mask)


def test_encoder_export_holds_no_teacher(tmp_path):
    model = build_model()
    model.save_pretrained(tmp_path / "pretraining")
    model.caev2.save_pretrained(tmp_path / "encoder")
    with safe_open(tmp_path / "encoder" / "model.safetensors", "pt") as checkpoint:
        keys = list(checkpoint.keys())
    assert keys and not any("teacher" in key for key in keys)
    encoder, info = CAEv2Model.from_pretrained(tmp_path / "pretraining", output_loading_info=True)
    assert info["unexpected_keys"] == set() and info["missing_keys"] == set()  # teacher.* ignored by design
    encoder.save_pretrained(tmp_path / "encoder_again")
    with safe_open(tmp_path / "encoder_again" / "model.safetensors", "pt") as checkpoint:
        assert sorted(checkpoint.keys()) == sorted(keys)


def test_pretraining_checkpoint_loads_into_encoder_and_classifier(tmp_path, pixel_values, fixed_mask):
    model = build_model()
    with torch.no_grad():
        model.caev2.layernorm.weight.uniform_(0.5, 1.5)  # as after training, so a fresh norm would show
        model.caev2.layernorm.bias.uniform_(-0.5, 0.5)
    model.save_pretrained(tmp_path)
    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(encoder, CAEv2Model)
    expected = model.caev2(pixel_values, bool_masked_pos=fixed_mask).last_hidden_state
    torch.testing.assert_close(encoder(pixel_values, bool_masked_pos=fixed_mask).last_hidden_state, expected)
    classifier, info = CAEv2ForImageClassification.from_pretrained(tmp_path, num_labels=4, output_loading_info=True)
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"} and info["unexpected_keys"] == set()
    # Mean pooling: the pretrained final norm, under its own key, normalises the mean of the last block's patches.
    torch.testing.assert_close(classifier.caev2.layernorm.weight, model.caev2.layernorm.weight, rtol=0, atol=0)
    torch.testing.assert_close(classifier.caev2.layernorm.bias, model.caev2.layernorm.bias, rtol=0, atol=0)
    classifier.eval()
    last_block = model.caev2.encoder(model.caev2.embeddings(pixel_values)).last_hidden_state
    norm = model.caev2.layernorm
    pooled = torch.nn.functional.layer_norm(last_block[:, 1:].mean(dim=1), (32,), norm.weight, norm.bias, 1e-6)
    torch.testing.assert_close(classifier(pixel_values).logits, classifier.classifier(pooled))


def test_saved_folder_carries_image_processor(tmp_path):
    build_model(cls=CAEv2Model).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert processor.size == {"shortest_edge": round(32 * 256 / 224)}
    assert processor.crop_size == {"height": 32, "width": 32}
    assert list(processor.image_mean) == [0.485, 0.456, 0.406] and processor.resample == 3


def test_eager_and_sdpa_attention_agree(pixel_values, fixed_mask):
    eager = build_model(build_tiny_config(attn_implementation="eager"))
    sdpa = build_model(build_tiny_config(attn_implementation="sdpa"))
    assert sdpa.config._attn_implementation == "sdpa"
    torch.testing.assert_close(
        sdpa(pixel_values, bool_masked_pos=fixed_mask).logits,
        eager(pixel_values, bool_masked_pos=fixed_mask).logits,
        rtol=0,
        atol=1e-5,
    )


def test_sample_outputs_do_not_depend_on_batchmates(pixel_values, fixed_mask):
    model = build_model()
    batch = model(pixel_values, bool_masked_pos=fixed_mask).logits
    alone = model(pixel_values[1:2], bool_masked_pos=fixed_mask[1:2]).logits
    torch.testing.assert_close(alone[0], batch[1], rtol=1e-5, atol=1e-6)


def test_mask_counts_that_differ_per_image_raise(pixel_values, fixed_mask):
    uneven = fixed_mask.clone()
    uneven[0, 15] = True
    with pytest.raises(ValueError, match="different number of patches per image"):
        build_model()(pixel_values, bool_masked_pos=uneven)


def test_mask_count_different_from_config_raises(pixel_values):
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[:, :4] = True
    with pytest.raises(ValueError, match="config.num_masking_patches is 6"):
        build_model(cls=CAEv2Model)(pixel_values, bool_masked_pos=mask)


@pytest.mark.parametrize(
    ("batch", "patches", "dtype", "message"),
    [
        (1, 16, torch.bool, "expected \\(batch_size, num_patches\\) = \\(3, 16\\)"),  # one mask for three images
        (3, 15, torch.bool, "bool_masked_pos has shape \\(3, 15\\)"),  # one patch short: it would be dropped
        (3, 17, torch.bool, "bool_masked_pos has shape \\(3, 17\\)"),
        (3, 16, torch.int64, "dtype torch.int64: pass a torch.bool mask"),  # a sum of 2s could pass the count check
    ],
)
@pytest.mark.parametrize("cls", [CAEv2Model, CAEv2ForPreTraining])
def test_mask_of_wrong_shape_or_dtype_raises(cls, batch, patches, dtype, message, pixel_values):
    mask = torch.zeros(batch, patches, dtype=dtype)
    mask[:, :6] = 1
    with pytest.raises(ValueError, match=message):
        build_model(cls=cls)(pixel_values, bool_masked_pos=mask)


@pytest.mark.parametrize("cls", [CAEv2Model, CAEv2ForImageClassification, CAEv2ForPreTraining])
def test_wrong_channel_count_names_the_config_field(cls):
    with pytest.raises(ValueError, match="expected \\(batch_size, 3, height, width\\), with config.num_channels=3"):
        build_model(cls=cls)(torch.randn(2, 4, 32, 32))


def test_pretraining_refuses_another_resolution(pixel_values):
    """The mask, the regressor's positions and the teacher's targets all follow config.image_size."""
    with pytest.raises(ValueError, match="Pretraining takes 32x32 images \\(config.image_size\\), got .*48, 48"):
        build_model()(torch.randn(2, 3, 48, 48), interpolate_pos_encoding=True)


def test_missing_mask_draws_exact_random_count(pixel_values):
    outputs = build_model()(pixel_values)
    assert outputs.bool_masked_pos.sum(dim=1).tolist() == [6, 6, 6]


def test_gradient_checkpointing_gives_same_gradients(pixel_values, fixed_mask):
    plain, checkpointed = build_model(), build_model()
    checkpointed.gradient_checkpointing_enable()
    for model in (plain, checkpointed):
        model.train()
        model(pixel_values, bool_masked_pos=fixed_mask).loss.backward()
    for (name, parameter), other in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        if parameter.grad is not None:
            torch.testing.assert_close(other.grad, parameter.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_other_resolution_uses_exact_table_of_its_grid():
    encoder = build_model(cls=CAEv2Model)
    images = torch.randn(1, 3, 48, 48)
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        encoder(images)
    outputs = encoder(images, interpolate_pos_encoding=True)
    assert outputs.last_hidden_state.shape == (1, 37, 32)
    table = encoder.embeddings.position_table(48, 48, interpolate_pos_encoding=True)
    torch.testing.assert_close(table[0], build_2d_sincos_position_embedding(6, 6, 32))


def test_masked_encoding_equals_encoding_only_visible_tokens(pixel_values, fixed_mask):
    encoder = build_model(cls=CAEv2Model)
    masked_output = encoder(pixel_values[:1], bool_masked_pos=fixed_mask[:1]).last_hidden_state
    assert masked_output.shape == (1, 11, 32)
    embeddings = encoder.embeddings(pixel_values[:1])
    visible = embeddings[:, [0] + [1 + i for i in range(6, 16)]]
    hidden = encoder.encoder(visible).last_hidden_state
    torch.testing.assert_close(masked_output, encoder.layernorm(hidden))


def test_output_hidden_states_and_attentions(pixel_values):
    encoder = build_model(build_tiny_config(attn_implementation="eager"), cls=CAEv2Model)
    outputs = encoder(pixel_values, output_hidden_states=True, output_attentions=True)
    assert len(outputs.hidden_states) == 3 and len(outputs.attentions) == 2
    torch.testing.assert_close(outputs.attentions[0].sum(dim=-1), torch.ones(3, 4, 17))
    torch.testing.assert_close(outputs.pooler_output, outputs.last_hidden_state[:, 0])


def test_teacher_targets_resampled_to_student_grid():
    teacher = {**build_tiny_config().teacher_config.to_dict(), "patch_size": 4}
    model = build_model(build_tiny_config(teacher_config=teacher, teacher_grid_resampling="bilinear"))
    targets = model.compute_target_features(torch.randn(2, 3, 32, 32))
    assert targets.shape == (2, 17, 16)
    torch.testing.assert_close(targets.norm(dim=-1), torch.ones(2, 17))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_classifier_loss_is_cross_entropy(pooling, pixel_values):
    model = build_model(build_tiny_config(classifier_pooling=pooling, num_labels=5), cls=CAEv2ForImageClassification)
    labels = torch.tensor([0, 3, 4])
    outputs = model(pixel_values, labels=labels)
    torch.testing.assert_close(outputs.loss, torch.nn.functional.cross_entropy(outputs.logits, labels))
    if pooling == "mean":
        assert 0 < model.classifier.weight.abs().max() <= 5 * 0.02 * 0.001  # std 0.02 scaled by 0.001


def test_finetuned_folder_loads_into_the_encoder_with_the_classifiers_pooling(tmp_path, pixel_values):
    """AutoModel (or the feature-extraction pipeline) on a fine-tuned folder gives the features its head was
    trained on: the normalised mean of the patch tokens, not the [CLS] token."""
    encoder_config = build_tiny_config(num_labels=3)  # no head chosen: a pretrained encoder's config
    assert encoder_config.classifier_pooling is None
    classifier = build_model(encoder_config, cls=CAEv2ForImageClassification)
    assert encoder_config.classifier_pooling is None  # the caller's config is left as it was
    assert classifier.config.classifier_pooling == "mean" and pooled_as(classifier.caev2, pixel_values) == "mean"
    classifier.save_pretrained(tmp_path / "finetuned")
    encoder = AutoModel.from_pretrained(tmp_path / "finetuned").eval()
    assert pooled_as(encoder, pixel_values) == "mean"
    expected = classifier.caev2(pixel_values)
    torch.testing.assert_close(encoder(pixel_values).pooler_output, expected.pooler_output)
    torch.testing.assert_close(encoder(pixel_values).last_hidden_state, expected.last_hidden_state)
    # A pretrained encoder keeps the [CLS] feature of the linear probe.
    assert pooled_as(build_model(encoder_config, cls=CAEv2Model), pixel_values) == "cls"
    assert pooled_as(CAEv2ForPreTraining(encoder_config).caev2, pixel_values) == "cls"


def test_pretraining_refuses_a_fine_tuned_classifiers_pooling():
    """Mean pooling leaves the last block's tokens unnormalised, which pretraining's head does not expect."""
    with pytest.raises(ValueError, match=r"pretrain with classifier_pooling=None"):
        CAEv2ForPreTraining(build_tiny_config(classifier_pooling="mean"))
    CAEv2ForPreTraining(build_tiny_config(classifier_pooling="cls"))  # a probe's config: the same encoder


def test_linear_probe_head_needs_two_images_per_training_batch(pixel_values):
    model = build_model(build_tiny_config(classifier_pooling="cls", num_labels=3), cls=CAEv2ForImageClassification)
    model.train()
    with pytest.raises(ValueError, match="train with batches of 2 or more .*dataloader_drop_last=True"):
        model(pixel_values[:1], labels=torch.tensor([1]))
    assert model.eval()(pixel_values[:1]).logits.shape == (1, 3)  # evaluation uses the running statistics


def test_folder_saved_before_the_teacher_was_kept_reports_it_missing_and_refuses(tmp_path, pixel_values, fixed_mask):
    build_model(build_tiny_config(use_random_teacher=False)).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file(
        {key: value for key, value in weights.items() if not key.startswith("teacher.")},
        tmp_path / "model.safetensors",
        metadata={"format": "pt"},
    )
    loaded, info = CAEv2ForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert (
        "teacher.has_weights" in info["missing_keys"]
        and "teacher.model.visual_projection.weight" in info["missing_keys"]
    )
    assert not bool(loaded.teacher.has_weights)
    with pytest.raises(RuntimeError, match="load_teacher"):
        loaded(pixel_values, bool_masked_pos=fixed_mask)


SAVED_CONFIGS = Path(__file__).parent / "fixtures" / "legacy" / "pooling"  # tests/fixtures/make_legacy_fixtures.py


@pytest.mark.parametrize(
    ("folder", "encoder_pooling", "classifier_pooling"),
    [("pretraining", "cls", "mean"), ("final", "cls", "mean"), ("finetuned", "mean", "mean"), ("probe", "cls", "cls")],
)
def test_configs_saved_by_earlier_code_pool_as_they_did(folder, encoder_pooling, classifier_pooling, pixel_values):
    """A pretraining run's folders, a fine-tuned and a probed classifier, saved before pooling had one owner: the
    encoder (AutoModel) gives the feature it gave then, a classifier built on the folder takes the same head."""
    config = AutoConfig.from_pretrained(SAVED_CONFIGS / folder)
    assert "use_mean_pooling" not in config.to_dict()  # saved again, the one field says it
    assert CAEv2Config.from_dict(config.to_dict()).classifier_pooling == config.classifier_pooling
    assert pooled_as(AutoModel.from_config(config), pixel_values) == encoder_pooling
    classifier = CAEv2ForImageClassification(config).eval()
    assert pooled_as(classifier.caev2, pixel_values) == classifier_pooling
    assert isinstance(classifier.pooler, torch.nn.Identity) == (classifier_pooling == "mean")
    if folder == "pretraining":
        CAEv2ForPreTraining(AutoConfig.from_pretrained(SAVED_CONFIGS / folder))  # still a valid pretraining config


EARLIEST_CONFIGS = SAVED_CONFIGS.parent / "pooling_default_mean"  # tests/fixtures/make_earliest_pooling_fixtures.py


@pytest.mark.parametrize(
    ("folder", "encoder_pooling"),
    [("pretraining", "cls"), ("final", "cls"), ("finetuned", "mean"), ("finetuned-encoder", "mean"), ("probe", "cls")],
)
def test_configs_saved_before_use_mean_pooling_existed_pool_by_what_the_folder_is(folder, encoder_pooling, tmp_path):
    """Earlier code wrote `classifier_pooling: "mean"` (its default) into every config and no `use_mean_pooling`; its
    encoder gave [CLS] whatever the field said. A pretraining run's folders still give [CLS] through AutoModel; a
    classifier's folder, or its encoder saved alone, gives the feature its head was trained on."""
    config = AutoConfig.from_pretrained(EARLIEST_CONFIGS / folder)
    saved = json.loads((EARLIEST_CONFIGS / folder / "config.json").read_text())
    assert "use_mean_pooling" not in saved and saved["classifier_pooling"] == ("cls" if folder == "probe" else "mean")
    torch.manual_seed(0)
    model = AutoModel.from_config(config).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    assert pooled_as(model, pixel_values) == encoder_pooling
    with torch.no_grad():
        outputs = model(pixel_values, output_hidden_states=True)
        last_block = outputs.hidden_states[-1]
        expected = last_block[:, 0] if encoder_pooling == "cls" else last_block[:, 1:].mean(dim=1)
        torch.testing.assert_close(outputs.pooler_output, model.layernorm(expected), rtol=0, atol=0)
    model.save_pretrained(tmp_path)  # saved again: the same pooling, in today's terms
    assert pooled_as(AutoModel.from_pretrained(tmp_path), pixel_values) == encoder_pooling
    assert (
        CAEv2Config.from_pretrained(EARLIEST_CONFIGS / folder, classifier_pooling="mean").classifier_pooling == "mean"
    )
