"""Tests for caev2_hf/convert_official_checkpoint.py on fake official state dicts built from the key list in docs/method.md#checkpoint-keys-of-the-authors-code."""

import argparse
import hashlib
import json
import math
from pathlib import Path

import huggingface_hub
import pytest
import torch
from fake_hub import install_fake_hub
from huggingface_hub import ModelCard

from caev2_hf import CAEv2Config, CAEv2ForPreTraining, CAEv2Model
from caev2_hf.hub.convert_official_checkpoint import (
    check_encoder_matches_official,
    compute_official_encoder_output,
    convert_official_state_dict,
    convert_to_official_state_dict,
    load_official_state_dict,
    main,
)
from caev2_hf.hub.publish import main as hub_main
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.hub import CONVERSION_RECORD, REQUIRED_FILES, parse_convert_arguments, parse_publish_arguments


def convert(argv: list[str]) -> None:
    """`caev2-convert-checkpoint ARGV` in this process: the command's parse and checks, then its main."""
    main(parse_convert_arguments(argv))


def official_sincos_table(grid: int, dim: int, column_first: bool = False) -> torch.Tensor:
    """The official fixed table (docs/method.md#encoder) in float32 as the authors compute it: row first, zero [CLS] row."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij"
    )
    first, second = (cols, rows) if column_first else (rows, cols)
    first, second = first.flatten()[:, None] * omega, second.flatten()[:, None] * omega
    table = torch.cat([first.sin(), first.cos(), second.sin(), second.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim), table])[None]


# docs/method.md#checkpoint-keys-of-the-authors-code, written out independently of the converter. Shapes in letters: D encoder width, M encoder MLP width,
# R regressor width, H regressor MLP width, T tokens (1 + patches), P patch size, O head output width.
# `name.*` is a module with `name.weight` of the shape given and `name.bias` of its first dimension.
ENCODER_KEYS = {"encoder.cls_token": "1,1,D", "encoder.pos_embed": "1,T,D", "encoder.patch_embed.proj.*": "D,3,P,P"}
ENCODER_BLOCK_KEYS = {
    "gamma_1": "D",
    "gamma_2": "D",
    "norm1.*": "D",
    "attn.qkv.weight": "3D,D",
    "attn.q_bias": "D",
    "attn.v_bias": "D",
    "attn.proj.*": "D,D",
    "norm2.*": "D",
    "mlp.fc1.*": "M,D",
    "mlp.fc2.*": "D,M",
}
ENCODER_NORM_KEYS = {"encoder.norm.*": "D"}
PROJECTION_KEYS = {"encoder_to_regresser.*": "R,D", "encoder_to_regresser_norm.*": "R"}
REGRESSOR_KEYS = {"rd_pos_embed": "1,T,R", "mask_token": "1,1,R"}
REGRESSOR_BLOCK_KEYS = {
    "gamma_1_cross": "R",
    "gamma_2_cross": "R",
    "norm1_q.*": "R",
    "norm1_k.*": "R",
    "norm1_v.*": "R",
    "norm2_cross.*": "R",
    "cross_attn.q.weight": "R,R",
    "cross_attn.k.weight": "R,R",
    "cross_attn.v.weight": "R,R",
    "cross_attn.q_bias": "R",
    "cross_attn.v_bias": "R",
    "cross_attn.proj.*": "R,R",
    "mlp_cross.fc1.*": "H,R",
    "mlp_cross.fc2.*": "R,H",
}
HEAD_KEYS = {"regresser.norm.*": "R", "decoder.norm.*": "R", "decoder.head.*": "O,R"}


def official_shapes(config: CAEv2Config, pretraining: bool) -> dict[str, tuple[int, ...]]:
    """Every key of an official state dict with its shape, from the docs/method.md#checkpoint-keys-of-the-authors-code lists above."""
    keys = dict(ENCODER_KEYS)
    for index in range(config.num_hidden_layers):
        keys.update({f"encoder.blocks.{index}.{name}": shape for name, shape in ENCODER_BLOCK_KEYS.items()})
    keys.update(ENCODER_NORM_KEYS)
    if pretraining:
        keys.update(PROJECTION_KEYS if config.regressor_hidden_size != config.hidden_size else {})
        keys.update(REGRESSOR_KEYS)
        for index in range(config.regressor_num_hidden_layers):
            prefix = f"regresser.regressor_blocks.{index}."
            keys.update({prefix + name: shape for name, shape in REGRESSOR_BLOCK_KEYS.items()})
        keys.update(HEAD_KEYS)
    sizes = {
        "D": config.hidden_size,
        "M": config.intermediate_size,
        "R": config.regressor_hidden_size,
        "H": config.regressor_intermediate_size,
        "T": 1 + config.num_patches,
        "P": config.patch_size,
        "O": config.target_hidden_size,
    }
    shapes = {}
    for name, code in keys.items():
        shape = parse_shape(code, sizes)
        if name.endswith(".*"):
            shapes.update({name[:-1] + "weight": shape, name[:-1] + "bias": shape[:1]})
        else:
            shapes[name] = shape
    return shapes


def parse_shape(code: str, sizes: dict[str, int]) -> tuple[int, ...]:
    """`"3D,D"` -> `(3 * sizes["D"], sizes["D"])`; plain digits stay numbers."""
    return tuple(int(part) if part.isdigit() else int(part[:-1] or 1) * sizes[part[-1]] for part in code.split(","))


# docs/method.md#checkpoint-keys-of-the-authors-code trainable counts (fixed tables excluded): encoder alone, and the official module with its unused norm.
REFERENCE_PARAMETER_COUNTS = {
    "tiny": (5_488_896, 5_670_080),
    "small": (21_594_624, 23_570_048),
    "base": (85_656_576, 114_420_992),
}


@pytest.mark.parametrize("size", sorted(REFERENCE_PARAMETER_COUNTS))
def test_fake_official_key_list_has_the_spec_parameter_counts(size):
    config = CAEv2Config.from_preset(size)
    counts = [
        sum(
            math.prod(shape) for name, shape in official_shapes(config, pretraining).items() if "pos_embed" not in name
        )
        for pretraining in (False, True)
    ]
    assert tuple(counts) == REFERENCE_PARAMETER_COUNTS[size]


def build_official_state_dict(
    config: CAEv2Config, pretraining: bool, dtype: torch.dtype = torch.float32, device: str = "cpu", std: float = 0.02
) -> dict[str, torch.Tensor]:
    """Random values (distinct everywhere) of the official shapes; the fixed tables hold real values.

    At `std=0.2` a 2-block encoder has attention logits of order 1, so a wrong q/k/v placement changes its output.
    """
    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for name, shape in official_shapes(config, pretraining).items():
        if device == "meta":
            state_dict[name] = torch.empty(shape, dtype=dtype, device="meta")
        else:
            state_dict[name] = (torch.randn(shape, generator=generator) * std).to(dtype)
    grid = config.image_size // config.patch_size
    state_dict["encoder.pos_embed"] = official_sincos_table(grid, config.hidden_size).to(dtype)
    if pretraining:
        state_dict["rd_pos_embed"] = official_sincos_table(grid, config.regressor_hidden_size).to(dtype)
    return state_dict


# A one-layer CLIP on the same 4x4 grid, so a cut-down student config validates without the 86M-parameter teacher.
SMALL_TEACHER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=64,
    patch_size=16,
    projection_dim=512,
)


def build_small_config(**overrides) -> CAEv2Config:
    """Small's layout cut to 2 blocks on 64x64 images (16 patches), for fast model-level checks."""
    fields = dict(num_hidden_layers=2, image_size=64, num_masking_patches=4, teacher_config=SMALL_TEACHER)
    return CAEv2Config.from_preset("small", **{**fields, **overrides})


@pytest.fixture(scope="module", params=["tiny", "small", "base"])
def full_official(request) -> tuple[CAEv2Config, dict[str, torch.Tensor]]:
    """A full official pretraining state dict per size, in bfloat16 to halve Base's 114M values; built once."""
    config = CAEv2Config.from_preset(request.param)
    return config, build_official_state_dict(config, pretraining=True, dtype=torch.bfloat16)


def encoder_only(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in state_dict.items() if name.startswith("encoder.")}


def test_convert_splits_fused_qkv_into_query_key_value_rows(full_official):
    config, official = full_official
    converted = convert_official_state_dict(official, config, pretraining=True)
    width = config.hidden_size
    for index in range(config.num_hidden_layers):
        qkv, ours = official[f"encoder.blocks.{index}.attn.qkv.weight"], f"caev2.encoder.layers.{index}.attention."
        assert torch.equal(converted[ours + "q_proj.weight"], qkv[:width])
        assert torch.equal(converted[ours + "k_proj.weight"], qkv[width : 2 * width])
        assert torch.equal(converted[ours + "v_proj.weight"], qkv[2 * width :])
        assert torch.equal(converted[ours + "q_proj.bias"], official[f"encoder.blocks.{index}.attn.q_bias"])
        assert torch.equal(converted[ours + "v_proj.bias"], official[f"encoder.blocks.{index}.attn.v_bias"])
        assert ours + "k_proj.bias" not in converted


# docs/method.md#checkpoint-keys-of-the-authors-code official names -> ours, stated here independently of the converter's table.
EXPECTED_PLACEMENTS = {
    "encoder.cls_token": "caev2.embeddings.cls_token",
    "encoder.patch_embed.proj.weight": "caev2.embeddings.patch_embeddings.projection.weight",
    "encoder.blocks.{last}.gamma_1": "caev2.encoder.layers.{last}.layer_scale1.lambda1",
    "encoder.blocks.{last}.gamma_2": "caev2.encoder.layers.{last}.layer_scale2.lambda1",
    "encoder.blocks.{last}.norm1.weight": "caev2.encoder.layers.{last}.layernorm_before.weight",
    "encoder.blocks.{last}.norm2.bias": "caev2.encoder.layers.{last}.layernorm_after.bias",
    "encoder.blocks.{last}.attn.proj.weight": "caev2.encoder.layers.{last}.attention.o_proj.weight",
    "encoder.blocks.{last}.mlp.fc2.weight": "caev2.encoder.layers.{last}.mlp.fc2.weight",
    "encoder.norm.weight": "caev2.layernorm.weight",
    "mask_token": "regressor.mask_token",
    "regresser.regressor_blocks.{rlast}.gamma_1_cross": "regressor.layers.{rlast}.layer_scale1.lambda1",
    "regresser.regressor_blocks.{rlast}.gamma_2_cross": "regressor.layers.{rlast}.layer_scale2.lambda1",
    "regresser.regressor_blocks.{rlast}.norm1_q.weight": "regressor.layers.{rlast}.layernorm_query.weight",
    "regresser.regressor_blocks.{rlast}.norm1_k.bias": "regressor.layers.{rlast}.layernorm_key.bias",
    "regresser.regressor_blocks.{rlast}.norm1_v.weight": "regressor.layers.{rlast}.layernorm_value.weight",
    "regresser.regressor_blocks.{rlast}.norm2_cross.weight": "regressor.layers.{rlast}.layernorm_after.weight",
    "regresser.regressor_blocks.{rlast}.cross_attn.q.weight": "regressor.layers.{rlast}.attention.q_proj.weight",
    "regresser.regressor_blocks.{rlast}.cross_attn.k.weight": "regressor.layers.{rlast}.attention.k_proj.weight",
    "regresser.regressor_blocks.{rlast}.cross_attn.v.weight": "regressor.layers.{rlast}.attention.v_proj.weight",
    "regresser.regressor_blocks.{rlast}.cross_attn.q_bias": "regressor.layers.{rlast}.attention.q_proj.bias",
    "regresser.regressor_blocks.{rlast}.cross_attn.v_bias": "regressor.layers.{rlast}.attention.v_proj.bias",
    "regresser.regressor_blocks.{rlast}.cross_attn.proj.bias": "regressor.layers.{rlast}.attention.o_proj.bias",
    "regresser.regressor_blocks.{rlast}.mlp_cross.fc1.weight": "regressor.layers.{rlast}.mlp.fc1.weight",
    "decoder.norm.weight": "head.layernorm.weight",
    "decoder.head.weight": "head.dense.weight",
    "decoder.head.bias": "head.dense.bias",
}


def test_convert_places_every_kind_of_tensor_where_spec_says(full_official):
    config, official = full_official
    converted = convert_official_state_dict(official, config, pretraining=True)
    last, rlast = config.num_hidden_layers - 1, config.regressor_num_hidden_layers - 1
    for official_name, our_name in EXPECTED_PLACEMENTS.items():
        official_name, our_name = official_name.format(last=last, rlast=rlast), our_name.format(last=last, rlast=rlast)
        assert torch.equal(converted[our_name], official[official_name]), (official_name, our_name)
    assert converted["caev2.embeddings.cls_token"].shape == (1, 1, config.hidden_size)
    assert converted["regressor.mask_token"].shape == (1, 1, config.regressor_hidden_size)
    assert all(tensor.dtype == torch.bfloat16 for tensor in converted.values())


def test_convert_maps_tiny_projection_only_for_tiny(full_official):
    config, official = full_official
    converted = convert_official_state_dict(official, config, pretraining=True)
    if config.regressor_hidden_size == config.hidden_size:
        assert not any(name.startswith("latent_projection.") for name in converted)
        return
    assert torch.equal(converted["latent_projection.dense.weight"], official["encoder_to_regresser.weight"])
    assert torch.equal(converted["latent_projection.layernorm.bias"], official["encoder_to_regresser_norm.bias"])


def test_convert_yields_exactly_our_pretraining_parameters(full_official):
    config, official = full_official
    converted = convert_official_state_dict(official, config, pretraining=True)
    with torch.device("meta"):
        ours = CAEv2ForPreTraining(config).state_dict()
    assert {name: tuple(tensor.shape) for name, tensor in converted.items()} == {
        name: tuple(tensor.shape) for name, tensor in ours.items() if not name.startswith("teacher.")
    }  # every student tensor; the authors' files hold no teacher
    regressor_blocks = {name.split(".")[2] for name in converted if name.startswith("regressor.layers.")}
    assert len(regressor_blocks) == {192: 1, 384: 1, 768: 4}[config.hidden_size]  # Tiny, Small: 1; Base: 4


def test_to_official_round_trip_is_exact_except_the_unused_norm(full_official):
    config, official = full_official
    restored = convert_to_official_state_dict(convert_official_state_dict(official, config, pretraining=True), config)
    assert set(restored) == set(official)
    for name, tensor in official.items():
        if name.startswith("regresser.norm."):
            continue
        assert restored[name].dtype == tensor.dtype and torch.equal(restored[name], tensor), name
    width = config.regressor_hidden_size
    assert torch.equal(restored["regresser.norm.weight"], torch.ones(width, dtype=torch.bfloat16))
    assert torch.equal(restored["regresser.norm.bias"], torch.zeros(width, dtype=torch.bfloat16))


@pytest.mark.parametrize("prefixed", [True, False])
def test_encoder_only_round_trip_is_exact(full_official, prefixed):
    config, official = full_official
    released = encoder_only(official)
    if not prefixed:
        released = {name.removeprefix("encoder."): tensor for name, tensor in released.items()}
    converted = convert_official_state_dict(released, config)
    assert all(name.startswith("caev2.") for name in converted)
    restored = convert_to_official_state_dict({k.removeprefix("caev2."): v for k, v in converted.items()}, config)
    assert set(restored) == set(encoder_only(official))
    assert all(torch.equal(restored[name], tensor) for name, tensor in encoder_only(official).items())


def test_encoder_only_conversion_sets_aside_pretraining_tensors():
    config = build_small_config()
    converted = convert_official_state_dict(build_official_state_dict(config, pretraining=True), config)
    with torch.device("meta"):
        expected = set(CAEv2Model(config).state_dict())
    assert {name.removeprefix("caev2.") for name in converted} == expected


def test_large_key_table_covers_every_spec_key_on_the_meta_device():
    config = CAEv2Config.from_preset("large")
    official = build_official_state_dict(config, pretraining=True, device="meta")
    converted = convert_official_state_dict(official, config, pretraining=True)
    with torch.device("meta"):
        ours = CAEv2ForPreTraining(config).state_dict()
    assert {name: tuple(t.shape) for name, t in converted.items()} == {
        name: tuple(t.shape) for name, t in ours.items() if not name.startswith("teacher.")
    }  # the authors' files hold no teacher
    restored = convert_to_official_state_dict(converted, config)
    assert {name: tuple(t.shape) for name, t in restored.items()} == official_shapes(config, pretraining=True)


def test_unknown_missing_and_misshaped_keys_are_each_named():
    config = build_small_config()
    official = build_official_state_dict(config, pretraining=False)
    del official["encoder.blocks.1.gamma_2"]
    official["encoder.blocks.0.attn.k_bias"] = torch.zeros(config.hidden_size)
    official["encoder.blocks.0.attn.qkv.weight"] = torch.zeros(2 * config.hidden_size, config.hidden_size)
    with pytest.raises(ValueError) as error:
        convert_official_state_dict(official, config)
    message = str(error.value)
    assert "1 unknown: encoder.blocks.0.attn.k_bias" in message
    assert "1 missing: encoder.blocks.1.gamma_2" in message
    assert "1 mis-shaped: encoder.blocks.0.attn.qkv.weight (768, 384) (expected (1152, 384))" in message


def test_to_official_names_keys_it_cannot_place():
    config = build_small_config(num_labels=3)
    with torch.device("meta"):
        state_dict = CAEv2Model(config).state_dict()
    state_dict["classifier.weight"] = torch.zeros(3, config.hidden_size)
    with pytest.raises(ValueError, match=r"1 unknown: caev2\.classifier\.weight"):
        convert_to_official_state_dict(state_dict, config)


def test_column_first_position_table_is_refused():
    config = build_small_config()
    official = build_official_state_dict(config, pretraining=False)
    official["encoder.pos_embed"] = official_sincos_table(4, config.hidden_size, column_first=True)
    with pytest.raises(ValueError, match="encoder.pos_embed is not the fixed 2-D sin-cos table"):
        convert_official_state_dict(official, config)


class NotAStateDict:
    """Any class outside the weights-only allow-list: unpickling it could run code."""


def test_non_plain_pickle_is_refused(tmp_path):
    config = build_small_config()
    path = tmp_path / "unsafe.pth"
    torch.save({"model": build_official_state_dict(config, pretraining=False), "extra": NotAStateDict()}, path)
    with pytest.raises(ValueError, match="is not a plain state dict"):
        load_official_state_dict(path)


@pytest.mark.parametrize("container", ["model", "state_dict", "module", None])
@pytest.mark.parametrize("prefixed", [True, False])
def test_load_accepts_every_container_with_or_without_prefix(tmp_path, container, prefixed):
    official = encoder_only(build_official_state_dict(build_small_config(), pretraining=False))
    stored = official if prefixed else {name.removeprefix("encoder."): tensor for name, tensor in official.items()}
    path = tmp_path / "checkpoint.pth"
    torch.save(stored if container is None else {container: stored, "epoch": 299}, path)
    loaded = load_official_state_dict(path)
    assert set(loaded) == set(official) and all(torch.equal(loaded[name], official[name]) for name in official)


def test_load_accepts_the_official_training_arguments(tmp_path):
    official = build_official_state_dict(build_small_config(), pretraining=True)
    path = tmp_path / "checkpoint-299.pth"
    torch.save({"model": official, "epoch": 299, "args": argparse.Namespace(model="cae_small", lr=1.5e-3)}, path)
    assert set(load_official_state_dict(path)) == set(official)


def test_converted_encoder_matches_official_computation():
    config = build_small_config()
    official = build_official_state_dict(config, pretraining=False, std=0.2)
    model = CAEv2Model(config).eval()
    model.load_state_dict(
        {k.removeprefix("caev2."): v for k, v in convert_official_state_dict(official, config).items()}
    )
    pixel_values = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(pixel_values).last_hidden_state
    reference = compute_official_encoder_output(official, config, pixel_values)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert reference.std() > 0.1  # the final norm's weights have std 0.2: a real signal, not a collapsed output


def test_forward_check_rejects_a_wrong_qkv_split():
    config = build_small_config()
    official = build_official_state_dict(config, pretraining=False, std=0.2)
    model = CAEv2Model(config).eval()
    converted = {k.removeprefix("caev2."): v for k, v in convert_official_state_dict(official, config).items()}
    query, key = "encoder.layers.0.attention.q_proj.weight", "encoder.layers.0.attention.k_proj.weight"
    converted[query], converted[key] = converted[key], converted[query]
    model.load_state_dict(converted)
    with pytest.raises(RuntimeError, match="differs from the official computation"):
        check_encoder_matches_official(model, official, config)


@pytest.fixture(scope="module")
def tiny_full_checkpoint(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """An official-style Tiny pretraining checkpoint file, `{"model": ..., "args": ...}`."""
    official = build_official_state_dict(CAEv2Config.from_preset("tiny"), pretraining=True)
    path = tmp_path_factory.mktemp("official") / "checkpoint-299.pth"
    torch.save({"model": official, "args": argparse.Namespace(model_type="caev2")}, path)
    return path, official


def test_cli_writes_an_encoder_folder_that_auto_model_loads(tiny_full_checkpoint, tmp_path):
    path, official = tiny_full_checkpoint
    convert(["--checkpoint", str(path), "--size", "tiny", "--output_dir", str(tmp_path / "out")])
    files = sorted(item.name for item in (tmp_path / "out").iterdir())
    assert files == sorted([*REQUIRED_FILES, CONVERSION_RECORD])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == ["CAEv2Model"]
    model = CAEv2Model.from_pretrained(tmp_path / "out").eval()
    pixel_values = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(pixel_values).last_hidden_state
    config = CAEv2Config.from_preset("tiny")
    torch.testing.assert_close(
        ours, compute_official_encoder_output(official, config, pixel_values), atol=1e-5, rtol=1e-5
    )


PAPER_TINY = {"Top-1 (LIN)": 69.3, "Top-1 (FT)": 77.8, "mIoU": 44.7}  # docs/method.md#paper-results


def model_index(folder: Path) -> dict[str, float]:
    results = ModelCard.load(folder / "README.md").data.eval_results or []
    return {result.metric_name: result.metric_value for result in results}


@pytest.mark.parametrize("released", [True, False])
def test_paper_numbers_only_for_a_checkpoint_the_authors_released(tiny_full_checkpoint, tmp_path, released):
    """Issue 22 #10: the converter records the file it read; only `--released_by_authors` makes its card (and a card
    `caev2-hub prepare` writes from the folder) quote the paper's numbers as these weights'."""
    path, _ = tiny_full_checkpoint
    flags = ["--released_by_authors"] if released else []
    convert(["--checkpoint", str(path), "--size", "tiny", "--output_dir", str(tmp_path / "out"), *flags])
    record = json.loads((tmp_path / "out" / CONVERSION_RECORD).read_text())
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (record["checkpoint_file"], record["size"], record["released_by_authors"]) == (
        "checkpoint-299.pth",
        "tiny",
        released,
    )
    assert record["relative_difference"] < 1e-4
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"It was converted from `checkpoint-299.pth` (sha256 `{record['sha256']}`)" in card
    assert model_index(tmp_path / "out") == (PAPER_TINY if released else {})
    hub_main(
        parse_publish_arguments(["prepare", "--weights", str(tmp_path / "out"), "--output_dir", str(tmp_path / "hub")])
    )
    assert json.loads((tmp_path / "hub" / CONVERSION_RECORD).read_text()) == record
    assert model_index(tmp_path / "hub") == (PAPER_TINY if released else {})


def test_cli_pretraining_folder_goes_back_to_the_official_file(tmp_path):
    config = CAEv2Config.from_preset("tiny")
    official = build_official_state_dict(config, pretraining=True, dtype=torch.bfloat16)
    torch.save({"model": official}, tmp_path / "full.pth")
    convert(
        [
            "--checkpoint",
            str(tmp_path / "full.pth"),
            "--size",
            "tiny",
            "--pretraining",
            "--output_dir",
            str(tmp_path / "hf"),
        ]
    )
    convert(["--to_official", "--checkpoint", str(tmp_path / "hf"), "--output_dir", str(tmp_path / "back")])
    restored = torch.load(tmp_path / "back" / "checkpoint.pth", weights_only=True)["model"]
    assert set(restored) == set(official)
    unchanged = [name for name in official if not name.startswith("regresser.norm.")]
    assert all(
        restored[name].dtype == torch.bfloat16 and torch.equal(restored[name], official[name]) for name in unchanged
    )


def test_cli_push_to_hub_uploads_the_converted_folder(tiny_full_checkpoint, tmp_path, monkeypatch):
    hub = install_fake_hub(monkeypatch)
    arguments = ["--checkpoint", str(tiny_full_checkpoint[0]), "--size", "tiny", "--output_dir", str(tmp_path / "out")]
    convert([*arguments, "--push_to_hub", "--hub_model_id", "my-org/caev2-vit-tiny"])
    assert [call for call, _ in hub.calls][:3] == ["init", "whoami", "auth_check"]  # checked before converting
    (create,) = hub.named("create_repo")
    assert (create["repo_id"], create["private"]) == ("my-org/caev2-vit-tiny", True)
    (upload,) = hub.named("upload_folder")
    assert upload["folder_path"] == str(tmp_path / "out") and upload["repo_id"] == "my-org/caev2-vit-tiny"
    assert upload["files"] == sorted([*REQUIRED_FILES, CONVERSION_RECORD])
    assert 'from_pretrained("my-org/caev2-vit-tiny")' in (tmp_path / "out" / "README.md").read_text()


def test_cli_push_to_hub_refuses_before_converting_without_a_token(tiny_full_checkpoint, tmp_path, monkeypatch):
    hub = install_fake_hub(monkeypatch)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    arguments = ["--checkpoint", str(tiny_full_checkpoint[0]), "--size", "tiny", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(UserError, match="--hub_model_id me/x: no Hugging Face token to upload with; set HF_TOKEN"):
        convert([*arguments, "--push_to_hub", "--hub_model_id", "me/x"])
    assert not (tmp_path / "out").exists() and hub.calls == []
