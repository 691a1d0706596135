# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Pictures of what a CAE v2 encoder learned: the panels of the command `caev2-visualize` (its help,
`caev2_hf_cli/visualize.py`, says what each shows), computed as arrays (`compute_panels`) and drawn with matplotlib
(`render`). `python -m caev2_hf.visualize` runs the same command.
"""

import argparse
import contextlib
import io
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import AutoConfig
from transformers.utils import logging as transformers_logging

from caev2_hf_cli.errors import UserError
from caev2_hf_cli.parsing import run_command
from caev2_hf_cli.visualize import parse_visualize_arguments

from .configuration_caev2 import CAEv2Config
from .data.decoding import decode_image
from .data.masking import build_mask_generator
from .modeling_caev2 import CAEv2ForPreTraining, CAEv2Model, CAEv2PreTrainedModel
from .modeling_caev2_backbone import CAEv2Backbone, CAEv2UperNetForSemanticSegmentation
from .plots import import_pyplot, missing_matplotlib_message


PRETRAINING_SUBFOLDER = "pretraining"  # where run_pretrain.py puts the full model, under final/
PANEL_INCHES = 2.2  # every panel is a square of this side
DPI = 100
NUM_COLUMNS = 5


@dataclass
class SimilarityMap:
    """Cosine similarity of prediction and target per patch, in image order (row-major), and its group means."""

    per_patch: np.ndarray  # (num_patches,) float
    cls: float
    visible_mean: float
    masked_mean: float


@dataclass
class Panels:
    """Everything one picture shows, as arrays (the figure is drawn from these alone)."""

    image: np.ndarray  # (H, W, 3) uint8: the crop the model sees
    patch_size: int
    mask: np.ndarray  # (num_patches,) bool, row-major, True = masked
    pca: np.ndarray  # (grid_h, grid_w, 3) in [0, 1]
    cls_attention: np.ndarray  # (heads, grid_h, grid_w), each row summing with [CLS] itself to 1
    similarity: SimilarityMap | None = None
    note: str | None = None  # why the pretraining panels are missing, or what their teacher is

    @property
    def grid(self) -> tuple[int, int]:
        return self.image.shape[0] // self.patch_size, self.image.shape[1] // self.patch_size


def load_image(path: str, size: int) -> np.ndarray:
    """The centre square of an image as training decodes it (upright, 8-bit RGB: `decode_image`), resized (bicubic)
    to `size` x `size`: uint8 `(size, size, 3)`."""
    return np.asarray(ImageOps.fit(decode_image(path), (size, size), Image.Resampling.BICUBIC))


def normalise(image: np.ndarray, config: CAEv2Config) -> torch.Tensor:
    """uint8 `(H, W, 3)` -> `(1, 3, H, W)` float, normalised with the student's statistics."""
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(config.image_mean).view(3, 1, 1), torch.tensor(config.image_std).view(3, 1, 1)
    return ((pixels - mean) / std)[None]


def check_image_size(image_size: int, config: CAEv2Config) -> None:
    if image_size <= 0 or image_size % config.patch_size:
        raise UserError(
            f"--image_size {image_size} must be a positive multiple of the patch size {config.patch_size} "
            f"(the model's own is {config.image_size})."
        )


def draw_pretraining_mask(config: CAEv2Config, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """A mask as pretraining draws it: the config's generator and count; on another grid, the same strategy and
    mask ratio. bool `(num_patches,)`, row-major, True = masked."""
    if image_size == config.image_size:
        return build_mask_generator(config)(rng)
    num_patches = (image_size // config.patch_size) ** 2
    count = min(round(config.num_masking_patches * num_patches / config.num_patches), num_patches - 1)
    fields = ("patch_size", "mask_strategy", "mask_min_num_patches", "mask_min_aspect")
    scaled = SimpleNamespace(
        image_size=image_size, num_masking_patches=count, **{name: getattr(config, name) for name in fields}
    )
    return build_mask_generator(scaled)(rng)


def show_mask(image: np.ndarray, mask: np.ndarray, patch_size: int) -> np.ndarray:
    """The image with its masked patches faded to grey (70% grey, 30% image); visible patches are untouched."""
    grid_height, grid_width = image.shape[0] // patch_size, image.shape[1] // patch_size
    pixel_mask = np.kron(mask.reshape(grid_height, grid_width), np.ones((patch_size, patch_size), dtype=bool))
    shown = image.astype(np.float32)
    shown[pixel_mask] = 0.3 * shown[pixel_mask] + 0.7 * 128
    return shown.round().astype(np.uint8)


def pca_rgb(features: torch.Tensor) -> np.ndarray:
    """First three principal components of `(num_patches, dim)` features, each scaled to [0, 1]: `(num_patches, 3)`.

    Features are centred over the patches; each component's sign makes its largest loading positive, so the colours
    do not flip between runs; with fewer than three components the rest stay 0.
    """
    centred = features.double() - features.double().mean(dim=0)
    _, _, components = torch.linalg.svd(centred, full_matrices=False)
    components = components[:3]
    largest = components.gather(1, components.abs().argmax(dim=1, keepdim=True))
    projected = centred @ (components * torch.sign(largest)).T
    low, high = projected.min(dim=0).values, projected.max(dim=0).values
    scaled = (projected - low) / (high - low).clamp_min(1e-12)
    rgb = torch.zeros(features.shape[0], 3, dtype=torch.float64)
    rgb[:, : scaled.shape[1]] = scaled
    return rgb.numpy()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings and progress bars off for a while: what they would say here, this command says."""
    verbosity, progress_bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if progress_bars:
            transformers_logging.enable_progress_bar()


def use_eager_attention(encoder: CAEv2Model | CAEv2Backbone) -> None:
    """Switch to eager attention, the one that returns attention weights (quietly: transformers warns that the
    teacher's sub-config has no sub-model here)."""
    with quiet_transformers():
        encoder.set_attn_implementation("eager")


@torch.no_grad()
def encoder_panels(encoder: CAEv2Model | CAEv2Backbone, pixel_values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """PCA colours `(grid_h, grid_w, 3)` of the patch features (after the final LayerNorm; a segmentation backbone's
    last block output, which has none) and the last block's [CLS] attention to each patch `(heads, grid_h, grid_w)`,
    from one image `(1, 3, H, W)` without a mask."""
    if encoder.config._attn_implementation not in (None, "eager"):
        use_eager_attention(encoder)
    height, width = pixel_values.shape[-2:]
    grid = (height // encoder.config.patch_size, width // encoder.config.patch_size)
    if isinstance(encoder, CAEv2Backbone):  # its blocks with their relative position bias, without the neck
        outputs = encoder.encode(pixel_values, output_attentions=True, output_hidden_states=True)
        features = outputs.hidden_states[-1][0, 1:]
    else:
        outputs = encoder(pixel_values, output_attentions=True, interpolate_pos_encoding=True, return_dict=True)
        features = outputs.last_hidden_state[0, 1:]
    attention = outputs.attentions[-1][0, :, 0, 1:].float()
    return pca_rgb(features).reshape(*grid, 3), attention.reshape(-1, *grid).numpy()


@torch.no_grad()
def similarity_map(
    model: CAEv2ForPreTraining,
    pixel_values: torch.Tensor,
    mask: np.ndarray,
    target_features: torch.Tensor | None = None,
) -> SimilarityMap:
    """Per-patch cosine similarity of the model's predictions and the teacher's targets for one image and mask.

    The forward returns both (`logits`, `targets`) in the order [CLS, visible..., masked...] (each group in ascending
    patch order), both L2-normalised: their dot product is the cosine, scattered back to image order here. With the cosine loss, the
    group means are 1 - `visible_loss` and 1 - `masked_loss`. `target_features` (image order) skip the teacher.
    """
    bool_masked_pos = torch.from_numpy(mask)[None].to(pixel_values.device)
    outputs = model(pixel_values, bool_masked_pos=bool_masked_pos, target_features=target_features, return_dict=True)
    cosine = (outputs.logits.float() * outputs.targets.float()).sum(dim=-1)[0].cpu().numpy()
    visible_ids, masked_ids = np.flatnonzero(~mask), np.flatnonzero(mask)
    per_patch = np.empty(mask.shape[0], dtype=np.float64)
    per_patch[visible_ids] = cosine[1 : 1 + len(visible_ids)]
    per_patch[masked_ids] = cosine[1 + len(visible_ids) :]
    return SimilarityMap(
        per_patch=per_patch,
        cls=float(cosine[0]),
        visible_mean=float(per_patch[visible_ids].mean()),
        masked_mean=float(per_patch[masked_ids].mean()) if len(masked_ids) else float("nan"),
    )


def compute_targets(model: CAEv2ForPreTraining, pixel_values: torch.Tensor) -> tuple[torch.Tensor | None, str | None]:
    """The teacher's targets, or None and why not (e.g. a teacher that never received weights: `--load_teacher`
    fetches them)."""
    try:
        targets = model.compute_target_features(pixel_values)
    except (RuntimeError, ValueError) as error:
        reason = str(error).split(". ")[0].rstrip(".")  # the first sentence fits a picture's title
        return None, f"no similarity panels: {reason} (--load_teacher fetches {model.config.teacher_name_or_path})"
    note = (
        "random teacher (use_random_teacher): its targets carry no knowledge"
        if model.config.use_random_teacher
        else None
    )
    return targets, note


def compute_panels(
    encoder: CAEv2Model,
    image: np.ndarray,
    rng: np.random.Generator,
    pretraining_model: CAEv2ForPreTraining | None = None,
) -> Panels:
    """All panels of one image (uint8 `(H, W, 3)`, a multiple of the patch size)."""
    config = encoder.config
    check_image_size(image.shape[0], config)
    pixel_values = normalise(image, config).to(encoder.device)
    mask = draw_pretraining_mask(config, image.shape[0], rng)
    pca, attention = encoder_panels(encoder, pixel_values)
    panels = Panels(image=image, patch_size=config.patch_size, mask=mask, pca=pca, cls_attention=attention)
    if pretraining_model is None:
        return panels
    if image.shape[0] != pretraining_model.config.image_size:
        panels.note = f"no similarity panels: the regressor and teacher work at {config.image_size} px only"
        return panels
    targets, panels.note = compute_targets(pretraining_model, pixel_values)
    if targets is not None:
        panels.similarity = similarity_map(pretraining_model, pixel_values, mask, targets)
    return panels


def panel_titles(panels: Panels) -> list[str]:
    """Titles of the panels in drawing order (the figure's layout follows from their number)."""
    titles = ["input", f"pretraining mask ({int(panels.mask.sum())} of {panels.mask.size} patches)"]
    if panels.similarity is not None:
        titles += [
            f"cos(prediction, target), visible\nmean {panels.similarity.visible_mean:.3f}",
            f"cos(prediction, target), masked\nmean {panels.similarity.masked_mean:.3f}",
        ]
    titles.append("PCA of patch features (RGB)")
    titles += [f"[CLS] attention, head {head + 1}" for head in range(panels.cls_attention.shape[0])]
    return titles


def figure_pixels(panels: Panels) -> tuple[int, int]:
    """(width, height) of the PNG in pixels."""
    num_panels = len(panel_titles(panels))
    columns, rows = min(NUM_COLUMNS, num_panels), math.ceil(num_panels / NUM_COLUMNS)
    return round(columns * PANEL_INCHES * DPI), round(rows * PANEL_INCHES * DPI)


def render(panels: Panels, path: str, title: str) -> str:
    """Draws the panels into `path` (PNG, `figure_pixels(panels)` in size). Needs matplotlib."""
    pyplot = import_pyplot()
    if pyplot is None:
        raise ImportError(missing_matplotlib_message("visualisation"))
    titles = panel_titles(panels)
    width, height = figure_pixels(panels)
    columns, rows = min(NUM_COLUMNS, len(titles)), math.ceil(len(titles) / NUM_COLUMNS)
    figure, axes = pyplot.subplots(
        rows, columns, figsize=(width / DPI, height / DPI), layout="constrained", squeeze=False
    )
    axes = list(axes.flat)
    image_height, image_width = panels.image.shape[:2]
    extent = (0, image_width, image_height, 0)
    grey = panels.image.mean(axis=2)
    grid = panels.grid

    def heat(axis, values: np.ndarray, colormap: str, low: float, high: float):
        axis.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        return axis.imshow(
            values, cmap=colormap, vmin=low, vmax=high, alpha=0.75, extent=extent, interpolation="nearest"
        )

    panel_axes = iter(axes)
    next(panel_axes).imshow(panels.image, interpolation="nearest")  # the pixels the model sees
    next(panel_axes).imshow(show_mask(panels.image, panels.mask, panels.patch_size), interpolation="nearest")
    if panels.similarity is not None:
        values = panels.similarity.per_patch.reshape(grid)
        low, high = min(0.0, float(values.min())), 1.0
        for shown in (~panels.mask, panels.mask):
            axis = next(panel_axes)
            image = heat(axis, np.ma.masked_where(~shown.reshape(grid), values), "viridis", low, high)
            figure.colorbar(image, ax=axis, fraction=0.046, pad=0.02)
    next(panel_axes).imshow(panels.pca, extent=extent, interpolation="nearest")
    for attention in panels.cls_attention:
        heat(next(panel_axes), attention, "inferno", float(attention.min()), float(attention.max()))
    for axis, text in zip(axes, titles + [""] * (len(axes) - len(titles)), strict=True):
        axis.set_title(text, fontsize=8)
        axis.set_axis_off()
    figure.suptitle(title + (f"\n{panels.note}" if panels.note else ""), fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    pyplot.close(figure)
    with Image.open(buffer) as drawn:  # RGB without the alpha channel, optimised: a third smaller, same picture
        drawn.convert("RGB").save(path, optimize=True)
    return path


def find_pretraining_folder(name_or_path: str) -> str | None:
    """A local folder's own pretraining checkpoint, or its `pretraining/` subfolder (run_pretrain.py's final/)."""
    for folder in (name_or_path, os.path.join(name_or_path, PRETRAINING_SUBFOLDER)):
        if os.path.isfile(os.path.join(folder, "config.json")):
            if "CAEv2ForPreTraining" in (CAEv2Config.from_pretrained(folder).architectures or []):
                return folder
    return None


def load_checked(model_class: type[CAEv2PreTrainedModel], name_or_path: str) -> CAEv2PreTrainedModel:
    """`model_class.from_pretrained`, refusing a checkpoint that leaves a weight other than the teacher's missing:
    the picture would show a random model. transformers' own load report is kept quiet; this says what matters."""
    with quiet_transformers():
        model, loading_info = model_class.from_pretrained(name_or_path, output_loading_info=True)
    missing = sorted(key for key in loading_info["missing_keys"] if not key.startswith("teacher."))
    if missing:
        raise UserError(
            f"--model {name_or_path}: {len(missing)} weights of its {model_class.__name__} are missing from the "
            f"checkpoint (first: {missing[0]}), so the pictures would show a random model: give a CAE v2 folder (a "
            "pretraining final/ folder, an encoder, classifier, backbone or segmentation output folder)."
        )
    return model


def load_encoder(name_or_path: str, config) -> CAEv2Model | CAEv2Backbone:
    """The encoder of a folder without pretraining modules: a segmentation output's backbone (its fine-tuned blocks
    with their relative position bias), a backbone folder, or the `CAEv2Model` of an encoder or classifier."""
    if config.model_type == "upernet":
        if config.backbone_config.model_type != CAEv2Config.model_type:
            raise UserError(
                f"--model {name_or_path} is a UperNet on a {config.backbone_config.model_type!r} backbone, not CAE "
                "v2: give a CAE v2 folder."
            )
        return load_checked(CAEv2UperNetForSemanticSegmentation, name_or_path).backbone
    if config.model_type != CAEv2Config.model_type:
        raise UserError(
            f"--model {name_or_path} holds a {config.model_type!r} model, not CAE v2: give a CAE v2 folder (a "
            "pretraining final/ folder, an encoder, classifier, backbone or segmentation output folder)."
        )
    if "CAEv2Backbone" in (config.architectures or []):
        return load_checked(CAEv2Backbone, name_or_path)
    return load_checked(CAEv2Model, name_or_path)


def load_models(
    name_or_path: str, load_teacher: bool = False, device: str = "cpu"
) -> tuple[CAEv2Model | CAEv2Backbone, CAEv2ForPreTraining | None]:
    """The encoder and, when there is one, the pretraining model (whose encoder it then is), in eval mode."""
    config = AutoConfig.from_pretrained(name_or_path)
    pretraining_folder = find_pretraining_folder(name_or_path) if config.model_type == CAEv2Config.model_type else None
    if pretraining_folder is None and "CAEv2ForPreTraining" in (config.architectures or []):
        pretraining_folder = name_or_path  # a Hub id of a pretraining checkpoint
    if pretraining_folder is None:
        return load_encoder(name_or_path, config).to(device).eval(), None
    model = load_checked(CAEv2ForPreTraining, pretraining_folder)
    if load_teacher:
        model.load_teacher()
    model = model.to(device).eval()
    return model.caev2, model


def output_paths(images: list[str], output_dir: str) -> list[str]:
    """`output_dir/<image stem>.png`, numbered when two images share a stem."""
    stems = [os.path.splitext(os.path.basename(image))[0] for image in images]
    return [
        os.path.join(output_dir, f"{stem}.png" if stems.count(stem) == 1 else f"{stem}-{index}.png")
        for index, stem in enumerate(stems)
    ]


def describe(panels: Panels) -> str:
    text = f"mask {int(panels.mask.sum())}/{panels.mask.size} patches"
    if panels.similarity is not None:
        similarity = panels.similarity
        text += (
            f", cosine to the teacher: visible {similarity.visible_mean:.4f}, masked {similarity.masked_mean:.4f}, "
            f"[CLS] {similarity.cls:.4f}"
        )
    return text + (f" ({panels.note})" if panels.note else "")


def main(args: argparse.Namespace) -> int:
    """Draws the pictures, on arguments from `caev2_hf_cli.visualize.parse_visualize_arguments`; returns the exit
    status: 1 when an image was skipped or matplotlib is missing."""
    torch.manual_seed(args.seed)  # a random teacher is drawn again at load: the same one on every call
    encoder, pretraining_model = load_models(args.model, args.load_teacher, args.device)
    image_size = args.image_size or encoder.config.image_size
    check_image_size(image_size, encoder.config)
    pyplot = import_pyplot()
    rng = np.random.default_rng(args.seed)
    skipped = 0
    for image_path, output_path in zip(args.image, output_paths(args.image, args.output_dir), strict=True):
        try:
            image = load_image(image_path, image_size)
        except (OSError, ValueError) as error:  # missing, empty, corrupt or not an image: the others still get theirs
            print(f"{image_path}: skipped, not a readable image ({type(error).__name__}: {error})", file=sys.stderr)
            skipped += 1
            continue
        panels = compute_panels(encoder, image, rng, pretraining_model)
        if pyplot is not None:
            title = f"{os.path.basename(image_path)}, {args.model} ({image_size} px)"
            render(panels, output_path, title)
            print(f"{output_path}: {describe(panels)}")
        else:
            print(f"{image_path}: {describe(panels)}")
    if skipped:
        print(f"{skipped} of {len(args.image)} image(s) skipped.", file=sys.stderr)
    if pyplot is None:
        print(missing_matplotlib_message("visualisation"), file=sys.stderr)
    return 1 if pyplot is None or skipped else 0


if __name__ == "__main__":  # the command `caev2-visualize`, which starts faster (it parses before torch)
    sys.exit(run_command(main, run_command(parse_visualize_arguments)))
