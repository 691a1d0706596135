# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Official CAE v2 checkpoints (Atten4Vis/CAE, `project/CAEv2`) <-> transformers folders, both ways: the key table,
the tensor conversions and a check against the authors' own computation
(docs/method.md#checkpoint-keys-of-the-authors-code). The command is `caev2-convert-checkpoint`
(`caev2_hf_cli/hub.py` holds its arguments); `python -m caev2_hf.hub.convert_official_checkpoint` runs the same.
"""

import argparse
import hashlib
import logging
import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import PreTrainedModel

from caev2_hf_cli.errors import UserError
from caev2_hf_cli.hub import check_checkpoint_file, parse_convert_arguments
from caev2_hf_cli.parsing import run_command

from ..configuration_caev2 import CAEv2Config
from ..modeling_caev2 import CAEv2ForPreTraining, CAEv2Model, build_2d_sincos_position_embedding
from .publish import prepare_folder, push_folder


logger = logging.getLogger(__name__)

# The one official <-> ours table, in the official order; `.*` stands for `.weight` and `.bias`, as in docs/method.md#checkpoint-keys-of-the-authors-code. A
# tuple of our names means the official tensor is their concatenation along dim 0: the fused qkv has rows q|k|v.
EMBEDDING_ROWS = (
    ("encoder.cls_token", "caev2.embeddings.cls_token"),
    ("encoder.patch_embed.proj.*", "caev2.embeddings.patch_embeddings.projection.*"),
)
ENCODER_BLOCK_ROWS = (  # relative to encoder.blocks.{i}. / caev2.encoder.layers.{i}.
    ("gamma_1", "layer_scale1.lambda1"),
    ("gamma_2", "layer_scale2.lambda1"),
    ("norm1.*", "layernorm_before.*"),
    ("attn.q_bias", "attention.q_proj.bias"),
    ("attn.v_bias", "attention.v_proj.bias"),
    ("attn.qkv.weight", ("attention.q_proj.weight", "attention.k_proj.weight", "attention.v_proj.weight")),
    ("attn.proj.*", "attention.o_proj.*"),
    ("norm2.*", "layernorm_after.*"),
    ("mlp.fc1.*", "mlp.fc1.*"),
    ("mlp.fc2.*", "mlp.fc2.*"),
)
ENCODER_NORM_ROWS = (("encoder.norm.*", "caev2.layernorm.*"),)
# Tiny only: the encoder output is narrowed to the regressor width.
PROJECTION_ROWS = (
    ("encoder_to_regresser.*", "latent_projection.dense.*"),
    ("encoder_to_regresser_norm.*", "latent_projection.layernorm.*"),
)
REGRESSOR_ROWS = (("mask_token", "regressor.mask_token"),)
REGRESSOR_BLOCK_ROWS = (  # relative to regresser.regressor_blocks.{j}. / regressor.layers.{j}.
    ("gamma_1_cross", "layer_scale1.lambda1"),
    ("gamma_2_cross", "layer_scale2.lambda1"),
    ("norm1_q.*", "layernorm_query.*"),
    ("norm1_k.*", "layernorm_key.*"),
    ("norm1_v.*", "layernorm_value.*"),
    ("norm2_cross.*", "layernorm_after.*"),
    ("cross_attn.q.weight", "attention.q_proj.weight"),
    ("cross_attn.k.weight", "attention.k_proj.weight"),
    ("cross_attn.v.weight", "attention.v_proj.weight"),
    ("cross_attn.q_bias", "attention.q_proj.bias"),
    ("cross_attn.v_bias", "attention.v_proj.bias"),
    ("cross_attn.proj.*", "attention.o_proj.*"),
    ("mlp_cross.fc1.*", "mlp.fc1.*"),
    ("mlp_cross.fc2.*", "mlp.fc2.*"),
)
HEAD_ROWS = (("decoder.norm.*", "head.layernorm.*"), ("decoder.head.*", "head.dense.*"))
# Fixed sin-cos tables (official parameters without gradient; ours are recomputed buffers): checked, never copied.
ENCODER_POSITION_TABLE = "encoder.pos_embed"
REGRESSOR_POSITION_TABLE = "rd_pos_embed"
# The official regressor's final norm, which CAE v2 never applies (docs/method.md#regressor): dropped in, written as identity out.
UNUSED_REGRESSOR_NORM = ("regresser.norm.weight", "regresser.norm.bias")
# What an encoder released with LW-DETR (`caev2_{tiny,small,base}_300e_objects365.pth`) need not hold: LW-DETR's loader
# (`Backbone` in Atten4Vis/LW-DETR `models/backbone/backbone.py`) strips `encoder.` and reads only the patch embedding,
# `pos_embed` and the blocks into a ViT that has neither [CLS] nor a final norm. Given neutral values when absent.
TENSORS_DETECTION_RELEASES_MAY_LACK = ("encoder.cls_token", "encoder.norm.weight", "encoder.norm.bias")
CONTAINER_KEYS = ("model", "state_dict", "module")
OFFICIAL_CHECKPOINT_NAME = "checkpoint.pth"


def _rows(official_prefix: str, our_prefix: str, rows: tuple) -> list[tuple[str, tuple[str, ...]]]:
    """Prefix a group of rows and expand `.*` into `.weight` and `.bias`."""
    table = []
    for official, ours in rows:
        ours = (ours,) if isinstance(ours, str) else ours
        for suffix in ("weight", "bias") if official.endswith(".*") else ("",):
            our_names = tuple(our_prefix + name.replace("*", suffix) for name in ours)
            table.append((official_prefix + official.replace("*", suffix), our_names))
    return table


def build_key_table(config: CAEv2Config, include_pretraining: bool) -> list[tuple[str, tuple[str, ...]]]:
    """`(official name, our names)` for every trained tensor, encoder first; the regressor and head on request."""
    table = _rows("", "", EMBEDDING_ROWS)
    for index in range(config.num_hidden_layers):
        table += _rows(f"encoder.blocks.{index}.", f"caev2.encoder.layers.{index}.", ENCODER_BLOCK_ROWS)
    table += _rows("", "", ENCODER_NORM_ROWS)
    if not include_pretraining:
        return table
    if config.regressor_hidden_size != config.hidden_size:
        table += _rows("", "", PROJECTION_ROWS)
    table += _rows("", "", REGRESSOR_ROWS)
    for index in range(config.regressor_num_hidden_layers):
        table += _rows(f"regresser.regressor_blocks.{index}.", f"regressor.layers.{index}.", REGRESSOR_BLOCK_ROWS)
    return table + _rows("", "", HEAD_ROWS)


def build_position_tables(config: CAEv2Config, include_pretraining: bool) -> dict[str, torch.Tensor]:
    """The official fixed tables `(1, 1 + num_patches, width)` as our modeling code computes them."""
    grid = config.image_size // config.patch_size
    widths = {ENCODER_POSITION_TABLE: config.hidden_size}
    if include_pretraining:
        widths[REGRESSOR_POSITION_TABLE] = config.regressor_hidden_size
    return {name: build_2d_sincos_position_embedding(grid, grid, width)[None] for name, width in widths.items()}


def compute_our_shapes(config: CAEv2Config) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor of `CAEv2ForPreTraining`, read from a model built on the meta device (no memory)."""
    with torch.device("meta"):
        model = CAEv2ForPreTraining(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def check_keys(state_dict: dict, expected_shapes: dict, optional: tuple[str, ...] = ()) -> None:
    """Refuse unknown, missing and mis-shaped keys, naming every one of them."""
    unknown = sorted(set(state_dict) - set(expected_shapes))
    missing = sorted(set(expected_shapes) - set(state_dict) - set(optional))
    misshaped = [
        f"{name} {tuple(state_dict[name].shape)} (expected {shape})"
        for name, shape in expected_shapes.items()
        if name in state_dict and tuple(state_dict[name].shape) != tuple(shape)
    ]
    problems = [
        (label, names) for label, names in (("unknown", unknown), ("missing", missing), ("mis-shaped", misshaped))
    ]
    if any(names for _, names in problems):
        listing = "; ".join(
            f"{len(names)} {label}: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}"
            for label, names in problems
            if names
        )
        raise UserError(
            f"The checkpoint does not match the expected CAE v2 layout: {listing}. Check --size (and --pretraining "
            "for a full pretraining checkpoint)."
        )


def check_position_tables(state_dict: dict, expected: dict[str, torch.Tensor]) -> None:
    """An official fixed table must equal ours: a mismatch means another architecture or a transposed grid."""
    for name, table in expected.items():
        if name not in state_dict or state_dict[name].device.type == "meta":
            continue
        found = state_dict[name].float()
        tolerance = max(1e-4, torch.finfo(state_dict[name].dtype).eps)
        if found.shape != table.shape or not torch.allclose(found, table, atol=tolerance, rtol=0):
            difference = (found - table).abs().max().item() if found.shape == table.shape else "shape"
            raise ValueError(
                f"{name} is not the fixed 2-D sin-cos table of this configuration (max difference {difference}; "
                f"shape {tuple(found.shape)} vs {tuple(table.shape)}). A column-first (MAE-style) table or another "
                f"image/patch size gives this: the converted model would compute different features, so refusing."
            )


def unwrap_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The tensors of `{"model": ...}`, `{"state_dict": ...}`, `{"module": ...}` or a bare state dict."""
    for key in CONTAINER_KEYS:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    not_tensors = sorted(name for name, value in checkpoint.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        listing = ", ".join(not_tensors)
        raise UserError(
            f"Expected a state dict (or one under {CONTAINER_KEYS}); found non-tensor entries {listing}: this is not "
            "a CAE v2 checkpoint."
        )
    return checkpoint


def normalize_official_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released encoder files may drop the `encoder.` prefix; put it back so one table serves every file."""
    if any(name.startswith("encoder.") for name in state_dict):
        return dict(state_dict)
    return {f"encoder.{name}": tensor for name, tensor in state_dict.items()}


def load_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load an official `.pth` without running arbitrary pickled code, unwrapped and `encoder.`-prefixed."""
    check_checkpoint_file(path)
    try:
        # The official training script stores its argparse.Namespace next to the weights: a plain bag of values.
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" not in str(error) and "Weights only" not in str(error):
            raise UserError(
                f"--checkpoint {path} is damaged ({str(error).splitlines()[0]}): download or copy it again."
            ) from error
        raise UserError(
            f"{path} is not a plain state dict: it pickles objects that torch.load(weights_only=True) refuses to run "
            f"({str(error).splitlines()[0]}). Only if you trust its source, re-save its tensors with "
            f"torch.save({{'model': checkpoint['model']}}, 'plain.pth') and convert that file."
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, IndexError, KeyError) as error:
        # A truncated or damaged file fails inside the zip reader or the unpickler with an internal message.
        raise UserError(
            f"--checkpoint {path} is truncated or damaged ({type(error).__name__}: {str(error).splitlines()[0]}): "
            "download or copy it again."
        ) from error
    if not isinstance(checkpoint, dict):
        raise UserError(f"--checkpoint {path} holds a {type(checkpoint).__name__}, not a state dict.")
    return normalize_official_keys(unwrap_state_dict(checkpoint))


def complete_detection_release(state_dict: dict[str, torch.Tensor], config: CAEv2Config) -> dict[str, torch.Tensor]:
    """An encoder file holding only what LW-DETR loads gets a zero [CLS] token and an identity final norm (logged):
    detection never reads them, but the [CLS] feature of the converted encoder then means nothing."""
    missing = [name for name in TENSORS_DETECTION_RELEASES_MAY_LACK if name not in state_dict]
    if not missing or "encoder.patch_embed.proj.weight" not in state_dict:
        return state_dict
    reference = state_dict["encoder.patch_embed.proj.weight"]
    neutral = {
        "encoder.cls_token": reference.new_zeros(1, 1, config.hidden_size),
        "encoder.norm.weight": reference.new_ones(config.hidden_size),
        "encoder.norm.bias": reference.new_zeros(config.hidden_size),
    }
    logger.warning(
        "The checkpoint lacks %s, as the CAE v2 encoders released with LW-DETR may: set to a zero [CLS] token and an "
        "identity norm. Detection (LW-DETR) does not use them; the converted encoder's [CLS] / pooled feature is not "
        "pretrained.",
        ", ".join(missing),
    )
    return {**state_dict, **{name: neutral[name] for name in missing}}


def drop_pretraining_tensors(state_dict: dict, config: CAEv2Config) -> dict[str, torch.Tensor]:
    """For an encoder-only conversion, set aside the regressor and head of a full checkpoint (logged)."""
    encoder_keys = {official for official, _ in build_key_table(config, include_pretraining=False)}
    pretraining_keys = {official for official, _ in build_key_table(config, include_pretraining=True)}
    pretraining_keys = (pretraining_keys - encoder_keys) | {REGRESSOR_POSITION_TABLE, *UNUSED_REGRESSOR_NORM}
    dropped = sorted(name for name in state_dict if name in pretraining_keys)
    if dropped:
        logger.info("Dropping %d regressor/head tensors; pass --pretraining to keep them.", len(dropped))
    return {name: tensor for name, tensor in state_dict.items() if name not in pretraining_keys}


def convert_official_state_dict(
    official_state_dict: dict[str, torch.Tensor], config: CAEv2Config, pretraining: bool = False
) -> dict[str, torch.Tensor]:
    """Official tensors -> `CAEv2ForPreTraining` names (encoder keys under `caev2.`), dtype kept.

    Args:
        official_state_dict: Official tensors, with or without the `encoder.` prefix.
        config: The architecture the tensors belong to.
        pretraining: Convert the regressor and head too (a full pretraining checkpoint); otherwise they are dropped.
    """
    state_dict = normalize_official_keys(official_state_dict)
    if not pretraining:
        state_dict = complete_detection_release(drop_pretraining_tensors(state_dict, config), config)
    table, our_shapes = build_key_table(config, pretraining), compute_our_shapes(config)
    position_tables = build_position_tables(config, pretraining)
    expected = {official: _concatenated_shape([our_shapes[name] for name in ours]) for official, ours in table}
    expected.update({name: tuple(table.shape) for name, table in position_tables.items()})
    if pretraining:
        expected.update({name: (config.regressor_hidden_size,) for name in UNUSED_REGRESSOR_NORM})
    check_keys(state_dict, expected, optional=(*position_tables, *UNUSED_REGRESSOR_NORM))
    check_position_tables(state_dict, position_tables)
    converted = {}
    for official, ours in table:
        parts = state_dict[official].chunk(len(ours)) if len(ours) > 1 else (state_dict[official],)
        # Split parts are cloned so each tensor owns its storage (safetensors refuses shared tensors).
        converted.update(
            {name: part.clone() if len(ours) > 1 else part for name, part in zip(ours, parts, strict=True)}
        )
    return converted


def _concatenated_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    return (sum(shape[0] for shape in shapes), *shapes[0][1:])


def convert_to_official_state_dict(
    state_dict: dict[str, torch.Tensor], config: CAEv2Config
) -> dict[str, torch.Tensor]:
    """Our tensors (a `CAEv2Model` or `CAEv2ForPreTraining` state dict) -> the official layout, fixed tables included.

    A pretraining state dict also gets the regressor, the head and the official unused norm as an identity; its
    teacher is left out (the authors' files never hold it).
    """
    state_dict = {name: tensor for name, tensor in state_dict.items() if not name.startswith("teacher.")}
    if not any(name.startswith("caev2.") for name in state_dict):
        state_dict = {f"caev2.{name}": tensor for name, tensor in state_dict.items()}
    pretraining = any(name.startswith("regressor.") for name in state_dict)
    table, our_shapes = build_key_table(config, pretraining), compute_our_shapes(config)
    check_keys(state_dict, {name: our_shapes[name] for _, ours in table for name in ours})
    official = {name: torch.cat([state_dict[our_name] for our_name in ours]) for name, ours in table}
    reference = state_dict["caev2.embeddings.cls_token"]
    for name, position_table in build_position_tables(config, pretraining).items():
        official[name] = position_table.to(dtype=reference.dtype, device=reference.device)
    if pretraining:
        official[UNUSED_REGRESSOR_NORM[0]] = reference.new_ones(config.regressor_hidden_size)
        official[UNUSED_REGRESSOR_NORM[1]] = reference.new_zeros(config.regressor_hidden_size)
    return official


def compute_official_encoder_output(
    state_dict: dict[str, torch.Tensor], config: CAEv2Config, pixel_values: torch.Tensor
) -> torch.Tensor:
    """The official encoder's output (after its final norm) computed from its own tensors with plain torch ops.

    Independent of our modules: it reads the fused qkv and the gammas directly. The position table is computed exactly
    (the stored one, possibly rounded to half precision, is compared with it by `check_position_tables`).
    """
    tensors = {name: value.float() for name, value in normalize_official_keys(state_dict).items()}
    grid = config.image_size // config.patch_size
    positions = build_2d_sincos_position_embedding(grid, grid, config.hidden_size)
    weight, bias = tensors["encoder.patch_embed.proj.weight"], tensors["encoder.patch_embed.proj.bias"]
    patches = F.conv2d(pixel_values, weight, bias, stride=config.patch_size).flatten(2).transpose(1, 2)
    cls_tokens = tensors["encoder.cls_token"].expand(len(patches), -1, -1)
    hidden_states = torch.cat([cls_tokens, patches], dim=1) + positions
    for index in range(config.num_hidden_layers):
        hidden_states = _official_block_forward(tensors, f"encoder.blocks.{index}.", hidden_states, config)
    return _layer_norm(tensors, "encoder.norm", hidden_states, config)


def _layer_norm(tensors: dict, name: str, hidden_states: torch.Tensor, config: CAEv2Config) -> torch.Tensor:
    weight, bias = tensors[f"{name}.weight"], tensors[f"{name}.bias"]
    return F.layer_norm(hidden_states, weight.shape, weight, bias, config.layer_norm_eps)


def _linear(tensors: dict, name: str, hidden_states: torch.Tensor) -> torch.Tensor:
    return F.linear(hidden_states, tensors[f"{name}.weight"], tensors[f"{name}.bias"])


def _official_block_forward(
    tensors: dict, block: str, hidden_states: torch.Tensor, config: CAEv2Config
) -> torch.Tensor:
    """One official `Block`: fused qkv with bias `(q_bias, 0, v_bias)`, then `x + gamma * f(norm(x))` twice."""
    batch_size, length, width = hidden_states.shape
    q_bias, v_bias = tensors[block + "attn.q_bias"], tensors[block + "attn.v_bias"]
    qkv_bias = torch.cat([q_bias, torch.zeros_like(v_bias), v_bias])
    normed = _layer_norm(tensors, block + "norm1", hidden_states, config)
    qkv = F.linear(normed, tensors[block + "attn.qkv.weight"], qkv_bias)
    query, key, value = qkv.reshape(batch_size, length, 3, config.num_attention_heads, -1).permute(2, 0, 3, 1, 4)
    weights = (query * query.shape[-1] ** -0.5 @ key.transpose(-2, -1)).softmax(dim=-1)
    attended = (weights @ value).transpose(1, 2).reshape(batch_size, length, width)
    hidden_states = hidden_states + tensors[block + "gamma_1"] * _linear(tensors, block + "attn.proj", attended)
    normed = _layer_norm(tensors, block + "norm2", hidden_states, config)
    mlp_output = _linear(tensors, block + "mlp.fc2", F.gelu(_linear(tensors, block + "mlp.fc1", normed)))
    return hidden_states + tensors[block + "gamma_2"] * mlp_output


def check_encoder_matches_official(model: PreTrainedModel, official_state_dict: dict, config: CAEv2Config) -> float:
    """Compare the converted encoder with the official computation on a random image; returns the relative error."""
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, config.num_channels, config.image_size, config.image_size, generator=generator)
    with torch.no_grad():
        ours = model.base_model.float().eval()(pixel_values).last_hidden_state
        reference = compute_official_encoder_output(official_state_dict, config, pixel_values)
    # Relative to the output's scale: float noise is ~1e-6, a wrong placement of any tensor is of order 1.
    difference = ((ours - reference).abs().max() / reference.abs().max().clamp_min(1e-12)).item()
    if not difference < 1e-4:
        raise RuntimeError(f"The converted encoder differs from the official computation (relative {difference:.3g}).")
    return difference


def build_converted_model(
    converted: dict[str, torch.Tensor], config: CAEv2Config, pretraining: bool
) -> PreTrainedModel:
    """`CAEv2ForPreTraining` (full checkpoints) or `CAEv2Model` (encoder only) holding the converted tensors."""
    if pretraining:
        model = CAEv2ForPreTraining(config)
        # The authors' files hold no teacher: it keeps its built state, flagged as never loaded, until the folder's
        # `load_teacher()` fetches it (docs/design.md#teacher).
        teacher = {name: tensor for name, tensor in model.state_dict().items() if name.startswith("teacher.")}
        converted = {**teacher, **converted}
    else:
        model = CAEv2Model(config)
        converted = {name.removeprefix("caev2."): tensor for name, tensor in converted.items()}
    model.load_state_dict(converted, strict=True)
    return model.eval()


def convert_official_checkpoint(
    checkpoint: str | Path,
    size: str,
    output_dir: str | Path,
    pretraining: bool = False,
    model_id: str | None = None,
    released_by_authors: bool = False,
) -> PreTrainedModel:
    """Official `.pth` -> a folder `from_pretrained` loads (weights, config, image processor, code, card), with the
    converter's record `conversion.json` (the file, its sha256, the check's difference). Only for a file the authors
    released (`released_by_authors`, the user's word: nothing in a file tells the authors' training from another
    run of their code) does the card quote the paper's numbers as these weights'."""
    official = load_official_state_dict(checkpoint)
    config = CAEv2Config.from_preset(size)
    if not pretraining:
        official = complete_detection_release(official, config)
    dtype = official["encoder.patch_embed.proj.weight"].dtype
    model = build_converted_model(convert_official_state_dict(official, config, pretraining), config, pretraining)
    difference = check_encoder_matches_official(model, official, config)
    logger.info("Converted encoder matches the official computation (relative difference %.2e).", difference)
    record = {
        "checkpoint_file": Path(checkpoint).name,
        "sha256": hash_file(checkpoint),
        "size": size,
        "pretraining": pretraining,
        "released_by_authors": released_by_authors,
        "relative_difference": difference,
    }
    prepare_folder(model.to(dtype), output_dir, size=size, model_id=model_id, conversion=record)
    return model


def hash_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_official_checkpoint(folder: str | Path, output_dir: str | Path) -> Path:
    """Our folder -> `output_dir/checkpoint.pth` as `{"model": official_state_dict}`, for the authors' code."""
    folder = Path(folder)
    config = CAEv2Config.from_pretrained(folder)
    state_dict = {}
    for weights_file in sorted(folder.glob("*.safetensors")):
        state_dict.update(load_file(weights_file))
    output_file = Path(output_dir) / OFFICIAL_CHECKPOINT_NAME
    output_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": convert_to_official_state_dict(state_dict, config)}, output_file)
    return output_file


def main(args: argparse.Namespace) -> None:
    """Runs the command on arguments from `caev2_hf_cli.hub.parse_convert_arguments` (checked there)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.to_official:
        logger.info("Wrote %s", export_official_checkpoint(args.checkpoint, args.output_dir))
        return
    convert_official_checkpoint(
        args.checkpoint, args.size, args.output_dir, args.pretraining, args.hub_model_id, args.released_by_authors
    )
    logger.info("Wrote %s", args.output_dir)
    if args.push_to_hub:
        try:
            push_folder(args.output_dir, args.hub_model_id, private=not args.public)
        except UserError as error:
            raise UserError(
                f"{error} The converted folder {args.output_dir} is complete: upload it with `caev2-hub push --folder "
                f"{args.output_dir} --repo_id {args.hub_model_id}`{' --public' if args.public else ''}."
            ) from None


if __name__ == "__main__":  # the command `caev2-convert-checkpoint`, which starts faster (it parses before torch)
    run_command(main, run_command(parse_convert_arguments))
