"""CAEv2Backbone: feature maps of any input size, the authors' segmentation options, loading, saving, remote code."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import BLOCK_CAEV2_HF, build_tiny_config
from safetensors.torch import load_file
from transformers import AutoBackbone, UperNetConfig, UperNetForSemanticSegmentation

from caev2_hf import CAEv2Backbone, CAEv2Config, CAEv2ForPreTraining, CAEv2Model
from caev2_hf.configuration_caev2 import default_backbone_out_indices
from caev2_hf.modeling_caev2 import build_2d_sincos_position_embedding
from caev2_hf.modeling_caev2_backbone import CAEv2RelativePositionBias


def backbone_config(**overrides) -> CAEv2Config:
    """4 blocks of width 32 on 32 px images with patch 8 (a 4x4 grid); the neck's strides 4 to 32."""
    return build_tiny_config(num_hidden_layers=4, **overrides)


def random_bias_tables(backbone: CAEv2Backbone) -> None:
    """Non-zero relative position biases, so that they show in the outputs."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in backbone.encoder.layers:
            table = layer.relative_position_bias.relative_position_bias_table
            table.copy_(torch.randn(table.shape, generator=generator))


def test_default_out_indices_follow_the_authors_blocks():
    assert default_backbone_out_indices(12) == [4, 6, 8, 12]  # their 0-based out_indices [3, 5, 7, 11]
    assert default_backbone_out_indices(24) == [8, 12, 16, 24]  # ViT-L: [7, 11, 15, 23]
    assert default_backbone_out_indices(4) == [1, 2, 3, 4]
    config = CAEv2Config.from_preset("base")
    assert config.out_features == ["stage4", "stage6", "stage8", "stage12"]
    assert config.stage_names[:2] == ["stem", "stage1"] and len(config.stage_names) == 13


@pytest.mark.parametrize(("height", "width"), [(32, 32), (48, 64), (64, 40), (32, 96)])
def test_neck_gives_strides_4_to_32_for_any_multiple_of_the_patch(height, width):
    torch.manual_seed(0)
    backbone = CAEv2Backbone(backbone_config()).eval()
    maps = backbone(torch.randn(2, 3, height, width)).feature_maps
    rows, cols = height // 8, width // 8  # patch 8: strides 4, 8, 16, 32 are 2x, 1x, 1/2, 1/4 of the grid
    expected = [(2 * rows, 2 * cols), (rows, cols), (rows // 2, cols // 2), (rows // 4, cols // 4)]
    assert [tuple(fmap.shape) for fmap in maps] == [(2, 32, h, w) for h, w in expected]
    assert backbone.channels == [32] * 4


def test_patch_16_neck_is_deconv_bn_gelu_deconv_then_deconv_identity_maxpool():
    config = CAEv2Config.from_preset("tiny", image_size=64, num_hidden_layers=4)
    backbone = CAEv2Backbone(config).eval()
    assert [type(module).__name__ for module in backbone.fpn1] == [
        "ConvTranspose2d", "BatchNorm2d", "GELU", "ConvTranspose2d"
    ]  # fmt: skip
    assert [type(module).__name__ for module in backbone.fpn2] == ["ConvTranspose2d"]
    assert type(backbone.fpn3).__name__ == "Identity" and type(backbone.fpn4).__name__ == "MaxPool2d"
    maps = backbone(torch.randn(1, 3, 64, 96)).feature_maps
    assert [tuple(fmap.shape[-2:]) for fmap in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]


@pytest.mark.parametrize("out_indices", [[0, 2], [1, 3, 4], [4], [-2, -1]])
def test_stages_without_neck_are_the_encoder_hidden_states(out_indices):
    """Stage k is block k's output (1-based; stage 0 the embeddings): the same weights give CAEv2Model's states."""
    config = backbone_config(out_indices=out_indices, backbone_add_fpn=False, backbone_relative_position_bias=False)
    torch.manual_seed(0)
    encoder = CAEv2Model(config).eval()
    backbone = CAEv2Backbone(config).eval()
    backbone.load_state_dict(encoder.state_dict(), strict=False)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        states = encoder(pixel_values, output_hidden_states=True).hidden_states
        maps = backbone(pixel_values).feature_maps
    assert len(maps) == len(out_indices)
    for index, fmap in zip(out_indices, maps, strict=True):
        expected = states[index][:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)  # states[-1]: the last block's
        torch.testing.assert_close(fmap, expected)


def test_zero_bias_tables_change_nothing_and_trained_ones_do():
    torch.manual_seed(0)
    with_bias = CAEv2Backbone(backbone_config()).eval()
    without_bias = CAEv2Backbone(backbone_config(backbone_relative_position_bias=False)).eval()
    without_bias.load_state_dict(with_bias.state_dict(), strict=False)
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(with_bias(pixel_values).feature_maps, without_bias(pixel_values).feature_maps)
        random_bias_tables(with_bias)
        assert not torch.allclose(
            with_bias(pixel_values).feature_maps[-1], without_bias(pixel_values).feature_maps[-1]
        )


def test_relative_position_index_matches_a_hand_count():
    # Table for a 3x3 window: 5x5 offsets (rows 0-24), then [CLS]->patch 25, patch->[CLS] 26, [CLS]->[CLS] 27.
    index = CAEv2RelativePositionBias.offset_index(2, 2, 3, 3, "cpu")
    assert index.shape == (5, 5)
    assert index[0, 0] == 27 and index[0, 1:].tolist() == [25] * 4 and index[1:, 0].tolist() == [26] * 4
    # patch (0,0) -> (1,1): offset (-1,-1) -> row (-1+2)*5 + (-1+2) = 6; (1,1) -> (0,0): (1+2)*5 + 3 = 18
    assert index[1, 4] == 6 and index[4, 1] == 18 and index[1, 1] == 12  # zero offset: the centre, 2*5 + 2


def test_bias_of_a_smaller_grid_reads_the_table_exactly_and_a_larger_one_interpolates():
    module = CAEv2RelativePositionBias(backbone_config())  # a 4x4 window (32 px / 8), 4 heads
    with torch.no_grad():
        module.relative_position_bias_table.copy_(torch.randn(module.relative_position_bias_table.shape))
    table = module.relative_position_bias_table
    small = module(2, 3)
    assert small.shape == (1, 4, 7, 7)
    # patch (0,0) -> patch (1,2) in a 2x3 grid: offset (-1, -2) in the 7x7 offset table of the 4x4 window
    torch.testing.assert_close(small[0, :, 1, 1 + 5], table[(-1 + 3) * 7 + (-2 + 3)])
    torch.testing.assert_close(small[0, :, 0, 3], table[-3])
    large = module(6, 6)
    assert large.shape == (1, 4, 37, 37) and torch.isfinite(large).all()


def test_position_table_interpolates_the_pretraining_table_or_recomputes_it():
    config = backbone_config()
    interpolated = CAEv2Backbone(config).embeddings
    exact = CAEv2Backbone(backbone_config(backbone_position_table="exact")).embeddings
    native = build_2d_sincos_position_embedding(4, 4, 32)
    torch.testing.assert_close(interpolated.position_table(32, 32)[0], native)
    torch.testing.assert_close(exact.position_table(32, 32)[0], native)
    torch.testing.assert_close(exact.position_table(48, 64)[0], build_2d_sincos_position_embedding(6, 8, 32))
    patches = native[1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    resized = F.interpolate(patches, size=(6, 8), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    table = interpolated.position_table(48, 64)[0]
    torch.testing.assert_close(table[1:], resized[0])
    assert table[0].abs().sum() == 0  # [CLS] keeps its zero row


def test_input_that_is_not_a_multiple_of_the_patch_is_refused():
    backbone = CAEv2Backbone(backbone_config()).eval()
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        backbone(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="at least 32 px a side"):
        backbone(torch.randn(1, 3, 16, 64))  # a 2x8 grid cannot be max-pooled to stride 32


def test_neck_needs_four_stages():
    with pytest.raises(ValueError, match="needs 4 stages"):
        CAEv2Backbone(backbone_config(out_indices=[2, 4]))
    with pytest.raises(ValueError, match="backbone_position_table"):
        CAEv2Backbone(backbone_config(backbone_position_table="nearest"))


@pytest.mark.parametrize("head", [CAEv2ForPreTraining, CAEv2Model])
def test_encoder_checkpoint_fills_every_encoder_weight(tmp_path, head):
    """A pretraining checkpoint (`caev2.` prefix, regressor, head) or an encoder folder (`final/`): nothing missing
    but the neck and the bias tables, nothing unexpected; the encoder's tensors arrive unchanged."""
    torch.manual_seed(0)
    source = head(backbone_config())
    source.save_pretrained(tmp_path)
    backbone, info = CAEv2Backbone.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    assert info["missing_keys"] and all(
        key.startswith("fpn") or key.endswith("relative_position_bias_table") for key in info["missing_keys"]
    )
    encoder = source.caev2 if head is CAEv2ForPreTraining else source
    expected = encoder.state_dict()
    for name, tensor in backbone.state_dict().items():
        if name in expected:
            torch.testing.assert_close(tensor, expected[name])
    assert sum(name in expected for name in backbone.state_dict()) == len(expected) - 2  # all but the final norm


def test_saved_backbone_reloads_with_identical_outputs_and_auto_map(tmp_path):
    torch.manual_seed(0)
    backbone = CAEv2Backbone(backbone_config()).eval()
    random_bias_tables(backbone)
    backbone.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoBackbone"] == "modeling_caev2_backbone.CAEv2Backbone"
    assert (tmp_path / "modeling_caev2_backbone.py").is_file() and (tmp_path / "modeling_caev2.py").is_file()
    # transformers 5.24's AutoBackbone.from_pretrained asks the Hub about any path (local folders fail offline):
    # load by class, and check that AutoBackbone maps the config to this class.
    assert type(AutoBackbone.from_config(CAEv2Config.from_pretrained(tmp_path))) is CAEv2Backbone
    reloaded = CAEv2Backbone.from_pretrained(tmp_path).eval()
    pixel_values = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(pixel_values).feature_maps, reloaded(pixel_values).feature_maps)


REMOTE_LOADER = BLOCK_CAEV2_HF + textwrap.dedent(
    """
    import sys

    import torch
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    folder = sys.argv[1]
    # AutoBackbone.from_pretrained asks the Hub about local paths in transformers 5.24: follow auto_map by hand.
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    backbone_class = get_class_from_dynamic_module(config.auto_map["AutoBackbone"], folder)
    backbone = backbone_class.from_pretrained(folder).eval()
    assert "caev2_hf" not in sys.modules
    with torch.no_grad():
        maps = backbone(torch.load(folder + "/inputs.pt")).feature_maps
    torch.save({"maps": list(maps), "class": type(backbone).__module__}, folder + "/outputs.pt")
    """
)


def test_saved_backbone_loads_as_remote_code_without_the_package(tmp_path):
    torch.manual_seed(0)
    backbone = CAEv2Backbone(backbone_config()).eval()
    random_bias_tables(backbone)
    backbone.save_pretrained(tmp_path)
    pixel_values = torch.randn(2, 3, 32, 48)
    torch.save(pixel_values, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    subprocess.run(
        [sys.executable, "-c", REMOTE_LOADER, str(tmp_path)], check=True, cwd=tmp_path, env=env, timeout=300
    )
    outputs = torch.load(tmp_path / "outputs.pt")
    assert outputs["class"].startswith("transformers_modules")
    with torch.no_grad():
        torch.testing.assert_close(list(backbone(pixel_values).feature_maps), outputs["maps"])


def test_upernet_builds_a_caev2_backbone_and_reloads_identically(tmp_path):
    torch.manual_seed(0)
    config = UperNetConfig(backbone_config=backbone_config(), num_labels=3, hidden_size=16, auxiliary_channels=8)
    model = UperNetForSemanticSegmentation(config).eval()
    assert type(model.backbone) is CAEv2Backbone
    pixel_values = torch.randn(2, 3, 32, 40)
    outputs = model(pixel_values, labels=torch.randint(0, 3, (2, 32, 40)))
    assert outputs.logits.shape == (2, 3, 32, 40) and torch.isfinite(outputs.loss)
    model.save_pretrained(tmp_path)
    reloaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, reloaded(pixel_values).logits)


def test_backbone_outputs_follow_the_config_flags():
    config = backbone_config(output_hidden_states=True)
    backbone = CAEv2Backbone(config).eval()
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 32, 32))
        assert len(outputs.hidden_states) == config.num_hidden_layers + 1
        assert backbone(torch.randn(1, 3, 32, 32), output_hidden_states=False).hidden_states is None


LEGACY = Path(__file__).parent / "fixtures" / "legacy"  # written by tests/fixtures/make_legacy_fixtures.py
LEGACY_CASES = json.loads((LEGACY / "backbone_cases.json").read_text())


def legacy_case_config(overrides: dict) -> CAEv2Config:
    """The saved backbone's config with a case's settings (its out_indices replace the saved out_features)."""
    fields = json.loads((LEGACY / "backbone" / "config.json").read_text())
    if "out_indices" in overrides:
        del fields["out_features"]
    return CAEv2Config.from_dict({**fields, **overrides})


@pytest.mark.parametrize("case", list(LEGACY_CASES))
def test_feature_maps_and_recorded_outputs_match_the_code_before_the_backbone_reused_the_encoder(case):
    """Neck on and off, bias on and off, both position tables, grids inside and beyond the bias window, eager
    attention's hidden states and maps: the numbers the backbone gave when it had its own blocks."""
    expected = load_file(LEGACY / "backbone_outputs.safetensors")
    state = load_file(LEGACY / "backbone" / "model.safetensors")
    model = CAEv2Backbone(legacy_case_config(LEGACY_CASES[case]["overrides"])).eval()
    model.load_state_dict({key: tensor for key, tensor in state.items() if key in model.state_dict()})  # strict
    eager = model.config._attn_implementation == "eager"
    for name in LEGACY_CASES[case]["inputs"]:
        with torch.no_grad():
            outputs = model(expected[f"inputs.{name}"].float(), output_hidden_states=eager, output_attentions=eager)
        found = {
            f"{case}.{name}.{key}.{index}": tensor
            for key in ("feature_maps", "hidden_states", "attentions")
            for index, tensor in enumerate(getattr(outputs, key) or ())
        }
        assert found.keys() == {key for key in expected if key.startswith(f"{case}.{name}.")}
        assert eager == any(".attentions." in key for key in found)
        for key, tensor in found.items():
            torch.testing.assert_close(tensor, expected[key], rtol=0, atol=1e-6, msg=key)


def test_backbone_and_upernet_folders_saved_before_load_every_weight_and_give_their_outputs():
    expected = load_file(LEGACY / "backbone_outputs.safetensors")
    square = expected["inputs.square"].float()
    backbone, info = CAEv2Backbone.from_pretrained(LEGACY / "backbone", output_loading_info=True)
    upernet, upernet_info = UperNetForSemanticSegmentation.from_pretrained(
        LEGACY / "upernet", output_loading_info=True
    )
    for loading in (info, upernet_info):
        assert loading["missing_keys"] == set() == loading["unexpected_keys"] == loading["mismatched_keys"]
    assert type(upernet.backbone) is CAEv2Backbone
    with torch.no_grad():
        maps = backbone.eval()(square).feature_maps
        logits = upernet.eval()(square).logits
    for index, fmap in enumerate(maps):
        torch.testing.assert_close(fmap, expected[f"default.square.feature_maps.{index}"], rtol=0, atol=1e-6)
    torch.testing.assert_close(logits, expected["upernet.square.logits"], rtol=0, atol=1e-6)


def test_an_attention_kernel_that_cannot_add_the_bias_is_refused():
    backbone = CAEv2Backbone(backbone_config()).eval()
    backbone.set_attn_implementation("flex_attention")  # takes a mask, not a per-head float bias
    with pytest.raises(
        ValueError, match=r"attn_implementation='flex_attention' cannot add the relative position bias"
    ):
        backbone(torch.randn(1, 3, 32, 32))
