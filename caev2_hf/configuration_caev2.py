# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""CAE v2 model configuration and the official size presets (docs/method.md#encoder)."""

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Sequence

from transformers import CLIPVisionConfig, PretrainedConfig, UperNetConfig
from transformers.backbone_utils import BackboneConfigMixin


IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# OpenAI CLIP ViT-B/16 at 224 (`openai/clip-vit-base-patch16`), the teacher of every official run
# (docs/method.md#head-and-targets).
CLIP_VIT_B16_TEACHER = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 16,
    "projection_dim": 512,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

# The official architectures and mask counts (docs/method.md#encoder). Tiny and Small use 12 heads, as the authors'
# scripts do.
CAEV2_PRESETS = {
    "tiny": {
        "hidden_size": 192,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 768,
        "num_masking_patches": 30,
        "regressor_num_hidden_layers": 1,
        "regressor_hidden_size": 96,
    },
    "small": {
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
        "num_masking_patches": 49,
        "regressor_num_hidden_layers": 1,
    },
    "base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "num_masking_patches": 98,
        "regressor_num_hidden_layers": 4,
    },
    # No official script exists for Large: regressor depth 4 is assumed, layer scale 1e-5 follows the authors' notes.
    "large": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "num_masking_patches": 98,
        "regressor_num_hidden_layers": 4,
        "layer_scale_init_value": 1e-5,
    },
}

MASK_STRATEGIES = ("block", "random")
LOSS_TYPES = ("cosine", "mse", "smooth_l1")
CLASSIFIER_POOLINGS = ("mean", "cls")
TEACHER_GRID_RESAMPLINGS = (None, "bilinear", "bicubic")


def per_channel(values: float | Sequence[float], num_channels: int, name: str = "image_mean/image_std") -> list[float]:
    """Normalisation statistics as one float per channel: a scalar applies to every channel, as image processors
    accept it."""
    if isinstance(values, int | float):
        return [float(values)] * num_channels
    values = [float(value) for value in values]
    if len(values) != num_channels:
        raise ValueError(
            f"{name}={values} has {len(values)} values for num_channels={num_channels}: give {num_channels} values, "
            "or one number for all channels (set image_mean, image_std, teacher_image_mean and teacher_image_std)."
        )
    return values


class CAEv2Config(BackboneConfigMixin, PretrainedConfig):
    r"""
    Configuration of a CAE v2 model: the ViT encoder (`CAEv2Model`), the latent regressor and head used in pretraining
    (`CAEv2ForPreTraining`), the frozen CLIP teacher, and the classification heads. The defaults give CAE v2 ViT-Base;
    `CAEv2Config.from_preset("tiny" | "small" | "base" | "large")` gives each official size.

    Args:
        image_size (`int`, *optional*, defaults to 224): Input resolution (square).
        patch_size (`int`, *optional*, defaults to 16): Patch side; `image_size` must be a multiple of it.
        num_channels (`int`, *optional*, defaults to 3): Input channels.
        hidden_size (`int`, *optional*, defaults to 768): Encoder width.
        num_hidden_layers (`int`, *optional*, defaults to 12): Encoder depth.
        num_attention_heads (`int`, *optional*, defaults to 12): Encoder heads; must divide `hidden_size`.
        intermediate_size (`int`, *optional*, defaults to 3072): Encoder MLP width.
        hidden_act (`str`, *optional*, defaults to `"gelu"`): MLP activation (exact GELU, as the official code).
        layer_norm_eps (`float`, *optional*, defaults to 1e-6): LayerNorm epsilon everywhere in the student.
        layer_scale_init_value (`float`, *optional*, defaults to 0.1): Initial layer scale of encoder blocks.
        drop_path_rate (`float`, *optional*, defaults to 0.1): Stochastic depth at the last block (linear from 0).
        initializer_range (`float`, *optional*, defaults to 0.02): Std of the truncated normal for tokens and patches.
        regressor_hidden_size (`int`, *optional*): Regressor width; defaults to `hidden_size`. When it differs, a
            Linear + LayerNorm narrows the encoder output (Tiny: 192 -> 96).
        regressor_num_hidden_layers (`int`, *optional*, defaults to 4): Number of cross-attention regressor blocks.
        regressor_num_attention_heads (`int`, *optional*): Regressor heads; defaults to `num_attention_heads`.
        regressor_intermediate_size (`int`, *optional*): Regressor MLP width; defaults to 4 x `regressor_hidden_size`.
        regressor_layer_scale_init_value (`float`, *optional*, defaults to 0.1): Initial layer scale of regressor
            blocks.
        num_masking_patches (`int`, *optional*, defaults to 98): Patches masked per image in pretraining. Every image
            of a batch must have exactly this many masked patches.
        mask_ratio (`float`, *optional*): Alternative to `num_masking_patches`: `round(mask_ratio * num_patches)`.
        mask_strategy (`str`, *optional*, defaults to `"block"`): `"block"` (BEiT block-wise) or `"random"`.
        mask_min_num_patches (`int`, *optional*, defaults to 16): Minimum patches per block in block-wise masking.
        mask_min_aspect (`float`, *optional*, defaults to 0.3): Smallest block aspect ratio (largest is its inverse).
        target_hidden_size (`int`, *optional*, defaults to 512): Head output width; must equal the teacher's
            projection width.
        loss_type (`str`, *optional*, defaults to `"cosine"`): `"cosine"` distance (default), `"mse"` or `"smooth_l1"`.
        supervise_visible (`bool`, *optional*, defaults to `True`): Supervise visible tokens (paper Eq. 1, `dv`).
        supervise_masked (`bool`, *optional*, defaults to `True`): Supervise masked tokens (paper Eq. 1, `dm`).
        supervise_cls (`bool`, *optional*, defaults to `True`): Supervise the [CLS] token (official code).
        teacher_config (`dict` or `CLIPVisionConfig`, *optional*): Architecture of the frozen CLIP teacher; defaults to
            OpenAI CLIP ViT-B/16. A dict may hold only `CLIPVisionConfig` fields: a misspelt key would otherwise be
            kept unused while the teacher takes CLIP's default for the field meant.
        teacher_name_or_path (`str`, *optional*, defaults to `"openai/clip-vit-base-patch16"`): Where
            `CAEv2ForPreTraining.load_teacher()` takes the teacher's weights from.
        use_random_teacher (`bool`, *optional*, defaults to `False`): Allow training against a teacher that never
            received weights (tests, the offline demo). Without it such a run raises.
        teacher_grid_resampling (`str`, *optional*): How to bring teacher patch targets to the student grid when the
            grids differ (`"bilinear"` or `"bicubic"`); `None` refuses a mismatch.
        image_mean / image_std (`float` or `list[float]`, *optional*): Student normalisation (ImageNet statistics);
            a scalar applies to every channel. Stored as one value per channel.
        teacher_image_mean / teacher_image_std (`float` or `list[float]`, *optional*): Teacher normalisation (CLIP
            statistics), as `image_mean` / `image_std`.
        classifier_pooling (`str`, *optional*): The feature the encoder gives and the head a classifier puts on it.
            `"mean"` (fine-tuning, BEiT's head): `CAEv2Model`'s `pooler_output` is the final LayerNorm of the mean of
            the patch tokens, and `CAEv2ForImageClassification` adds a Linear. `"cls"` (linear probe): the [CLS] token
            after the final LayerNorm, then BatchNorm without affine and a Linear. `None` (the default, a pretrained
            encoder): the encoder gives [CLS] after the final LayerNorm, and a classifier built on it takes the
            fine-tuning head `"mean"`, which its own config (and so its saved folder) records, so that `AutoModel` on
            a fine-tuned folder gives the feature its head was trained on. Configs saved with the earlier
            `use_mean_pooling` field load as they pooled, and so do encoder folders saved before it, whose "mean"
            was only the default (`is_encoder_with_the_earliest_default_pooling`).
        out_features / out_indices (`list`, *optional*): Stages `CAEv2Backbone` returns (`stage_names` are `"stem"`,
            then `"stage{i}"` = output of block i, 1-based); default: blocks L/3, L/2, 2L/3, L (4, 6, 8, 12 for
            ViT-B, the authors' 0-based `out_indices=[3, 5, 7, 11]`). See docs/segmentation.md.
        backbone_image_size (`int`, *optional*): Input size `CAEv2Backbone` is trained at (the authors: 512); sizes its
            relative position bias tables. Defaults to `image_size`.
        backbone_relative_position_bias (`bool`, *optional*, defaults to `True`): Per-block relative position bias in
            `CAEv2Backbone`, zero at init (the authors' segmentation backbone).
        backbone_position_table (`str`, *optional*, defaults to `"interpolate"`): `CAEv2Backbone`'s sin-cos table for
            another grid: `"interpolate"` (bicubic resize of the `image_size` grid's table, as the authors) or
            `"exact"` (computed for the input grid).
        backbone_add_fpn (`bool`, *optional*, defaults to `True`): `CAEv2Backbone` turns its 4 feature maps into strides
            4, 8, 16, 32 (transposed convolutions, identity, max-pool), the authors' multi-scale neck.

    Example:

    ```python
    >>> from caev2_hf import CAEv2Config, CAEv2Model
    >>> config = CAEv2Config.from_preset("tiny")
    >>> config.num_masking_patches
    30
    ```"""

    model_type = "caev2"
    sub_configs = {"teacher_config": CLIPVisionConfig}

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-6,
        layer_scale_init_value: float = 0.1,
        drop_path_rate: float = 0.1,
        initializer_range: float = 0.02,
        regressor_hidden_size: int | None = None,
        regressor_num_hidden_layers: int = 4,
        regressor_num_attention_heads: int | None = None,
        regressor_intermediate_size: int | None = None,
        regressor_layer_scale_init_value: float = 0.1,
        num_masking_patches: int = 98,
        mask_ratio: float | None = None,
        mask_strategy: str = "block",
        mask_min_num_patches: int = 16,
        mask_min_aspect: float = 0.3,
        target_hidden_size: int = 512,
        loss_type: str = "cosine",
        supervise_visible: bool = True,
        supervise_masked: bool = True,
        supervise_cls: bool = True,
        teacher_config: dict | CLIPVisionConfig | None = None,
        teacher_name_or_path: str = "openai/clip-vit-base-patch16",
        use_random_teacher: bool = False,
        teacher_grid_resampling: str | None = None,
        image_mean: float | Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: float | Sequence[float] = IMAGENET_DEFAULT_STD,
        teacher_image_mean: float | Sequence[float] = OPENAI_CLIP_MEAN,
        teacher_image_std: float | Sequence[float] = OPENAI_CLIP_STD,
        classifier_pooling: str | None = None,
        classifier_init_scale: float = 0.001,
        out_features: list[str] | None = None,
        out_indices: list[int] | None = None,
        backbone_image_size: int | None = None,
        backbone_relative_position_bias: bool = True,
        backbone_position_table: str = "interpolate",
        backbone_add_fpn: bool = True,
        **kwargs,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.layer_scale_init_value = layer_scale_init_value
        self.drop_path_rate = drop_path_rate
        self.initializer_range = initializer_range
        self.regressor_hidden_size = regressor_hidden_size or hidden_size
        self.regressor_num_hidden_layers = regressor_num_hidden_layers
        self.regressor_num_attention_heads = regressor_num_attention_heads or num_attention_heads
        self.regressor_intermediate_size = regressor_intermediate_size or 4 * self.regressor_hidden_size
        self.regressor_layer_scale_init_value = regressor_layer_scale_init_value
        if mask_ratio is not None:
            num_masking_patches = round(mask_ratio * (image_size // patch_size) ** 2)
        self.num_masking_patches = num_masking_patches
        self.mask_strategy = mask_strategy
        self.mask_min_num_patches = mask_min_num_patches
        self.mask_min_aspect = mask_min_aspect
        self.target_hidden_size = target_hidden_size
        self.loss_type = loss_type
        self.supervise_visible = supervise_visible
        self.supervise_masked = supervise_masked
        self.supervise_cls = supervise_cls
        if teacher_config is None:
            teacher_config = CLIPVisionConfig(**CLIP_VIT_B16_TEACHER)
        elif isinstance(teacher_config, dict):
            check_teacher_config_keys(teacher_config)
            teacher_config = CLIPVisionConfig(**teacher_config)
        self.teacher_config = teacher_config
        self.teacher_name_or_path = teacher_name_or_path
        self.use_random_teacher = use_random_teacher
        self.teacher_grid_resampling = teacher_grid_resampling
        self.image_mean = per_channel(image_mean, num_channels, "image_mean")
        self.image_std = per_channel(image_std, num_channels, "image_std")
        self.teacher_image_mean = per_channel(teacher_image_mean, num_channels, "teacher_image_mean")
        self.teacher_image_std = per_channel(teacher_image_std, num_channels, "teacher_image_std")
        if "use_mean_pooling" in kwargs:  # a config saved before classifier_pooling alone decided the pooling
            classifier_pooling = pooling_of_earlier_config(classifier_pooling, kwargs.pop("use_mean_pooling"))
        self.classifier_pooling = classifier_pooling
        self.classifier_init_scale = classifier_init_scale
        self.backbone_image_size = backbone_image_size or image_size
        self.backbone_relative_position_bias = backbone_relative_position_bias
        self.backbone_position_table = backbone_position_table
        self.backbone_add_fpn = backbone_add_fpn
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, num_hidden_layers + 1)]
        if out_features is None and out_indices is None:
            out_indices = default_backbone_out_indices(num_hidden_layers)
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        super().__init__(**kwargs)
        self._validate()

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def argument_names(cls) -> set[str]:
        """The arguments of this class's `__init__` (its own fields)."""
        return set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}

    @classmethod
    def field_names(cls) -> set[str]:
        """What a CAE v2 config holds: this class's arguments and what a saved config.json carries besides."""
        common = {field.name for field in dataclasses.fields(PretrainedConfig)}
        extra = {"num_labels", "attn_implementation", "output_attentions", "stage_names", "model_type"}
        return cls.argument_names() | common | extra

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "CAEv2Config":
        """The official architecture of size `name` (tiny, small, base, large); keyword arguments override fields,
        and a name that is no field is refused (a typo would otherwise be kept as an unused attribute)."""
        if name not in CAEV2_PRESETS:
            raise ValueError(f"Unknown CAE v2 preset {name!r}: choose one of {sorted(CAEV2_PRESETS)}.")
        fields = cls.field_names()
        unknown = sorted(set(overrides) - fields)
        if unknown:
            close = difflib.get_close_matches(unknown[0], fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"{unknown[0]!r} is not a CAEv2Config field{hint}; the fields are listed in its docstring."
            )
        return cls(**{**CAEV2_PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """As transformers', except that overrides of this class's arguments (`from_pretrained(folder,
        image_size=384)`) go through `__init__`, so they are checked and what derives from them follows
        (`mask_ratio` sets `num_masking_patches`) instead of being set on the finished config unchecked. A
        `teacher_config` dict override changes only the fields it names, and only `CLIPVisionConfig` fields."""
        own = cls.argument_names()
        overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in own}
        config_dict = dict(config_dict)
        if is_encoder_with_the_earliest_default_pooling(config_dict):
            config_dict["classifier_pooling"] = None
        saved_teacher = config_dict.get("teacher_config")
        if isinstance(saved_teacher, dict):  # as transformers wrote it, with whatever keys its version adds
            teacher_overrides = overrides.pop("teacher_config", None)
            if isinstance(teacher_overrides, dict):
                check_teacher_config_keys(teacher_overrides)
                saved_teacher = {**saved_teacher, **teacher_overrides}
            elif teacher_overrides is not None:
                saved_teacher = teacher_overrides
            config_dict["teacher_config"] = (
                CLIPVisionConfig(**saved_teacher) if isinstance(saved_teacher, dict) else saved_teacher
            )
        if "mask_ratio" in overrides:
            config_dict.pop("num_masking_patches", None)
        return super().from_dict({**config_dict, **overrides}, **kwargs)

    def _validate(self) -> None:
        """Refuse a config no CAE v2 model can compute, naming the field and the fix (pretraining adds
        `validate_for_pretraining`)."""
        for name in ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                square = " (images are square: one side length)" if name in ("image_size", "patch_size") else ""
                raise ValueError(f"{name}={value!r} must be a positive integer{square}.")
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate={self.drop_path_rate} must be in [0, 1) (0.1 for ViT-B).")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps={self.layer_norm_eps} must be greater than 0 (1e-6 by default).")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}: "
                f"use an image size that is a multiple of {self.patch_size} (e.g. 224 for patch 16)."
            )
        for prefix, width, heads in (
            ("", self.hidden_size, self.num_attention_heads),
            ("regressor_", self.regressor_hidden_size, self.regressor_num_attention_heads),
        ):
            if width % heads:
                raise ValueError(
                    f"{prefix}hidden_size={width} is not divisible by {prefix}num_attention_heads={heads}: "
                    f"choose a head count that divides the width."
                )
            if width % 4:
                raise ValueError(
                    f"{prefix}hidden_size={width} must be a multiple of 4 for the 2-D sin-cos position table."
                )
        if self.classifier_pooling not in (None, *CLASSIFIER_POOLINGS):
            raise ValueError(
                f"classifier_pooling={self.classifier_pooling!r}: choose one of {CLASSIFIER_POOLINGS}, or None for a "
                "pretrained encoder."
            )
        if self.mask_strategy not in MASK_STRATEGIES:
            raise ValueError(f"mask_strategy={self.mask_strategy!r}: choose one of {MASK_STRATEGIES}.")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r}: choose one of {LOSS_TYPES}.")
        if not (self.supervise_visible or self.supervise_masked or self.supervise_cls):
            raise ValueError(
                "supervise_visible, supervise_masked and supervise_cls are all False: enable at least one."
            )
        if self.target_hidden_size != self.teacher_config.projection_dim:
            raise ValueError(
                f"target_hidden_size={self.target_hidden_size} differs from the teacher's projection width "
                f"teacher_config.projection_dim={self.teacher_config.projection_dim}: set target_hidden_size to "
                f"{self.teacher_config.projection_dim} (512 for CLIP ViT-B, 768 for CLIP ViT-L)."
            )
        if self.teacher_grid_resampling not in TEACHER_GRID_RESAMPLINGS:
            raise ValueError(
                f"teacher_grid_resampling={self.teacher_grid_resampling!r}: choose one of {TEACHER_GRID_RESAMPLINGS}."
            )

    def validate_for_pretraining(self) -> None:
        """What only pretraining needs: an encoder that normalises every token (not a fine-tuned classifier's
        pooling), a mask count that leaves patches visible and a teacher on the student's grid. `CAEv2ForPreTraining`
        checks it; an encoder or classifier may use another resolution without it."""
        if self.classifier_pooling == "mean":
            raise ValueError(
                "classifier_pooling='mean' is a fine-tuned classifier's feature, without the final LayerNorm on each "
                "token that pretraining needs: pretrain with classifier_pooling=None (e.g. from_pretrained(folder, "
                "classifier_pooling=None))."
            )
        if not 0 <= self.num_masking_patches < self.num_patches:
            raise ValueError(
                f"num_masking_patches={self.num_masking_patches} is outside [0, {self.num_patches}) for "
                f"{self.num_patches} patches: set a count (or mask_ratio) that leaves at least one patch visible."
            )
        student_grid = self.image_size // self.patch_size
        teacher_grid = self.teacher_config.image_size // self.teacher_config.patch_size
        if teacher_grid != student_grid and self.teacher_grid_resampling is None:
            raise ValueError(
                f"The teacher's patch grid ({teacher_grid}x{teacher_grid}) differs from the student's "
                f"({student_grid}x{student_grid}): targets would be misaligned. Use a teacher with the same grid "
                "or set teacher_grid_resampling='bilinear' to resample the teacher's patch targets to the student "
                "grid."
            )


class CAEv2UperNetConfig(UperNetConfig):
    """transformers' `UperNetConfig` on a CAE v2 backbone, which it builds itself from a saved `backbone_config`:
    transformers resolves a backbone config's `model_type` through its own mapping, which knows `"caev2"` only after
    `import caev2_hf`. A segmentation folder names this class in its `auto_map`, so it loads with
    `trust_remote_code=True` where the package is not installed (docs/segmentation.md)."""

    def __post_init__(self, **kwargs):
        if isinstance(self.backbone_config, dict) and self.backbone_config.get("model_type") == CAEv2Config.model_type:
            self.backbone_config = CAEv2Config.from_dict(self.backbone_config)
        super().__post_init__(**kwargs)


@functools.cache
def teacher_config_keys() -> tuple[frozenset[str], frozenset[str]]:
    """(the teacher's own `CLIPVisionConfig` fields, every key a `CLIPVisionConfig` accepts or writes)."""
    common = {field.name for field in dataclasses.fields(PretrainedConfig)}
    fields = {field.name for field in dataclasses.fields(CLIPVisionConfig)}
    written = set(CLIPVisionConfig().to_dict()) | {"num_labels", "attn_implementation", "torch_dtype"}
    return frozenset(fields - common), frozenset(fields | common | written)


def check_teacher_config_keys(teacher_config: dict) -> None:
    """Refuse a `teacher_config` key that is no `CLIPVisionConfig` field, naming the field it likely meant."""
    own, accepted = teacher_config_keys()
    unknown = sorted(set(teacher_config) - accepted)
    if unknown:
        close = difflib.get_close_matches(unknown[0], own, n=1) or difflib.get_close_matches(unknown[0], accepted, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"teacher_config: {unknown[0]!r} is not a CLIPVisionConfig field{hint}; the teacher's fields are "
            f"{', '.join(sorted(own))}."
        )


ENCODER_ARCHITECTURES = {"CAEv2Model", "CAEv2ForPreTraining", "CAEv2Backbone"}


def is_encoder_with_the_earliest_default_pooling(config_dict: dict) -> bool:
    """Whether a saved config is a pretrained encoder's whose `classifier_pooling: "mean"` is only the default of
    the code that wrote it. Before `use_mean_pooling` existed, every config said "mean" and `CAEv2Model` gave [CLS]
    whatever it said; read as today's field, such a folder (a pretraining run's `final/`, a converted checkpoint)
    would pool the patch mean. What the folder is decides: an encoder, pretraining or backbone folder that no
    classifier was trained on (no `problem_type`) is a pretrained encoder; a classifier's folder, or its encoder
    saved alone, keeps the head's pooling."""
    architectures = config_dict.get("architectures") or []
    return (
        "use_mean_pooling" not in config_dict
        and config_dict.get("classifier_pooling") == "mean"
        and bool(architectures)
        and set(architectures) <= ENCODER_ARCHITECTURES
        and config_dict.get("problem_type") is None
    )


def pooling_of_earlier_config(classifier_pooling: str | None, use_mean_pooling: bool) -> str | None:
    """`classifier_pooling` of a config that also holds the earlier `use_mean_pooling`, which a classifier set from
    its head: True for a fine-tuned classifier; False for a probe ("cls") and for a pretrained encoder, whose
    `classifier_pooling` kept the earlier default "mean" without a classifier behind it."""
    if use_mean_pooling:
        return "mean"
    return "cls" if classifier_pooling == "cls" else None


def default_backbone_out_indices(num_hidden_layers: int) -> list[int]:
    """Stages after blocks L/3, L/2, 2L/3 and L (1-based): 4, 6, 8, 12 for ViT-B and 8, 12, 16, 24 for ViT-L, the
    authors' segmentation `out_indices` (0-based blocks 3, 5, 7, 11 and 7, 11, 15, 23); every block below 4 layers."""
    if num_hidden_layers < 4:
        return list(range(1, num_hidden_layers + 1))
    indices = [num_hidden_layers * twelfths // 12 for twelfths in (4, 6, 8, 12)]
    for position in range(1, 4):  # shallow encoders: keep the four stages distinct
        indices[position] = max(indices[position], indices[position - 1] + 1)
    return indices


__all__ = ["CAEv2Config", "CAEv2UperNetConfig", "CAEV2_PRESETS"]
