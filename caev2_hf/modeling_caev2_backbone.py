# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""CAE v2 as a transformers backbone: the encoder's block outputs as feature maps, for dense heads such as UperNet.

It follows the authors' segmentation backbone (`downstream_tasks/semantic_segmentation/backbone/cae.py`), each
difference from the pretraining encoder behind a `CAEv2Config` field whose default is the authors' setting
(docs/segmentation.md): a relative position bias per block, the sin-cos table resized bicubically to the input grid,
no final LayerNorm, and the multi-scale neck (strides 4, 8, 16, 32) in front of UperNet. A remote-code file: it
imports only torch, transformers and the two model files.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import UperNetForSemanticSegmentation
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_outputs import BackboneOutput, BaseModelOutput
from transformers.models.upernet.modeling_upernet import UperNetFCNHead, UperNetHead, UperNetPreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_caev2 import CAEv2Config, CAEv2UperNetConfig
from .modeling_caev2 import (
    PRETRAINING_ONLY_KEYS,
    CAEv2Embeddings,
    CAEv2Encoder,
    CAEv2PreTrainedModel,
    build_2d_sincos_position_embedding,
    warn_if_attentions_unavailable,
)


POSITION_TABLES = ("interpolate", "exact")
NECK_STRIDES = (4, 8, 16, 32)  # output strides of the authors' four neck branches, for any patch size


class CAEv2BackboneEmbeddings(CAEv2Embeddings):
    """[CLS] + patch embeddings + a fixed sin-cos table for any grid.

    `"interpolate"` (the authors): the table of the `image_size` grid, resized bicubically to the input grid, which is
    what the authors' checkpoint loader does to the pretrained table. `"exact"`: the sin-cos formula on the input grid.
    Both give the pretraining table on the pretraining grid. Tables are cached per grid.
    """

    def __init__(self, config: CAEv2Config) -> None:
        super().__init__(config)
        self._tables: dict[tuple, torch.Tensor] = {}

    def position_table(self, height: int, width: int, interpolate_pos_encoding: bool = True) -> torch.Tensor:
        patch, grid = self.config.patch_size, self.config.image_size // self.config.patch_size
        rows, cols = height // patch, width // patch
        if (rows, cols) == (grid, grid):
            return self.position_embeddings
        key = (rows, cols, self.position_embeddings.device)
        if key not in self._tables:
            self._tables[key] = self._build_table(rows, cols).to(self.position_embeddings.device)
        return self._tables[key]

    def _build_table(self, rows: int, cols: int) -> torch.Tensor:
        dim, grid = self.config.hidden_size, self.config.image_size // self.config.patch_size
        if self.config.backbone_position_table == "exact":
            return build_2d_sincos_position_embedding(rows, cols, dim)[None]
        table = build_2d_sincos_position_embedding(grid, grid, dim)
        patches = table[1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(rows, cols), mode="bicubic", align_corners=False)
        return torch.cat([table[:1], patches.flatten(2).transpose(1, 2)[0]])[None]


class CAEv2RelativePositionBias(nn.Module):
    """One learned bias per head for each relative offset of two patches, plus [CLS]-to-patch, patch-to-[CLS] and
    [CLS]-to-[CLS] (the authors' `relative_position_bias_table`, same layout, zero at init).

    The table covers a `backbone_image_size` grid. A grid that fits inside it reads its offsets from the table
    exactly; a larger one reads a bilinear resize of the offset table, as transformers' BEiT does.
    """

    def __init__(self, config: CAEv2Config) -> None:
        super().__init__()
        self.window = config.backbone_image_size // config.patch_size
        num_offsets = (2 * self.window - 1) ** 2
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_offsets + 3, config.num_attention_heads))
        self._indices: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def offset_index(rows: int, cols: int, table_rows: int, table_cols: int, device) -> torch.Tensor:
        """`(1 + rows*cols, 1 + rows*cols)` indices into a table of `(2*table_rows-1) * (2*table_cols-1) + 3` rows."""
        coords = torch.stack(
            torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
        ).flatten(1)
        relative = coords[:, :, None] - coords[:, None, :]
        offsets = (relative[0] + table_rows - 1) * (2 * table_cols - 1) + relative[1] + table_cols - 1
        num_offsets = (2 * table_rows - 1) * (2 * table_cols - 1)
        index = torch.zeros(rows * cols + 1, rows * cols + 1, dtype=torch.long, device=device)
        index[1:, 1:] = offsets
        index[0, 0:] = num_offsets  # [CLS] to patch
        index[0:, 0] = num_offsets + 1  # patch to [CLS]
        index[0, 0] = num_offsets + 2  # [CLS] to [CLS]
        return index

    def forward(self, rows: int, cols: int) -> torch.Tensor:
        """Bias `(1, heads, 1 + rows*cols, 1 + rows*cols)` for a `rows x cols` patch grid."""
        table = self.relative_position_bias_table
        table_rows, table_cols = self.window, self.window
        if rows > self.window or cols > self.window:
            side = 2 * self.window - 1
            offsets = table[:-3].T.reshape(1, -1, side, side)
            offsets = F.interpolate(offsets, size=(2 * rows - 1, 2 * cols - 1), mode="bilinear", align_corners=False)
            table = torch.cat([offsets[0].flatten(1).T, table[-3:]])
            table_rows, table_cols = rows, cols
        key = (rows, cols, table_rows, table_cols, table.device)
        if key not in self._indices:
            self._indices[key] = self.offset_index(rows, cols, table_rows, table_cols, table.device)
        index = self._indices[key]
        return table[index.view(-1)].view(*index.shape, -1).permute(2, 0, 1).unsqueeze(0)


def build_neck_branch(hidden_size: int, patch_size: int, stride: int) -> nn.Module:
    """Bring a stride-`patch_size` map to `stride`: 2x transposed convolutions (BatchNorm + GELU between two), the
    identity, or a max-pool; for patch 16: 4x (deconv, BN, GELU, deconv), 2x (deconv), identity, 2x max-pool."""
    if patch_size == stride:
        return nn.Identity()
    if patch_size < stride:
        return nn.MaxPool2d(kernel_size=stride // patch_size, stride=stride // patch_size)
    modules = []
    for step in range(int(math.log2(patch_size // stride))):
        if step:
            modules += [nn.BatchNorm2d(hidden_size), nn.GELU()]
        modules.append(nn.ConvTranspose2d(hidden_size, hidden_size, kernel_size=2, stride=2))
    return nn.Sequential(*modules)


class CAEv2Backbone(BackboneMixin, CAEv2PreTrainedModel):
    r"""
    The CAE v2 encoder as a transformers backbone (`AutoBackbone`, UperNet's `backbone_config`). `stage_names` are
    `"stem"` (the embeddings) and `"stage{i}"` (output of block i, 1-based); each selected stage becomes a map
    `(batch, hidden_size, H / patch, W / patch)` of its patch tokens, without the final LayerNorm, and with
    `config.backbone_add_fpn` the four maps go through the authors' neck to strides 4, 8, 16 and 32. Any input whose
    sides are multiples of the patch size works.

    The blocks are the encoder's own (`CAEv2Encoder`); each keeps its relative position bias table under its key
    (`encoder.layers.{i}.relative_position_bias`) and gets the bias as its attention bias. The stages are the block
    outputs that transformers' output recording keeps (`encode`), as for `output_hidden_states`.

    `CAEv2Backbone.from_pretrained(folder)` loads a checkpoint of any CAE v2 head (pretraining `final/`, encoder,
    classifier): the relative position bias tables and the neck start fresh, the final LayerNorm and the pretraining
    modules are left out.

    Example:

    ```python
    >>> import torch
    >>> from caev2_hf import CAEv2Config
    >>> from caev2_hf.modeling_caev2_backbone import CAEv2Backbone
    >>> config = CAEv2Config.from_preset("tiny", image_size=64, num_hidden_layers=4)
    >>> backbone = CAEv2Backbone(config).eval()
    >>> [tuple(fmap.shape) for fmap in backbone(torch.randn(1, 3, 64, 96)).feature_maps]
    [(1, 192, 16, 24), (1, 192, 8, 12), (1, 192, 4, 6), (1, 192, 2, 3)]
    ```"""

    # The final LayerNorm is unused (the authors' `out_with_norm=False`): an encoder checkpoint's copy is dropped.
    _keys_to_ignore_on_load_unexpected = PRETRAINING_ONLY_KEYS + [r"^(caev2\.)?layernorm\."]
    _no_split_modules = ["CAEv2BackboneEmbeddings", "CAEv2Layer"]

    def __init__(self, config: CAEv2Config) -> None:
        check_backbone_config(config)
        super().__init__(config)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        self.embeddings = CAEv2BackboneEmbeddings(config)
        self.encoder = CAEv2Encoder(config)
        if config.backbone_relative_position_bias:
            for layer in self.encoder.layers:  # under its block, where the authors' checkpoints keep it
                layer.relative_position_bias = CAEv2RelativePositionBias(config)
        if config.backbone_add_fpn:
            for index, stride in enumerate(NECK_STRIDES, start=1):
                self.add_module(f"fpn{index}", build_neck_branch(config.hidden_size, config.patch_size, stride))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, nn.ConvTranspose2d):  # PyTorch's default, as in the authors' neck
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            fan_in = module.weight.shape[1] * module.weight[0, 0].numel()
            init.uniform_(module.bias, -(fan_in**-0.5), fan_in**-0.5)
        elif isinstance(module, CAEv2RelativePositionBias):
            init.zeros_(module.relative_position_bias_table)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BackboneOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`): Normalised images
                whose height and width are multiples of `config.patch_size`.
            output_hidden_states (`bool`, *optional*): Also return every stage's tokens (embeddings, then each block);
                defaults to `config.output_hidden_states`.
            output_attentions (`bool`, *optional*): Also return the attention maps (eager attention only); defaults
                to `config.output_attentions`.
            return_dict (`bool`, *optional*): Return a `BackboneOutput` instead of a tuple.
        """
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        check_backbone_input(pixel_values, self.config)
        stages = [index % len(self.stage_names) for index in self.out_indices]  # -1: the last block
        # Without output_hidden_states only the stages' states are kept: no more tensors than the maps need.
        encoded = self.encode(
            pixel_values,
            output_hidden_states=True if output_hidden_states else stages,
            output_attentions=output_attentions,
            return_dict=True,
        )
        batch_size, _, height, width = pixel_values.shape
        grid = (height // self.config.patch_size, width // self.config.patch_size)
        feature_maps = tuple(
            encoded.hidden_states[index][:, 1:].transpose(1, 2).reshape(batch_size, -1, *grid) for index in stages
        )
        if self.config.backbone_add_fpn:
            branches = (self.fpn1, self.fpn2, self.fpn3, self.fpn4)
            feature_maps = tuple(branch(fmap) for branch, fmap in zip(branches, feature_maps, strict=True))
        return BackboneOutput(
            feature_maps=feature_maps,
            hidden_states=encoded.hidden_states if output_hidden_states else None,
            attentions=encoded.attentions,
        )

    @capture_outputs(tie_last_hidden_states=False)
    def encode(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutput:
        """The encoder on every patch, each block adding its relative position bias; `capture_outputs` records the
        block inputs and outputs (`hidden_states`) and attention maps that `kwargs` ask for."""
        warn_if_attentions_unavailable(self.config, kwargs.get("output_attentions"))
        patch = self.config.patch_size
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.projection.weight.dtype)
        embeddings = self.embeddings(pixel_values, interpolate_pos_encoding=True)
        biases = None
        if self.config.backbone_relative_position_bias:
            biases = [layer.relative_position_bias(*grid) for layer in self.encoder.layers]
        return self.encoder(embeddings, biases)


class CAEv2UperNetForSemanticSegmentation(UperNetForSemanticSegmentation):
    """transformers' UperNet on a `CAEv2Backbone`: the same modules, weights and outputs, but the backbone is built
    here rather than looked up in `AutoBackbone`, which knows CAE v2 only after `import caev2_hf`. A segmentation
    folder names this class and `CAEv2UperNetConfig` in its `auto_map`, so `AutoModelForSemanticSegmentation` and
    `pipeline("image-segmentation")` load it with `trust_remote_code=True` where the package is not installed; with
    the package, transformers' own class loads the folder too."""

    config_class = CAEv2UperNetConfig

    def __init__(self, config: CAEv2UperNetConfig) -> None:
        UperNetPreTrainedModel.__init__(self, config)  # not UperNet's own: its `load_backbone` asks AutoBackbone
        self.backbone = CAEv2Backbone(config.backbone_config)
        self.decode_head = UperNetHead(config, in_channels=self.backbone.channels)
        self.auxiliary_head = (
            UperNetFCNHead(config, in_channels=self.backbone.channels) if config.use_auxiliary_head else None
        )
        self.post_init()


def check_backbone_input(pixel_values: torch.Tensor, config: CAEv2Config) -> None:
    """Sides that are multiples of the patch, and large enough for the neck's coarsest stride."""
    height, width = pixel_values.shape[-2:]
    patch = config.patch_size
    if height % patch or width % patch:
        raise ValueError(
            f"Input of {height}x{width} px is not a multiple of the patch size {patch}: pad or resize it to "
            f"multiples of {patch} (run_semantic_segmentation.py's sliding window pads its windows)."
        )
    if config.backbone_add_fpn and min(height, width) < max(NECK_STRIDES[-1], patch):
        raise ValueError(
            f"Input of {height}x{width} px is smaller than the neck's coarsest stride ({NECK_STRIDES[-1]} px): "
            f"give inputs of at least {max(NECK_STRIDES[-1], patch)} px a side, or set backbone_add_fpn=False."
        )


def check_backbone_config(config: CAEv2Config) -> None:
    """Refuse backbone settings the model cannot build, naming the field and the fix."""
    if config.backbone_position_table not in POSITION_TABLES:
        raise ValueError(
            f"backbone_position_table={config.backbone_position_table!r}: choose one of {POSITION_TABLES}."
        )
    if config.backbone_image_size % config.patch_size:
        raise ValueError(
            f"backbone_image_size={config.backbone_image_size} is not a multiple of patch_size={config.patch_size}: "
            "set it to the training crop size (e.g. 512)."
        )
    if not config.backbone_add_fpn:
        return
    if len(config.out_indices) != 4:
        raise ValueError(
            f"backbone_add_fpn=True needs 4 stages but out_indices={config.out_indices}: pass 4 out_indices (e.g. "
            f"[4, 6, 8, 12] for 12 blocks) or set backbone_add_fpn=False."
        )
    patch = config.patch_size
    if patch & (patch - 1) or patch < 2:
        raise ValueError(
            f"backbone_add_fpn=True needs a power-of-two patch size (strides 4 to 32), not {patch}: "
            "set backbone_add_fpn=False."
        )


__all__ = ["CAEv2Backbone", "CAEv2UperNetForSemanticSegmentation"]
