# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""A CAE v2 encoder inside transformers' LW-DETR (docs/detection.md#from-an-encoder-to-lw-detr).

LW-DETR (Chen et al. 2024, `Atten4Vis/LW-DETR`) is a real-time DETR whose plain ViT encoder the authors initialise
from CAE v2: ViT-Tiny for LW-DETR-tiny and -small, ViT-Small for -medium and -large, ViT-Base for -xlarge, keeping the
first 6 or 10 of its 12 blocks. `build_lwdetr_from_caev2` does the same with any CAE v2 encoder folder: it builds
`LwDetrForObjectDetection` for one of the five sizes and copies the encoder's patch embedding, sin-cos table and
blocks into its `LwDetrViTBackbone`; the projector, the decoder and the heads start fresh.
"""

import os
from dataclasses import dataclass, field

import torch
from transformers import DeformableDetrImageProcessor, LwDetrConfig, LwDetrForObjectDetection
from transformers.utils import logging

from caev2_hf_cli.checks import check_model_path

from ...configuration_caev2 import CAEV2_PRESETS, CAEv2Config, per_channel
from ...modeling_caev2 import CAEv2Model, build_2d_sincos_position_embedding


logger = logging.get_logger(__name__)

VIT_PREFIX = "model.backbone.backbone."  # LwDetrForObjectDetection -> LwDetrModel -> LwDetrConvEncoder -> ViT


@dataclass(frozen=True)
class LwDetrSize:
    """One LW-DETR size as the authors train it (`scripts/lwdetr_<size>_coco_train.sh` of Atten4Vis/LW-DETR).

    Block indices are 0-based, as in the scripts' `--window_block_indexes` and `--out_feature_indexes`.
    """

    encoder_preset: str  # the CAE v2 encoder the authors start from (its width and heads)
    num_hidden_layers: int  # --vit_encoder_num_layers: the first blocks of the 12-block encoder
    window_block_indices: tuple[int, ...]  # blocks attending within windows; the others attend globally
    out_block_indices: tuple[int, ...]  # blocks whose outputs feed the projector
    projector_scale_factors: tuple[float, ...]  # --projector_scale P4 -> (1.0,); P3 P5 -> (2.0, 0.5)
    d_model: int  # --hidden_dim
    decoder_self_attention_heads: int  # --sa_nheads
    decoder_cross_attention_heads: int  # --ca_nheads
    decoder_n_points: int  # --dec_n_points
    num_queries: int  # --num_queries (default 300)


TEN_BLOCKS = {"num_hidden_layers": 10, "window_block_indices": (0, 1, 3, 6, 7, 9), "out_block_indices": (2, 4, 5, 9)}
ONE_SCALE = {"projector_scale_factors": (1.0,), "d_model": 256, "decoder_n_points": 2}
ONE_SCALE_HEADS = {"decoder_self_attention_heads": 8, "decoder_cross_attention_heads": 16}
TWO_SCALES = {"projector_scale_factors": (2.0, 0.5), "d_model": 384, "decoder_n_points": 4}
TWO_SCALES_HEADS = {"decoder_self_attention_heads": 12, "decoder_cross_attention_heads": 24}
LWDETR_SIZES = {
    "tiny": LwDetrSize("tiny", 6, (0, 2, 4), (1, 3, 5), **ONE_SCALE, **ONE_SCALE_HEADS, num_queries=100),  # fmt: skip
    "small": LwDetrSize("tiny", **TEN_BLOCKS, **ONE_SCALE, **ONE_SCALE_HEADS, num_queries=300),
    "medium": LwDetrSize("small", **TEN_BLOCKS, **ONE_SCALE, **ONE_SCALE_HEADS, num_queries=300),
    "large": LwDetrSize("small", **TEN_BLOCKS, **TWO_SCALES, **TWO_SCALES_HEADS, num_queries=300),
    "xlarge": LwDetrSize("base", **TEN_BLOCKS, **TWO_SCALES, **TWO_SCALES_HEADS, num_queries=300),
}
LWDETR_PATCH_SIZE = 16
LWDETR_NUM_WINDOWS = 16  # 4 x 4 windows: the input's patch grid must be a multiple of 4 on each side
DEFAULT_IMAGE_SIZE = 640  # the authors' evaluation resolution (square resize)
SIZE_MULTIPLE = 64  # 16-pixel patches in 4 x 4 windows: each side a whole number of windows
SCALE_RANGE = (0.7, 1.4)  # the authors' square training sizes, 448 ... 896 at 640


def square_sizes(image_size: int, multiple: int = SIZE_MULTIPLE) -> list[int]:
    """The multi-scale training sizes: multiples of `multiple` (patch x windows per side) from 0.7x to 1.4x
    `image_size` (448, 512, ..., 896 at 640)."""
    low, high = (factor * image_size for factor in SCALE_RANGE)
    sizes = [size for size in range(multiple, int(high) + 1, multiple) if size >= low]
    return sorted(set(sizes) | {image_size})


def build_lwdetr_config(
    size: str,
    id2label: dict[int, str],
    encoder_config: CAEv2Config,
    image_size: int = DEFAULT_IMAGE_SIZE,
    backbone_overrides: dict | None = None,
    **overrides,
) -> LwDetrConfig:
    """The `LwDetrConfig` of an LW-DETR size, its ViT at the size's published geometry (width, heads, MLP ratio,
    patch 16) and at the encoder's pretraining resolution, norm epsilon and activation.

    Args:
        size: `"tiny"`, `"small"`, `"medium"`, `"large"` or `"xlarge"` (`LWDETR_SIZES`).
        id2label: The detector's classes.
        encoder_config: The CAE v2 encoder the ViT will be initialised from.
        image_size: Training and inference resolution (square); a multiple of 64 (16-pixel patches, 4 x 4 windows).
        backbone_overrides: `LwDetrViTConfig` fields replacing the size's (small test models).
        overrides: `LwDetrConfig` fields replacing the size's (`num_queries`, `group_detr`, loss weights, ...).
    """
    if size not in LWDETR_SIZES:
        raise ValueError(f"Unknown LW-DETR size {size!r}: choose one of {', '.join(LWDETR_SIZES)}.")
    spec = LWDETR_SIZES[size]
    encoder = CAEV2_PRESETS[spec.encoder_preset]
    backbone = {
        "model_type": "lw_detr_vit",
        "hidden_size": encoder["hidden_size"],
        "num_attention_heads": encoder["num_attention_heads"],
        "mlp_ratio": encoder["intermediate_size"] // encoder["hidden_size"],
        "num_hidden_layers": spec.num_hidden_layers,
        "window_block_indices": list(spec.window_block_indices),
        # transformers' stage k is the output of block k - 1 ("stem" is the patch embedding)
        "out_features": [f"stage{index + 1}" for index in spec.out_block_indices],
        "patch_size": LWDETR_PATCH_SIZE,
        "num_windows": LWDETR_NUM_WINDOWS,
        "image_size": image_size,
        "pretrain_image_size": encoder_config.image_size,
        "layer_norm_eps": encoder_config.layer_norm_eps,
        "hidden_act": encoder_config.hidden_act,
    }
    backbone.update(backbone_overrides or {})
    fields = {
        "projector_scale_factors": list(spec.projector_scale_factors),
        "d_model": spec.d_model,
        "decoder_self_attention_heads": spec.decoder_self_attention_heads,
        "decoder_cross_attention_heads": spec.decoder_cross_attention_heads,
        "decoder_n_points": spec.decoder_n_points,
        "num_queries": spec.num_queries,
    }
    fields.update(overrides)
    id2label = {int(index): str(name) for index, name in id2label.items()}
    label2id = {name: index for index, name in id2label.items()}
    return LwDetrConfig(backbone_config=backbone, id2label=id2label, label2id=label2id, **fields)


def check_enough_proposals(config: LwDetrConfig, image_size: int) -> None:
    """The decoder's queries start from the best of the projector's tokens: an image must give at least as many,
    also at the smallest training size (`square_sizes`)."""
    backbone = config.backbone_config
    smallest = square_sizes(image_size, backbone.patch_size * backbone.num_windows_side)[0]
    grid = smallest // backbone.patch_size
    tokens = sum(int(grid * scale) ** 2 for scale in config.projector_scale_factors)
    if tokens < config.num_queries:
        raise ValueError(
            f"image_size {image_size} gives {tokens} projector tokens at the smallest training size ({smallest} px), "
            f"fewer than "
            f"num_queries {config.num_queries}: raise image_size or lower num_queries."
        )


def check_encoder_fits(encoder_config: CAEv2Config, config: LwDetrConfig, size: str | None = None) -> None:
    """Refuse, in one line naming every mismatch, an encoder whose blocks cannot become this LW-DETR's ViT."""
    backbone = config.backbone_config
    wanted = {
        "hidden_size": backbone.hidden_size,
        "num_attention_heads": backbone.num_attention_heads,
        "intermediate_size": backbone.hidden_size * backbone.mlp_ratio,
        "patch_size": backbone.patch_size,
        "num_channels": backbone.num_channels,
    }
    mismatches = [
        f"{name} {getattr(encoder_config, name)} (LW-DETR needs {value})"
        for name, value in wanted.items()
        if getattr(encoder_config, name) != value
    ]
    if encoder_config.num_hidden_layers < backbone.num_hidden_layers:
        mismatches.append(
            f"num_hidden_layers {encoder_config.num_hidden_layers} "
            f"(LW-DETR takes the first {backbone.num_hidden_layers})"
        )
    if mismatches:
        fitting = [
            name
            for name, spec in LWDETR_SIZES.items()
            if CAEV2_PRESETS[spec.encoder_preset]["hidden_size"] == encoder_config.hidden_size
        ]
        hint = (
            f"sizes built on a width-{encoder_config.hidden_size} encoder: {', '.join(fitting)}"
            if fitting
            else ("no LW-DETR size has this width")
        )
        raise ValueError(
            f"The CAE v2 encoder does not fit LW-DETR{f'-{size}' if size else ''}'s ViT: {'; '.join(mismatches)}. "
            f"Choose a size whose ViT matches the encoder ({hint})."
        )


def block_tensor_names(index: int) -> list[tuple[str, str]]:
    """`(CAEv2Model name, LwDetrViTBackbone name)` for every tensor of encoder block `index`."""
    ours, theirs = f"encoder.layers.{index}.", f"encoder.layer.{index}."
    pairs = [
        ("layernorm_before", "layernorm_before"),
        ("attention.q_proj", "attention.q_proj"),
        ("attention.v_proj", "attention.v_proj"),
        ("attention.o_proj", "attention.o_proj"),
        ("layernorm_after", "layernorm_after"),
        ("mlp.fc1", "intermediate.fc1"),
        ("mlp.fc2", "intermediate.fc2"),
    ]
    table = [(f"{ours}{a}.{kind}", f"{theirs}{b}.{kind}") for a, b in pairs for kind in ("weight", "bias")]
    table.append((f"{ours}attention.k_proj.weight", f"{theirs}attention.k_proj.weight"))  # no key bias in either
    table += [(f"{ours}layer_scale1.lambda1", f"{theirs}gamma_1"), (f"{ours}layer_scale2.lambda1", f"{theirs}gamma_2")]
    return table


def encoder_tensor_table(num_blocks: int) -> list[tuple[str, str]]:
    """`(CAEv2Model name, LwDetrViTBackbone name)` for the patch embedding and the first `num_blocks` blocks."""
    table = [
        ("embeddings.patch_embeddings.projection.weight", "embeddings.projection.weight"),
        ("embeddings.patch_embeddings.projection.bias", "embeddings.projection.bias"),
    ]
    for index in range(num_blocks):
        table += block_tensor_names(index)
    return table


def map_encoder_to_lwdetr_vit(
    encoder_state: dict[str, torch.Tensor], encoder_config: CAEv2Config, num_blocks: int
) -> dict[str, torch.Tensor]:
    """`CAEv2Model` tensors -> `LwDetrViTBackbone` tensors (names relative to the ViT).

    The fixed sin-cos table, a buffer the encoder recomputes rather than saves, becomes LW-DETR's trainable absolute
    position embedding at the pretraining grid, [CLS] row (zero) included: LW-DETR drops that row and resizes the
    rest (bicubic) to each input's grid, as the authors' ViT does. [CLS], the final LayerNorm and blocks beyond
    `num_blocks` have no place in LW-DETR's ViT and are left out.
    """
    mapped = {theirs: encoder_state[ours] for ours, theirs in encoder_tensor_table(num_blocks)}
    grid = encoder_config.image_size // encoder_config.patch_size
    mapped["embeddings.position_embeddings"] = build_2d_sincos_position_embedding(
        grid, grid, encoder_config.hidden_size
    )[None]
    return mapped


@dataclass
class EncoderLoadingReport:
    """What `build_lwdetr_from_caev2` took from the encoder and what it left to training."""

    source: str
    encoder_config: CAEv2Config  # the encoder's: its normalisation is the detector's image processor's
    loaded: dict[str, str] = field(default_factory=dict)  # LW-DETR name -> encoder name (or "sin-cos table")
    unused: list[str] = field(default_factory=list)  # encoder tensors LW-DETR has no place for
    fresh: list[str] = field(default_factory=list)  # LW-DETR tensors left at their initialisation

    def summary(self) -> str:
        groups: dict[str, int] = {}
        for name in self.fresh:
            part = name.removeprefix("model.").split(".")[0]
            part = "projector" if name.startswith("model.backbone.projector") else part
            groups[part] = groups.get(part, 0) + 1
        fresh = ", ".join(f"{part} {count}" for part, count in sorted(groups.items()))
        return (
            f"Loaded {len(self.loaded)} ViT tensors from {self.source}; left out {len(self.unused)} encoder tensors "
            f"({summarise_names(self.unused)}); {len(self.fresh)} tensors start fresh ({fresh})."
        )


def summarise_names(names: list[str]) -> str:
    """`[cls_token, layernorm.weight, layernorm.bias, encoder.layers.10.x, ...]` -> short readable groups."""
    blocks = sorted({int(name.split(".")[2]) for name in names if name.startswith("encoder.layers.")})
    others = [name for name in names if not name.startswith("encoder.layers.")]
    parts = others + (
        [f"blocks {blocks[0]}-{blocks[-1]}" if len(blocks) > 1 else f"block {blocks[0]}"] if blocks else []
    )
    return ", ".join(parts) or "none"


def load_caev2_encoder(path: str | os.PathLike) -> tuple[CAEv2Config, dict[str, torch.Tensor]]:
    """Config and fp32 tensors of the encoder in any CAE v2 folder (or Hub id): `CAEv2Model`, `CAEv2ForPreTraining`
    (run_pretrain's `final/` or `final/pretraining/`), a fine-tuned classifier, a converted official checkpoint."""
    path = str(path)
    check_model_path(path, flag="", expected="a CAE v2 encoder folder, e.g. run_pretrain.py's output_dir/final")
    try:
        config_dict, _ = CAEv2Config.get_config_dict(path)
    except OSError as error:
        raise ValueError(
            f"{path} is neither a local folder nor a Hub model one can reach ({str(error).splitlines()[0]}): give a "
            "CAE v2 encoder folder, e.g. run_pretrain's output_dir/final."
        ) from error
    if config_dict.get("model_type") != CAEv2Config.model_type:
        raise ValueError(
            f"{path} holds a {config_dict.get('model_type')!r} model, not a CAE v2 encoder (model_type 'caev2')."
        )
    encoder = CAEv2Model.from_pretrained(path, dtype=torch.float32)
    return encoder.config, encoder.state_dict()


def build_lwdetr_from_caev2(
    encoder_path: str | os.PathLike,
    size: str,
    id2label: dict[int, str],
    image_size: int = DEFAULT_IMAGE_SIZE,
    backbone_overrides: dict | None = None,
    **overrides,
) -> tuple[LwDetrForObjectDetection, EncoderLoadingReport]:
    """`LwDetrForObjectDetection` of an LW-DETR size with its ViT initialised from a CAE v2 encoder folder.

    Args:
        encoder_path: A CAE v2 folder (`load_caev2_encoder`).
        size, id2label, image_size, backbone_overrides, overrides: as for `build_lwdetr_config`.

    Returns:
        The model (training mode) and the `EncoderLoadingReport`, whose summary is logged.
    """
    encoder_config, encoder_state = load_caev2_encoder(encoder_path)
    config = build_lwdetr_config(size, id2label, encoder_config, image_size, backbone_overrides, **overrides)
    check_encoder_fits(encoder_config, config, size)
    check_enough_proposals(config, image_size)
    model = LwDetrForObjectDetection(config)
    report = load_encoder_into_lwdetr(model, encoder_state, encoder_config, str(encoder_path))
    logger.info(report.summary())
    return model, report


def load_encoder_into_lwdetr(
    model: LwDetrForObjectDetection, encoder_state: dict, encoder_config: CAEv2Config, source: str
) -> EncoderLoadingReport:
    """Copy the mapped encoder tensors into `model`'s ViT (shapes checked) and report what was and was not loaded."""
    num_blocks = model.config.backbone_config.num_hidden_layers
    mapped = map_encoder_to_lwdetr_vit(encoder_state, encoder_config, num_blocks)
    vit = model.model.backbone.backbone
    target = vit.state_dict()
    for name, tensor in mapped.items():
        if target[name].shape != tensor.shape:  # check_encoder_fits rules this out; a mapping error would not
            raise ValueError(f"{name}: encoder tensor {tuple(tensor.shape)} vs LW-DETR {tuple(target[name].shape)}.")
    vit.load_state_dict(mapped, strict=False)
    table = dict((theirs, ours) for ours, theirs in encoder_tensor_table(num_blocks))
    table["embeddings.position_embeddings"] = "sin-cos table"
    loaded = {VIT_PREFIX + theirs: ours for theirs, ours in table.items()}
    used = set(table.values())
    return EncoderLoadingReport(
        source=source,
        encoder_config=encoder_config,
        loaded=loaded,
        unused=[name for name in encoder_state if name not in used],
        fresh=[name for name in model.state_dict() if name not in loaded],
    )


def build_lwdetr_image_processor(
    encoder_config: CAEv2Config, image_size: int = DEFAULT_IMAGE_SIZE
) -> DeformableDetrImageProcessor:
    """The processor transformers pairs with LW-DETR: a square resize to `image_size` (the authors' evaluation
    `SquareResize`), the encoder's normalisation, padding with a pixel mask."""
    return DeformableDetrImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=per_channel(encoder_config.image_mean, encoder_config.num_channels),
        image_std=per_channel(encoder_config.image_std, encoder_config.num_channels),
    )


def main(argv: list[str] | None = None) -> str:
    """`python -m caev2_hf.evaluation.detection.lwdetr --encoder FOLDER --class_names a b c --output_dir OUT`: the
    untrained detector with its image processor, a folder `from_pretrained` and `pipeline()` load."""
    from caev2_hf_cli.detection import LwDetrBuildArguments
    from caev2_hf_cli.errors import UserError
    from caev2_hf_cli.parsing import parse_arguments

    (args,) = parse_arguments((LwDetrBuildArguments,), argv, main.__doc__)
    logging.set_verbosity_info()
    id2label = dict(enumerate(args.class_names))
    try:
        model, report = build_lwdetr_from_caev2(args.encoder, args.lwdetr_size, id2label, args.image_size)
    except ValueError as error:
        raise UserError(str(error).splitlines()[0]) from None
    model.save_pretrained(args.output_dir)
    build_lwdetr_image_processor(report.encoder_config, args.image_size).save_pretrained(args.output_dir)
    logger.info(f"Wrote LW-DETR-{args.lwdetr_size} ({len(id2label)} classes) to {args.output_dir}.")
    return args.output_dir


if __name__ == "__main__":
    from caev2_hf_cli.parsing import run_command

    run_command(main)
