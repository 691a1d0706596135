"""A CAE v2 encoder inside LW-DETR: the sizes' geometry, the tensor mapping, and the loaded ViT computing what the
CAE v2 blocks compute (global attention exactly; window attention against a hand-written window partition)."""

import pytest
import torch
from conftest import build_tiny_config
from transformers import LwDetrForObjectDetection

from caev2_hf import CAEv2Config, CAEv2ForPreTraining, CAEv2Model
from caev2_hf.evaluation.detection.lwdetr import (
    LWDETR_SIZES,
    VIT_PREFIX,
    build_lwdetr_config,
    build_lwdetr_from_caev2,
    load_caev2_encoder,
)
from caev2_hf.hub.convert_official_checkpoint import convert_official_checkpoint
from caev2_hf.modeling_caev2 import build_2d_sincos_position_embedding


LABELS = {0: "disk", 1: "square", 2: "triangle"}
# A small decoder, so a test model builds in a fraction of a second.
SMALL_DECODER = {
    "d_model": 32,
    "decoder_ffn_dim": 64,
    "decoder_self_attention_heads": 2,
    "decoder_cross_attention_heads": 4,
    "num_queries": 10,
    "group_detr": 2,
    "c2f_num_blocks": 1,
}


def tiny_encoder_config(**overrides) -> CAEv2Config:
    """Width 32, 4 heads, MLP ratio 4, patch 16 (LW-DETR's), 3 blocks, pretrained at 64 px (a 4 x 4 grid)."""
    fields = {"image_size": 64, "patch_size": 16, "intermediate_size": 128, "num_hidden_layers": 3}
    fields.update(overrides)
    return build_tiny_config(**fields)


def tiny_vit(num_blocks: int, **overrides) -> dict:
    """`backbone_overrides` giving LW-DETR's ViT the tiny encoder's width and heads, `num_blocks` global blocks and
    every block's output as a feature map."""
    stages = [f"stage{index + 1}" for index in range(num_blocks)]
    fields = {"num_hidden_layers": num_blocks, "window_block_indices": [], "out_features": stages}
    return {"hidden_size": 32, "num_attention_heads": 4, **fields, **overrides}


@pytest.fixture
def encoder_folder(tmp_path) -> str:
    torch.manual_seed(0)
    encoder = CAEv2Model(tiny_encoder_config())
    with torch.no_grad():  # layer scales away from their constant init, so a swapped gamma shows
        for name, parameter in encoder.named_parameters():
            if "lambda1" in name or "layernorm" in name:
                parameter.add_(torch.rand_like(parameter))
    encoder.save_pretrained(tmp_path / "encoder")
    return str(tmp_path / "encoder")


def caev2_patch_tokens(encoder: CAEv2Model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch embedding + sin-cos table, without [CLS]: `(batch, rows, cols, width)`."""
    tokens = encoder.embeddings(pixel_values)[:, 1:]
    side = int(tokens.shape[1] ** 0.5)
    return tokens.reshape(len(tokens), side, side, -1)


def as_feature_map(tokens: torch.Tensor) -> torch.Tensor:
    """`(batch, rows, cols, width)` -> `(batch, width, rows, cols)`, LW-DETR's feature maps."""
    return tokens.permute(0, 3, 1, 2)


def test_sizes_follow_the_authors_scripts():
    """Backbone and decoder geometry of each size, as the authors' training scripts set it; output blocks are
    0-based in the scripts, so block 9 (the last of ten) is transformers' `stage10`."""
    expected = {  # width, blocks, window blocks, output stages, projector scales, d_model, queries
        "tiny": (192, 6, [0, 2, 4], ["stage2", "stage4", "stage6"], [1.0], 256, 100),
        "small": (192, 10, [0, 1, 3, 6, 7, 9], ["stage3", "stage5", "stage6", "stage10"], [1.0], 256, 300),
        "medium": (384, 10, [0, 1, 3, 6, 7, 9], ["stage3", "stage5", "stage6", "stage10"], [1.0], 256, 300),
        "large": (384, 10, [0, 1, 3, 6, 7, 9], ["stage3", "stage5", "stage6", "stage10"], [2.0, 0.5], 384, 300),
        "xlarge": (768, 10, [0, 1, 3, 6, 7, 9], ["stage3", "stage5", "stage6", "stage10"], [2.0, 0.5], 384, 300),
    }
    assert set(LWDETR_SIZES) == set(expected)
    for size, (width, blocks, windows, stages, scales, d_model, queries) in expected.items():
        encoder_config = CAEv2Config.from_preset(LWDETR_SIZES[size].encoder_preset)
        config = build_lwdetr_config(size, LABELS, encoder_config)
        backbone = config.backbone_config
        assert (backbone.hidden_size, backbone.num_attention_heads, backbone.mlp_ratio) == (width, 12, 4)
        assert (backbone.num_hidden_layers, list(backbone.window_block_indices)) == (blocks, windows)
        assert backbone.out_features == stages
        assert (backbone.patch_size, backbone.pretrain_image_size, backbone.num_windows) == (16, 224, 16)
        assert (list(config.projector_scale_factors), config.d_model, config.num_queries) == (scales, d_model, queries)
        assert config.id2label == LABELS and config.num_labels == 3


def test_global_blocks_compute_what_the_caev2_blocks_compute(encoder_folder):
    """No window block, input at the pretraining grid (no table resizing): LW-DETR's ViT, loaded with the first two
    of the three blocks, gives the CAE v2 blocks' outputs on the patch tokens alone (no [CLS]), in fp32."""
    model, _ = build_lwdetr_from_caev2(
        encoder_folder,
        "small",
        LABELS,
        image_size=64,
        backbone_overrides=tiny_vit(2),
        attn_implementation="eager",
        **SMALL_DECODER,
    )
    encoder = CAEv2Model.from_pretrained(encoder_folder, attn_implementation="eager").eval()
    pixel_values = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feature_maps = model.eval().model.backbone.backbone(pixel_values).feature_maps
        tokens = caev2_patch_tokens(encoder, pixel_values).flatten(1, 2)
        expected = []
        for layer in encoder.encoder.layers[:2]:
            tokens = layer(tokens)[0]
            expected.append(as_feature_map(tokens.reshape(2, 4, 4, -1)))
    assert len(feature_maps) == 2
    for found, reference in zip(feature_maps, expected, strict=True):
        torch.testing.assert_close(found, reference, atol=2e-6, rtol=1e-5)


def windowed(layer: torch.nn.Module, tokens: torch.Tensor, windows_per_side: int) -> torch.Tensor:
    """A CAE v2 block applied to each of `windows_per_side**2` windows of a `(batch, rows, cols, width)` grid apart."""
    batch, rows, cols, width = tokens.shape
    height, breadth = rows // windows_per_side, cols // windows_per_side
    output = torch.empty_like(tokens)
    for top in range(0, rows, height):
        for left in range(0, cols, breadth):
            window = tokens[:, top : top + height, left : left + breadth].reshape(batch, height * breadth, width)
            output[:, top : top + height, left : left + breadth] = layer(window)[0].reshape(
                batch, height, breadth, width
            )
    return output


def test_window_blocks_match_a_hand_written_window_partition(tmp_path):
    """An 8 x 8 grid in 2 x 2 windows of 4 x 4 patches: blocks 0 and 2 attend within each window, block 1 over the
    whole grid; each output equals the CAE v2 block applied window by window (or to the whole grid)."""
    torch.manual_seed(0)
    CAEv2Model(tiny_encoder_config(image_size=128)).save_pretrained(tmp_path / "encoder")
    model, _ = build_lwdetr_from_caev2(
        tmp_path / "encoder",
        "small",
        LABELS,
        image_size=128,
        backbone_overrides=tiny_vit(3, window_block_indices=[0, 2], num_windows=4),
        attn_implementation="eager",
        **SMALL_DECODER,
    )
    encoder = CAEv2Model.from_pretrained(tmp_path / "encoder", attn_implementation="eager").eval()
    pixel_values = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        feature_maps = model.eval().model.backbone.backbone(pixel_values).feature_maps
        tokens = caev2_patch_tokens(encoder, pixel_values)
        layers = encoder.encoder.layers
        expected = []
        tokens = windowed(layers[0], tokens, 2)
        expected.append(as_feature_map(tokens))
        tokens = layers[1](tokens.flatten(1, 2))[0].reshape(tokens.shape)
        expected.append(as_feature_map(tokens))
        tokens = windowed(layers[2], tokens, 2)
        expected.append(as_feature_map(tokens))
        # Window attention changes the result: the reference is not the plain global computation.
        assert (
            layers[0](caev2_patch_tokens(encoder, pixel_values).flatten(1, 2))[0]
            - expected[0].permute(0, 2, 3, 1).flatten(1, 2)
        ).abs().max() > 1e-3
    for found, reference in zip(feature_maps, expected, strict=True):
        torch.testing.assert_close(found, reference, atol=2e-6, rtol=1e-5)


def test_report_names_what_was_loaded_left_out_and_started_fresh(encoder_folder):
    model, report = build_lwdetr_from_caev2(
        encoder_folder, "small", LABELS, image_size=64, backbone_overrides=tiny_vit(2),
        **SMALL_DECODER,
    )  # fmt: skip
    per_block = 17  # 2 norms x 2, q/v/o/fc1/fc2 weight and bias, k weight, 2 layer scales
    assert len(report.loaded) == 3 + 2 * per_block  # patch weight and bias, position table, 2 blocks
    assert sorted(report.unused)[:3] == ["embeddings.cls_token", "encoder.layers.2.attention.k_proj.weight",
                                         "encoder.layers.2.attention.o_proj.bias"]  # fmt: skip
    assert len(report.unused) == 1 + 2 + per_block  # [CLS], final LayerNorm, block 2
    vit_names = [name for name in model.state_dict() if name.startswith(VIT_PREFIX)]
    assert sorted(report.loaded) == sorted(vit_names)  # every ViT tensor comes from the encoder
    assert set(report.fresh) == set(model.state_dict()) - set(vit_names)
    assert report.loaded[VIT_PREFIX + "encoder.layer.1.gamma_2"] == "encoder.layers.1.layer_scale2.lambda1"
    summary = report.summary()
    assert f"Loaded {3 + 2 * per_block} ViT tensors" in summary
    assert "embeddings.cls_token, layernorm.weight, layernorm.bias, block 2" in summary
    assert "projector" in summary and "decoder" in summary


def test_copied_tensors_keep_their_values(encoder_folder):
    model, _ = build_lwdetr_from_caev2(
        encoder_folder, "small", LABELS, image_size=64, backbone_overrides=tiny_vit(3),
        **SMALL_DECODER,
    )  # fmt: skip
    encoder = CAEv2Model.from_pretrained(encoder_folder)
    vit = model.model.backbone.backbone
    block, theirs = encoder.encoder.layers[2], vit.encoder.layer[2]
    torch.testing.assert_close(theirs.gamma_1, block.layer_scale1.lambda1, atol=0, rtol=0)
    torch.testing.assert_close(theirs.attention.k_proj.weight, block.attention.k_proj.weight, atol=0, rtol=0)
    assert theirs.attention.k_proj.bias is None
    torch.testing.assert_close(vit.embeddings.projection.weight, encoder.embeddings.patch_embeddings.projection.weight)
    # The table at the pretraining grid with its zero [CLS] row, which LW-DETR drops.
    torch.testing.assert_close(
        vit.embeddings.position_embeddings, encoder.embeddings.position_embeddings, atol=0, rtol=0
    )


def test_a_pretraining_folder_gives_the_same_encoder(tmp_path):
    torch.manual_seed(0)
    pretraining = CAEv2ForPreTraining(tiny_encoder_config(num_masking_patches=4))
    pretraining.save_pretrained(tmp_path / "pretraining")
    pretraining.caev2.save_pretrained(tmp_path / "encoder")
    _, from_pretraining = load_caev2_encoder(tmp_path / "pretraining")
    _, from_encoder = load_caev2_encoder(tmp_path / "encoder")
    assert from_pretraining.keys() == from_encoder.keys()
    for name, tensor in from_encoder.items():
        torch.testing.assert_close(from_pretraining[name], tensor, atol=0, rtol=0)


def test_an_encoder_that_does_not_fit_is_refused_in_one_line(encoder_folder, tmp_path):
    with pytest.raises(ValueError) as error:
        build_lwdetr_from_caev2(encoder_folder, "small", LABELS, image_size=64)
    message = str(error.value)
    assert "\n" not in message
    assert "hidden_size 32 (LW-DETR needs 192)" in message
    assert "num_attention_heads 4 (LW-DETR needs 12)" in message
    assert "num_hidden_layers 3 (LW-DETR takes the first 10)" in message
    assert "no LW-DETR size has this width" in message
    CAEv2Model(tiny_encoder_config(patch_size=8)).save_pretrained(tmp_path / "patch8")
    with pytest.raises(ValueError, match=r"patch_size 8 \(LW-DETR needs 16\)"):
        build_lwdetr_from_caev2(tmp_path / "patch8", "small", LABELS, 64, tiny_vit(2))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        build_lwdetr_from_caev2(tmp_path / "empty", "small", LABELS)
    with pytest.raises(ValueError, match="Unknown LW-DETR size 'huge'"):
        build_lwdetr_from_caev2(encoder_folder, "huge", LABELS)


def test_a_vit_tiny_encoder_becomes_lwdetr_small_but_not_medium(tmp_path):
    """The published geometry end to end: CAE v2 ViT-Tiny (12 blocks) -> LW-DETR-small (its first 10 blocks)."""
    CAEv2Model(CAEv2Config.from_preset("tiny")).save_pretrained(tmp_path / "tiny")
    model, report = build_lwdetr_from_caev2(tmp_path / "tiny", "small", LABELS)
    assert isinstance(model, LwDetrForObjectDetection)
    assert len(report.loaded) == 3 + 10 * 17 and "blocks 10-11" in report.summary()
    with pytest.raises(ValueError, match=r"hidden_size 192 \(LW-DETR needs 384\).*sizes built on a width-192"):
        build_lwdetr_from_caev2(tmp_path / "tiny", "medium", LABELS)


def lwdetr_release_state_dict(config: CAEv2Config) -> dict[str, torch.Tensor]:
    """The tensors LW-DETR's loader reads from `caev2_*_300e_objects365.pth` (`checkpoint["model"]`, `encoder.`
    stripped, into the authors' ViT with CAE's fused qkv and q/v biases): no [CLS], no final norm."""
    generator = torch.Generator().manual_seed(0)
    width, mlp, grid = config.hidden_size, config.intermediate_size, config.image_size // config.patch_size
    shapes = {"patch_embed.proj.weight": (width, 3, 16, 16), "patch_embed.proj.bias": (width,)}
    for index in range(config.num_hidden_layers):
        block = {
            "attn.qkv.weight": (3 * width, width),
            "attn.proj.weight": (width, width),
            "mlp.fc1.weight": (mlp, width),
        }
        block.update({"mlp.fc2.weight": (width, mlp), "mlp.fc1.bias": (mlp,)})
        for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.q_bias", "attn.v_bias"):
            block[name] = (width,)
        for name in ("attn.proj.bias", "mlp.fc2.bias", "gamma_1", "gamma_2"):
            block[name] = (width,)
        shapes.update({f"blocks.{index}.{name}": shape for name, shape in block.items()})
    state_dict = {f"encoder.{name}": 0.02 * torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    state_dict["encoder.pos_embed"] = build_2d_sincos_position_embedding(grid, grid, width)[None]
    return state_dict


def test_an_encoder_released_with_lwdetr_converts_and_lands_where_the_authors_load_it(tmp_path):
    """`caev2_tiny_300e_objects365.pth`'s layout (only what LW-DETR reads) -> convert_official_checkpoint -> LW-DETR-
    small: each tensor is where the authors' ViT takes it from (q, k, v = rows of the fused qkv; biases q_bias, none,
    v_bias), and the missing [CLS] and final norm become a zero token and an identity norm."""
    official = lwdetr_release_state_dict(CAEv2Config.from_preset("tiny"))
    torch.save({"model": official}, tmp_path / "caev2_tiny_300e_objects365.pth")
    convert_official_checkpoint(tmp_path / "caev2_tiny_300e_objects365.pth", "tiny", tmp_path / "converted")
    encoder = CAEv2Model.from_pretrained(tmp_path / "converted")
    assert not encoder.embeddings.cls_token.any() and bool((encoder.layernorm.weight == 1).all())
    model, _ = build_lwdetr_from_caev2(tmp_path / "converted", "small", LABELS)
    vit, width = model.model.backbone.backbone, 192
    for index in (0, 9):
        layer, block = vit.encoder.layer[index], f"encoder.blocks.{index}."
        qkv = official[block + "attn.qkv.weight"]
        expected = {
            layer.attention.q_proj.weight: qkv[:width],
            layer.attention.k_proj.weight: qkv[width : 2 * width],
            layer.attention.v_proj.weight: qkv[2 * width :],
            layer.attention.q_proj.bias: official[block + "attn.q_bias"],
            layer.attention.v_proj.bias: official[block + "attn.v_bias"],
            layer.attention.o_proj.weight: official[block + "attn.proj.weight"],
            layer.layernorm_after.bias: official[block + "norm2.bias"],
            layer.intermediate.fc2.weight: official[block + "mlp.fc2.weight"],
            layer.gamma_1: official[block + "gamma_1"],
            layer.gamma_2: official[block + "gamma_2"],
        }
        for found, reference in expected.items():
            torch.testing.assert_close(found, reference, atol=0, rtol=0)
    torch.testing.assert_close(vit.embeddings.projection.weight, official["encoder.patch_embed.proj.weight"])
    torch.testing.assert_close(vit.embeddings.position_embeddings, official["encoder.pos_embed"], atol=0, rtol=0)


def test_the_command_writes_a_detector_folder_the_pipeline_loads(encoder_folder, tmp_path):
    """`python -m caev2_hf.evaluation.detection.lwdetr`: the untrained detector and its image processor."""
    from PIL import Image
    from transformers import pipeline

    from caev2_hf.evaluation.detection.lwdetr import main
    from caev2_hf_cli.errors import UserError

    with pytest.raises(UserError, match=r"hidden_size 32 \(LW-DETR needs 192\)"):
        main(["--encoder", encoder_folder, "--class_names", "a", "b", "--output_dir", str(tmp_path / "refused")])
    CAEv2Model(tiny_encoder_config(hidden_size=192, num_attention_heads=12, intermediate_size=768,
                                   num_hidden_layers=6)).save_pretrained(tmp_path / "tiny6")  # fmt: skip
    too_few = r"image_size 64 gives 16 projector tokens at the smallest training size \(64 px\), fewer than "
    with pytest.raises(UserError, match=too_few + "num_queries 100"):
        main(["--encoder", str(tmp_path / "tiny6"), "--lwdetr_size", "tiny", "--image_size", "64", "--class_names",
              "cat", "--output_dir", str(tmp_path / "too_small")])  # fmt: skip
    arguments = ["--encoder", str(tmp_path / "tiny6"), "--lwdetr_size", "tiny", "--image_size", "192"]
    main([*arguments, "--class_names", "cat", "dog", "--output_dir", str(tmp_path / "detector")])
    detector = pipeline("object-detection", model=str(tmp_path / "detector"))
    detections = detector(Image.new("RGB", (64, 48), "grey"), threshold=0.0)
    assert len(detections) == 100 and {d["label"] for d in detections} <= {"cat", "dog"}
    with pytest.raises(UserError, match="already holds a model"):
        main([*arguments, "--class_names", "cat", "--output_dir", str(tmp_path / "detector")])
