"""CAEv2Config: the docs/method.md#encoder presets and the errors for combinations the model cannot compute."""

import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_config
from transformers import AutoModelForImageClassification

from caev2_hf import CAEv2Config, CAEv2ForImageClassification, CAEv2ForPreTraining, CAEv2Model


LEGACY = Path(__file__).parent / "fixtures" / "legacy"


@pytest.mark.parametrize(
    ("preset", "width", "depth", "heads", "mlp", "masked", "regressor_depth", "regressor_width"),
    [
        ("tiny", 192, 12, 12, 768, 30, 1, 96),
        ("small", 384, 12, 12, 1536, 49, 1, 384),
        ("base", 768, 12, 12, 3072, 98, 4, 768),
        ("large", 1024, 24, 16, 4096, 98, 4, 1024),
    ],
)
def test_preset_matches_spec_table(preset, width, depth, heads, mlp, masked, regressor_depth, regressor_width):
    config = CAEv2Config.from_preset(preset)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (width, depth, heads)
    assert config.intermediate_size == mlp
    assert config.num_masking_patches == masked
    assert (config.regressor_num_hidden_layers, config.regressor_hidden_size) == (regressor_depth, regressor_width)
    assert config.regressor_intermediate_size == 4 * regressor_width
    assert config.target_hidden_size == config.teacher_config.projection_dim == 512
    assert config.layer_scale_init_value == (1e-5 if preset == "large" else 0.1)


def test_preset_accepts_overrides_and_mask_ratio():
    config = CAEv2Config.from_preset("base", mask_ratio=0.4, loss_type="mse")
    assert config.num_masking_patches == round(0.4 * 196) == 78
    assert config.loss_type == "mse"


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match="base"):
        CAEv2Config.from_preset("huge")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_size": 30}, "image_size=30 is not divisible by patch_size=8"),
        ({"num_attention_heads": 5}, "hidden_size=32 is not divisible by num_attention_heads=5"),
        ({"regressor_num_attention_heads": 3}, "regressor_hidden_size=16 is not divisible"),
        ({"target_hidden_size": 32}, "target_hidden_size=32 differs from the teacher's projection width"),
        ({"loss_type": "l1"}, "loss_type='l1'"),
        ({"mask_strategy": "grid"}, "mask_strategy='grid'"),
        ({"supervise_visible": False, "supervise_masked": False, "supervise_cls": False}, "enable at least one"),
        ({"classifier_pooling": "max"}, "classifier_pooling='max'"),
        ({"image_size": (32, 48)}, "image_size=\\(32, 48\\) must be a positive integer \\(images are square"),
        ({"patch_size": 0}, "patch_size=0 must be a positive integer"),
        ({"drop_path_rate": 1.5}, "drop_path_rate=1.5 must be in \\[0, 1\\)"),
        ({"layer_norm_eps": -1.0}, "layer_norm_eps=-1.0 must be greater than 0"),
        ({"num_channels": 1}, "image_mean=\\[0.485, 0.456, 0.406\\] has 3 values for num_channels=1"),
    ],
)
def test_invalid_combination_names_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_tiny_config(**overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_masking_patches": 16}, "num_masking_patches=16 is outside \\[0, 16\\)"),
        ({"num_masking_patches": -1}, "num_masking_patches=-1"),
        ({"image_size": 64}, "The teacher's patch grid \\(4x4\\) differs from the student's \\(8x8\\)"),
    ],
)
def test_pretraining_refuses_what_only_pretraining_needs(overrides, message):
    """Mask count and teacher grid matter to pretraining only: the config is accepted, the pretraining model is not."""
    config = build_tiny_config(**overrides)
    with pytest.raises(ValueError, match=message):
        CAEv2ForPreTraining(config)


def test_teacher_grid_mismatch_needs_resampling_option():
    teacher = {**build_tiny_config().teacher_config.to_dict(), "patch_size": 4}  # 8x8 grid vs the student's 4x4
    with pytest.raises(ValueError, match="teacher_grid_resampling='bilinear'"):
        build_tiny_config(teacher_config=teacher).validate_for_pretraining()
    build_tiny_config(teacher_config=teacher, teacher_grid_resampling="bilinear").validate_for_pretraining()


def test_classifier_finetuned_at_another_resolution_saves_a_folder_that_loads(tmp_path):
    """A 48-px fine-tune of a 32-px encoder: its teacher grid no longer matches, which only pretraining minds."""
    CAEv2Model(build_tiny_config()).save_pretrained(tmp_path / "encoder")
    model = CAEv2ForImageClassification.from_pretrained(tmp_path / "encoder", image_size=48, num_labels=3).eval()
    assert (model.config.image_size, model.config.num_labels) == (48, 3)
    model.save_pretrained(tmp_path / "finetuned")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "finetuned").eval()
    pixels = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(loaded(pixels).logits, model(pixels).logits)


def test_from_pretrained_overrides_are_checked_and_derived(tmp_path):
    build_tiny_config().save_pretrained(tmp_path)
    assert CAEv2Config.from_pretrained(tmp_path, mask_ratio=0.5).num_masking_patches == 8  # half of 16 patches
    with pytest.raises(ValueError, match="hidden_size=32 is not divisible by num_attention_heads=3"):
        CAEv2Model.from_pretrained(tmp_path, num_attention_heads=3)
    with pytest.raises(ValueError, match="classifier_pooling='max'"):
        CAEv2ForImageClassification.from_pretrained(tmp_path, classifier_pooling="max", num_labels=2)
    teacher_override = CAEv2Config.from_pretrained(tmp_path, teacher_config={"num_hidden_layers": 1}).teacher_config
    assert (teacher_override.num_hidden_layers, teacher_override.hidden_size) == (1, 32)  # only the given field


def test_preset_refuses_a_name_that_is_no_field():
    with pytest.raises(
        ValueError, match="'drop_path_rte' is not a CAEv2Config field \\(did you mean 'drop_path_rate'"
    ):
        CAEv2Config.from_preset("tiny", drop_path_rte=0.0)
    assert CAEv2Config.from_preset("tiny", num_labels=5, attn_implementation="eager").num_labels == 5


def test_config_roundtrip_keeps_teacher_config(tmp_path):
    config = build_tiny_config(loss_type="smooth_l1", supervise_cls=False)
    config.save_pretrained(tmp_path)
    loaded = CAEv2Config.from_pretrained(tmp_path)
    assert loaded.loss_type == "smooth_l1" and loaded.supervise_cls is False
    assert loaded.teacher_config.to_dict() == config.teacher_config.to_dict()
    assert loaded.regressor_hidden_size == 16


def test_teacher_config_refuses_a_key_that_is_no_clip_field(tmp_path):
    message = "teacher_config: 'hidden_sise' is not a CLIPVisionConfig field \\(did you mean 'hidden_size'\\?\\)"
    with pytest.raises(ValueError, match=message):
        CAEv2Config(teacher_config={"hidden_sise": 64})
    with pytest.raises(ValueError, match=message):
        CAEv2Config.from_preset("tiny", teacher_config={"hidden_sise": 64})
    build_tiny_config().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        CAEv2Config.from_pretrained(tmp_path, teacher_config={"hidden_sise": 64})
    with pytest.raises(ValueError, match=message):
        CAEv2Model.from_pretrained(tmp_path, teacher_config={"hidden_sise": 64})


def test_saved_teacher_config_with_keys_transformers_added_still_loads(tmp_path):
    """What a saved config's teacher_config carries besides the CLIP fields (this version's `to_dict`, and keys older
    transformers versions wrote) is transformers' own, not a user's typo: such folders load as before."""
    config = build_tiny_config()
    saved = config.to_dict()
    assert {"_name_or_path", "architectures", "id2label", "model_type"} <= set(saved["teacher_config"])
    saved["teacher_config"].update(torch_dtype="float32", use_bfloat16=False, bad_words_ids=None, pruned_heads={})
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = CAEv2Config.from_pretrained(tmp_path)
    assert loaded.teacher_config.hidden_size == config.teacher_config.hidden_size == 32
    assert (
        CAEv2Config.from_pretrained(tmp_path, teacher_config={"num_hidden_layers": 1}).teacher_config.num_hidden_layers
        == 1
    )
    for folder in sorted((LEGACY / "pooling").iterdir()) + [LEGACY / "backbone"]:
        assert CAEv2Config.from_pretrained(folder).teacher_config.hidden_size == 32
    assert CAEv2Config(**config.to_dict()).teacher_config.to_dict() == config.teacher_config.to_dict()
