"""CAEv2Config: the docs/method.md#encoder presets and the errors for combinations the model cannot compute."""

import pytest
from conftest import build_tiny_config

from caev2_hf import CAEv2Config


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
        ({"num_masking_patches": 16}, "num_masking_patches=16 is outside \\[0, 16\\)"),
        ({"num_masking_patches": -1}, "num_masking_patches=-1"),
        ({"target_hidden_size": 32}, "target_hidden_size=32 differs from the teacher's projection width"),
        ({"loss_type": "l1"}, "loss_type='l1'"),
        ({"mask_strategy": "grid"}, "mask_strategy='grid'"),
        ({"supervise_visible": False, "supervise_masked": False, "supervise_cls": False}, "enable at least one"),
        ({"classifier_pooling": "max"}, "classifier_pooling='max'"),
    ],
)
def test_invalid_combination_names_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_tiny_config(**overrides)


def test_teacher_grid_mismatch_needs_resampling_option():
    teacher = {**build_tiny_config().teacher_config.to_dict(), "patch_size": 4}  # 8x8 grid vs the student's 4x4
    with pytest.raises(ValueError, match="teacher_grid_resampling='bilinear'"):
        build_tiny_config(teacher_config=teacher)
    assert build_tiny_config(teacher_config=teacher, teacher_grid_resampling="bilinear").teacher_grid_resampling


def test_config_roundtrip_keeps_teacher_config(tmp_path):
    config = build_tiny_config(loss_type="smooth_l1", supervise_cls=False)
    config.save_pretrained(tmp_path)
    loaded = CAEv2Config.from_pretrained(tmp_path)
    assert loaded.loss_type == "smooth_l1" and loaded.supervise_cls is False
    assert loaded.teacher_config.to_dict() == config.teacher_config.to_dict()
    assert loaded.regressor_hidden_size == 16
