# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""PyTorch CAE v2: a ViT encoder trained by regressing frozen CLIP features of visible and masked patches."""

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BitImageProcessor, CLIPVisionModelWithProjection, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_caev2 import CAEv2Config, per_channel


logger = logging.get_logger(__name__)


@dataclass
class CAEv2ForPreTrainingOutput(ModelOutput):
    r"""
    Output of `CAEv2ForPreTraining`.

    Args:
        loss (`torch.FloatTensor` of shape `()`): The training loss over the supervised tokens (docs/method.md#loss).
        visible_loss (`torch.FloatTensor` of shape `()`): Mean per-token loss over visible patches (for logging).
        masked_loss (`torch.FloatTensor` of shape `()`): Mean per-token loss over masked patches (for logging).
        cls_loss (`torch.FloatTensor` of shape `()`): Loss of the [CLS] token (for logging).
        logits (`torch.FloatTensor` of shape `(batch_size, 1 + num_patches, target_hidden_size)`): L2-normalised head
            outputs in the order [CLS, visible..., masked...] (visible and masked each in ascending patch order).
        targets (`torch.FloatTensor` of the same shape): L2-normalised teacher targets in the order of `logits`, one
            per prediction, so `(logits * targets).sum(-1)` is each token's cosine. The forward's `target_features`
            input is in image order; this output is not, hence its own name.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`): The mask used (True = masked).
        hidden_states / attentions: Encoder states and attention maps when requested.
    """

    loss: torch.FloatTensor | None = None
    visible_loss: torch.FloatTensor | None = None
    masked_loss: torch.FloatTensor | None = None
    cls_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    targets: torch.FloatTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def build_2d_sincos_position_embedding(
    grid_height: int, grid_width: int, dim: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Fixed 2-D sin-cos table of shape `(1 + grid_height * grid_width, dim)` with a zero [CLS] row
    (docs/method.md#encoder).

    Patch `row * grid_width + col` gets `[sin(row*w), cos(row*w), sin(col*w), cos(col*w)]`: the row comes first, as in
    the official CAE code (MAE's helper puts the column first, which would transpose the table).
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64, device=device) / quarter)
    rows = torch.arange(grid_height, dtype=torch.float64, device=device).repeat_interleave(grid_width)
    cols = torch.arange(grid_width, dtype=torch.float64, device=device).repeat(grid_height)
    row_angles, col_angles = rows[:, None] * omega, cols[:, None] * omega
    table = torch.cat([row_angles.sin(), row_angles.cos(), col_angles.sin(), col_angles.cos()], dim=1)
    return torch.cat([table.new_zeros(1, dim), table]).float()


def warn_if_attentions_unavailable(config: CAEv2Config, output_attentions: bool | None) -> None:
    """Attention maps come from eager attention only; SDPA and flash kernels never form them."""
    if output_attentions and config._attn_implementation != "eager":
        logger.warning_once(
            f"output_attentions=True returns no attention maps with attn_implementation="
            f"{config._attn_implementation!r}: load the model with attn_implementation='eager' (or call "
            "model.set_attn_implementation('eager')) to get them."
        )


def check_mask_shape(bool_masked_pos: torch.Tensor, pixel_values: torch.Tensor, patch_size: int) -> None:
    """A bool mask with one row per image and one entry per patch of these images; shapes only, so it costs no
    host sync."""
    if bool_masked_pos.dtype != torch.bool:
        raise ValueError(
            f"bool_masked_pos has dtype {bool_masked_pos.dtype}: pass a torch.bool mask (True = masked), e.g. "
            "mask.bool()."
        )
    height, width = pixel_values.shape[-2:]
    expected = (pixel_values.shape[0], (height // patch_size) * (width // patch_size))
    if tuple(bool_masked_pos.shape) != expected:
        raise ValueError(
            f"bool_masked_pos has shape {tuple(bool_masked_pos.shape)}: expected (batch_size, num_patches) = "
            f"{expected} for pixel_values of shape {tuple(pixel_values.shape)}."
        )


def check_mask_counts(bool_masked_pos: torch.Tensor, num_masked: int) -> None:
    """Every image must mask exactly `num_masked` patches, so visible tokens stack into one tensor
    (docs/method.md#encoder).

    On the CPU the check is free and raises a readable error; on an accelerator (or under torch.compile) it is
    queued asynchronously, so the training step keeps no host sync and compiles to one graph.
    """
    if bool_masked_pos.ndim != 2:
        raise ValueError(
            f"bool_masked_pos has shape {tuple(bool_masked_pos.shape)}: expected (batch_size, num_patches)."
        )
    counts = bool_masked_pos.sum(dim=1)
    if bool_masked_pos.device.type != "cpu" or torch.compiler.is_compiling():
        torch._assert_async(torch.all(counts == num_masked), "bool_masked_pos has a wrong number of masked patches")
        return
    if bool(torch.any(counts != counts[0])):
        raise ValueError(
            f"bool_masked_pos masks a different number of patches per image ({sorted(set(counts.tolist()))}): every "
            "image of a batch must mask the same number; use caev2_hf.data.masking generators, which give exact "
            "counts."
        )
    if int(counts[0]) != num_masked:
        raise ValueError(
            f"bool_masked_pos masks {int(counts[0])} patches per image but config.num_masking_patches is "
            f"{num_masked}: set config.num_masking_patches={int(counts[0])} or draw masks with the config's count."
        )


def split_visible_and_masked(bool_masked_pos: torch.Tensor, num_masked: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch indices of visible and masked patches, each in ascending order: `(batch, N - num_masked)`, `(batch, M)`.

    A stable sort of the mask puts visible (False) before masked (True) and keeps patch order inside each group,
    without a host sync (the count comes from the config, not from the data).
    """
    check_mask_counts(bool_masked_pos, num_masked)
    order = torch.sort(bool_masked_pos.to(torch.uint8), dim=1, stable=True).indices
    num_visible = bool_masked_pos.shape[1] - num_masked
    return order[:, :num_visible], order[:, num_visible:]


def gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`tokens[b, indices[b]]` for `(batch, seq, dim)` tokens and `(batch, k)` indices."""
    return torch.gather(tokens, 1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention on `(batch, heads, seq, head_dim)` tensors; returns `(batch, seq, heads, head_dim)`."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class CAEv2DropPath(nn.Module):
    """Stochastic depth per sample (official `DropPath`)."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return hidden_states
        keep_prob = 1 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        keep = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * keep / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


def build_drop_path(drop_prob: float) -> nn.Module:
    return CAEv2DropPath(drop_prob) if drop_prob > 0 else nn.Identity()


def embed_patches(
    pixel_values: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    patch_size: int,
    patch_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """A patchifying Conv2d (kernel = stride = `patch_size`) as one matmul on the cut-out patches:
    `(batch, channels, H, W)` -> `(batch, num_patches, out_channels)` in row-major order, or only the patches in
    `patch_ids`. The same numbers as the convolution, which cuDNN runs slowly at these shapes (about 4 ms of an
    86 ms ViT-B training step at batch 256 on an H100, for under 0.1 ms of matmul work)."""
    batch_size, channels, height, width = pixel_values.shape
    rows, columns = height // patch_size, width // patch_size  # a partial patch at the edge is dropped, as by Conv2d
    patches = pixel_values[:, :, : rows * patch_size, : columns * patch_size].reshape(
        batch_size, channels, rows, patch_size, columns, patch_size
    )
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch_size, rows * columns, channels * patch_size**2)
    if patch_ids is not None:
        patches = gather_tokens(patches, patch_ids)
    return F.linear(patches, weight.flatten(1), bias)


class CAEv2PatchEmbeddings(nn.Module):
    """Patchifier: `(batch, channels, H, W)` -> `(batch, num_patches, hidden_size)` in row-major order.

    The weights are a Conv2d's (the official layout), applied by `embed_patches`; with `patch_ids` only those patches
    are embedded (the encoder's visible ones).
    """

    def __init__(self, config: CAEv2Config) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor, patch_ids: torch.Tensor | None = None) -> torch.Tensor:
        projection = self.projection
        return embed_patches(pixel_values, projection.weight, projection.bias, self.patch_size, patch_ids)


class CAEv2PatchConv2d(nn.Conv2d):
    """A patchifying Conv2d computed by `embed_patches`, with the Conv2d's output shape and state-dict keys: it
    replaces the CLIP teacher's patch embedding (`CAEv2Teacher`)."""

    @classmethod
    def replacing(cls, conv: nn.Conv2d) -> nn.Conv2d:
        """A `CAEv2PatchConv2d` sharing `conv`'s parameters, or `conv` itself when it is not a plain patchifier."""
        size = conv.kernel_size[0]
        patchifier = conv.kernel_size == conv.stride == (size, size) and conv.padding == (0, 0)
        if type(conv) is not nn.Conv2d or not patchifier or conv.dilation != (1, 1) or conv.groups != 1:
            return conv
        replacement = cls(conv.in_channels, conv.out_channels, size, size, bias=conv.bias is not None, device="meta")
        replacement.weight, replacement.bias = conv.weight, conv.bias
        return replacement

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch_size, _, height, width = pixel_values.shape
        size = self.kernel_size[0]
        embedded = embed_patches(pixel_values, self.weight, self.bias, size)
        return embedded.transpose(1, 2).reshape(batch_size, -1, height // size, width // size)


class CAEv2Embeddings(nn.Module):
    """[CLS] + patch embeddings + fixed sin-cos positions, keeping only visible patches when a mask is given."""

    def __init__(self, config: CAEv2Config) -> None:
        super().__init__()
        self.config = config
        self.patch_embeddings = CAEv2PatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        grid = config.image_size // config.patch_size
        # Fixed, never trained, never saved: recomputed in `_init_weights` (transformers builds on the meta device).
        self.register_buffer(
            "position_embeddings", build_2d_sincos_position_embedding(grid, grid, config.hidden_size)[None], False
        )

    def position_table(self, height: int, width: int, interpolate_pos_encoding: bool) -> torch.Tensor:
        """The table for an `height x width` input; another resolution gets an exact table of its own grid."""
        if (height, width) == (self.config.image_size, self.config.image_size):
            return self.position_embeddings
        if not interpolate_pos_encoding:
            raise ValueError(
                f"Input image size ({height}x{width}) doesn't match the model ({self.config.image_size}x"
                f"{self.config.image_size}): resize the images or pass interpolate_pos_encoding=True."
            )
        patch = self.config.patch_size
        table = build_2d_sincos_position_embedding(height // patch, width // patch, self.config.hidden_size)
        return table[None].to(self.position_embeddings.device)

    def forward(
        self,
        pixel_values: torch.Tensor,
        visible_ids: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}: expected (batch_size, "
                f"{self.config.num_channels}, height, width), with config.num_channels={self.config.num_channels} "
                "channels first."
            )
        height, width = pixel_values.shape[-2:]
        positions = self.position_table(height, width, interpolate_pos_encoding).to(pixel_values.dtype)
        patch_positions = positions[:, 1:].expand(pixel_values.shape[0], -1, -1)
        if visible_ids is not None:
            patch_positions = gather_tokens(patch_positions, visible_ids)
        patches = self.patch_embeddings(pixel_values, visible_ids) + patch_positions
        cls_tokens = (self.cls_token + positions[:, :1]).expand(patches.shape[0], -1, -1)
        return torch.cat([cls_tokens, patches], dim=1)


class CAEv2Attention(nn.Module):
    """Multi-head attention with q and v biases and no k bias (official `Attention` / `CrossAttention`).

    Self-attention passes the same states as query and key/value input; the regressor passes its own. An
    `attention_bias` `(1 or batch, heads, queries, keys)` is added to the scores (the backbone's relative position
    bias): eager and SDPA take it as a float mask; flash and flex attention cannot take a per-head bias.
    """

    def __init__(self, config: CAEv2Config, hidden_size: int, num_attention_heads: int, fused_qkv_init: bool) -> None:
        super().__init__()
        self.config = config
        self.head_dim = hidden_size // num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=True)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=True)
        self.o_proj = nn.Linear(hidden_size, hidden_size)
        if fused_qkv_init:
            # The official encoder fuses q, k and v in one (3D x D) Linear: keep its xavier bound (`_init_weights`).
            for projection in (self.q_proj, self.k_proj, self.v_proj):
                projection.xavier_fan_out = 3 * hidden_size

    def forward(
        self,
        query_input: torch.Tensor,
        key_input: torch.Tensor,
        value_input: torch.Tensor,
        attention_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, query_length = query_input.shape[:2]
        query_states = self.q_proj(query_input).view(batch_size, query_length, -1, self.head_dim).transpose(1, 2)
        key_states = self.k_proj(key_input).view(batch_size, key_input.shape[1], -1, self.head_dim).transpose(1, 2)
        value_states = self.v_proj(value_input).view(batch_size, value_input.shape[1], -1, self.head_dim)
        value_states = value_states.transpose(1, 2)
        if attention_bias is not None:
            check_attention_bias_support(self.config)
            attention_bias = attention_bias.to(query_states.dtype)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_bias,
            scaling=self.scaling,
            dropout=0.0,
            is_causal=False,
        )
        attn_output = self.o_proj(attn_output.reshape(batch_size, query_length, -1))
        return attn_output, attn_weights


def check_attention_bias_support(config: CAEv2Config) -> None:
    """An additive bias needs a kernel that adds a per-head float mask: eager or SDPA, not flash or flex attention."""
    implementation = config._attn_implementation
    if implementation not in (None, "eager", "sdpa"):
        raise ValueError(
            f"attn_implementation={implementation!r} cannot add the relative position bias: load with "
            "attn_implementation='sdpa' (or 'eager'), or set backbone_relative_position_bias=False."
        )


class CAEv2MLP(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, config: CAEv2Config, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class CAEv2LayerScale(nn.Module):
    """Per-channel residual scale (official `gamma_1` / `gamma_2`)."""

    def __init__(self, hidden_size: int, init_value: float) -> None:
        super().__init__()
        self.init_value = init_value
        self.lambda1 = nn.Parameter(torch.full((hidden_size,), init_value))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.lambda1


class CAEv2Layer(GradientCheckpointingLayer):
    """Pre-norm encoder block with layer scale and drop path (official `Block`); `attention_bias`, if any, is added to
    its attention scores."""

    def __init__(self, config: CAEv2Config, drop_path_rate: float) -> None:
        super().__init__()
        size, eps = config.hidden_size, config.layer_norm_eps
        self.layernorm_before = nn.LayerNorm(size, eps=eps)
        self.attention = CAEv2Attention(config, size, config.num_attention_heads, fused_qkv_init=True)
        self.layer_scale1 = CAEv2LayerScale(size, config.layer_scale_init_value)
        self.layernorm_after = nn.LayerNorm(size, eps=eps)
        self.mlp = CAEv2MLP(config, size, config.intermediate_size)
        self.layer_scale2 = CAEv2LayerScale(size, config.layer_scale_init_value)
        self.drop_path = build_drop_path(drop_path_rate)

    def forward(
        self, hidden_states: torch.Tensor, attention_bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        normed = self.layernorm_before(hidden_states)
        attn_output, attn_weights = self.attention(normed, normed, normed, attention_bias)
        hidden_states = hidden_states + self.drop_path(self.layer_scale1(attn_output))
        mlp_output = self.mlp(self.layernorm_after(hidden_states))
        hidden_states = hidden_states + self.drop_path(self.layer_scale2(mlp_output))
        return hidden_states, attn_weights


class CAEv2RegressorLayer(GradientCheckpointingLayer):
    """Cross-attention block updating the mask queries only (official `RegressorBlock`, docs/method.md#regressor)."""

    def __init__(self, config: CAEv2Config, drop_path_rate: float) -> None:
        super().__init__()
        size, eps = config.regressor_hidden_size, config.layer_norm_eps
        self.layernorm_query = nn.LayerNorm(size, eps=eps)
        self.layernorm_key = nn.LayerNorm(size, eps=eps)
        self.layernorm_value = nn.LayerNorm(size, eps=eps)
        self.attention = CAEv2Attention(config, size, config.regressor_num_attention_heads, fused_qkv_init=False)
        self.layer_scale1 = CAEv2LayerScale(size, config.regressor_layer_scale_init_value)
        self.layernorm_after = nn.LayerNorm(size, eps=eps)
        self.mlp = CAEv2MLP(config, size, config.regressor_intermediate_size)
        self.layer_scale2 = CAEv2LayerScale(size, config.regressor_layer_scale_init_value)
        self.drop_path = build_drop_path(drop_path_rate)

    def forward(
        self,
        query_states: torch.Tensor,
        visible_states: torch.Tensor,
        visible_positions: torch.Tensor,
        masked_positions: torch.Tensor,
    ) -> torch.Tensor:
        # Keys and values see visible latents first, then the current queries; values carry no position.
        key_value_states = torch.cat([visible_states, query_states], dim=1)
        key_positions = torch.cat([visible_positions, masked_positions], dim=1)
        attn_output, _ = self.attention(
            self.layernorm_query(query_states + masked_positions),
            self.layernorm_key(key_value_states + key_positions),
            self.layernorm_value(key_value_states),
        )
        query_states = query_states + self.drop_path(self.layer_scale1(attn_output))
        # The residual stream itself is normalised here (official `norm2_cross`), not only the MLP input.
        query_states = self.layernorm_after(query_states)
        return query_states + self.drop_path(self.layer_scale2(self.mlp(query_states)))


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Stochastic depth rising linearly from 0 at the first block to `max_rate` at the last."""
    return [max_rate * index / (depth - 1) for index in range(depth)] if depth > 1 else [0.0] * depth


class CAEv2Encoder(nn.Module):
    """The stack of encoder blocks, each optionally with an attention bias of its own (the backbone's relative
    position bias). The model that calls it records each block's input/output and attention map
    (`_can_record_outputs`) when `output_hidden_states` / `output_attentions` ask for them."""

    def __init__(self, config: CAEv2Config) -> None:
        super().__init__()
        rates = drop_path_rates(config.drop_path_rate, config.num_hidden_layers)
        self.layers = nn.ModuleList([CAEv2Layer(config, rate) for rate in rates])

    def forward(
        self, hidden_states: torch.Tensor, attention_biases: Sequence[torch.Tensor] | None = None
    ) -> BaseModelOutput:
        biases = attention_biases if attention_biases is not None else (None,) * len(self.layers)
        for layer, bias in zip(self.layers, biases, strict=True):
            hidden_states, _ = layer(hidden_states, bias)
        return BaseModelOutput(last_hidden_state=hidden_states)


class CAEv2LatentProjection(nn.Module):
    """Linear + LayerNorm narrowing encoder latents to the regressor width (Tiny only; official
    `encoder_to_regresser`)."""

    def __init__(self, config: CAEv2Config) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.regressor_hidden_size)
        self.layernorm = nn.LayerNorm(config.regressor_hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layernorm(self.dense(hidden_states))


class CAEv2Regressor(nn.Module):
    """Latent contextual regressor: learned mask queries -> predicted latents of the masked patches
    (docs/method.md#regressor)."""

    def __init__(self, config: CAEv2Config) -> None:
        super().__init__()
        self.config = config
        size = config.regressor_hidden_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, size))
        grid = config.image_size // config.patch_size
        self.register_buffer("position_embeddings", build_2d_sincos_position_embedding(grid, grid, size)[None], False)
        rates = drop_path_rates(config.drop_path_rate, config.regressor_num_hidden_layers)
        self.layers = nn.ModuleList([CAEv2RegressorLayer(config, rate) for rate in rates])

    def forward(
        self, visible_states: torch.Tensor, visible_ids: torch.Tensor, masked_ids: torch.Tensor
    ) -> torch.Tensor:
        """`visible_states` `(batch, num_visible, width)` (no [CLS]) -> `(batch, num_masked, width)`."""
        batch_size = visible_states.shape[0]
        patch_positions = self.position_embeddings[:, 1:].to(visible_states.dtype).expand(batch_size, -1, -1)
        visible_positions = gather_tokens(patch_positions, visible_ids)
        masked_positions = gather_tokens(patch_positions, masked_ids)
        query_states = self.mask_token.expand(batch_size, masked_ids.shape[1], -1)
        for layer in self.layers:
            query_states = layer(query_states, visible_states, visible_positions, masked_positions)
        return query_states


class CAEv2Head(nn.Module):
    """LayerNorm -> Linear to the teacher width -> L2 normalisation, shared by every token (official `decoder`)."""

    def __init__(self, config: CAEv2Config) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(config.regressor_hidden_size, eps=config.layer_norm_eps)
        self.dense = nn.Linear(config.regressor_hidden_size, config.target_hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.dense(self.layernorm(hidden_states)).float(), dim=-1)


class CAEv2Teacher(nn.Module):
    """Frozen CLIP vision tower giving L2-normalised targets for all tokens (docs/method.md#head-and-targets).

    An ordinary submodule of `CAEv2ForPreTraining`, saved and loaded with it (docs/design.md#teacher). Its weights
    come from `CAEv2ForPreTraining.load_teacher()` or from a saved pretraining folder; the persistent `has_weights`
    buffer records that real weights arrived, so a teacher that never received them refuses to give targets.
    """

    def __init__(self, config: CAEv2Config) -> None:
        super().__init__()
        self.config = config
        self.model = CLIPVisionModelWithProjection(config.teacher_config)
        embeddings = self.model.vision_model.embeddings
        embeddings.patch_embedding = CAEv2PatchConv2d.replacing(embeddings.patch_embedding)
        # CLIP's blocks must stay whole on one device under `device_map`: transformers collects this from children.
        self._no_split_modules = set(self.model._no_split_modules or ())
        # Saved in the state dict: `load_teacher()` sets it, `from_pretrained` / `load_state_dict` restore it.
        self.register_buffer("has_weights", torch.zeros((), dtype=torch.bool))
        input_scale, input_shift = self.renormalisation(config)
        self.register_buffer("input_scale", input_scale, False)
        self.register_buffer("input_shift", input_shift, False)
        self._checked_flag: torch.Tensor | None = None
        self.train(False)  # eval from the start, not only after the student's first train()/eval()

    def check_has_weights(self) -> None:
        """Raise unless real weights were loaded (`has_weights`) or `config.use_random_teacher` asks for noise.

        The flag lives on the model's device. Reading it there each step would stall the host, so it is read once
        per buffer object (a new one after `from_pretrained` or `.to(device)`), with a readable error; later steps
        check it asynchronously on the device, as `check_mask_counts` does.
        """
        if self.config.use_random_teacher:
            return
        flag = self.has_weights
        message = (
            "The CLIP teacher has no weights, so its targets would be noise. Call model.load_teacher() (loads "
            f"{self.config.teacher_name_or_path!r}), load a pretraining folder that holds a loaded teacher, pass "
            "target_features=..., or set config.use_random_teacher=True if a random teacher is intended (tests, the "
            "offline demo)."
        )
        if torch.compiler.is_compiling():
            torch._assert_async(flag, message)
            return
        if flag.device.type == "cpu" or flag is not self._checked_flag:
            if not bool(flag):
                raise RuntimeError(message)
            self._checked_flag = flag
            return
        torch._assert_async(flag, message)

    @staticmethod
    def renormalisation(config: CAEv2Config) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and shift turning student-normalised pixels into CLIP-normalised ones: one crop, two statistics."""
        statistics = (config.image_mean, config.image_std, config.teacher_image_mean, config.teacher_image_std)
        student_mean, student_std, teacher_mean, teacher_std = (
            torch.tensor(per_channel(values, config.num_channels)) for values in statistics
        )
        scale = student_std / teacher_std
        shift = (student_mean - teacher_mean) / teacher_std
        return scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)

    def train(self, mode: bool = True) -> "CAEv2Teacher":
        """The teacher stays frozen and in eval mode whatever the student does.

        Freezing here too, not only in `__init__`: `from_pretrained` materialises loaded weights as new parameters
        that require gradients, then calls `eval()`; so does any `train()` / `eval()` after a `requires_grad_(True)`.
        """
        self.model.requires_grad_(False)
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Student-normalised `(batch, 3, H, W)` -> targets `(batch, 1 + num_patches, projection_dim)` in image
        order."""
        teacher_dtype = self.model.visual_projection.weight.dtype
        pixel_values = (pixel_values.float() * self.input_scale + self.input_shift).to(teacher_dtype)
        teacher_size = self.config.teacher_config.image_size
        if pixel_values.shape[-1] != teacher_size or pixel_values.shape[-2] != teacher_size:
            pixel_values = F.interpolate(pixel_values, size=(teacher_size, teacher_size), mode="bicubic")
        hidden_states = self.model(pixel_values=pixel_values).last_hidden_state
        # CLIP's last_hidden_state is not post-normalised: apply the final LayerNorm and projection to every token.
        targets = self.model.visual_projection(self.model.vision_model.post_layernorm(hidden_states))
        return F.normalize(self.resample_to_student_grid(targets.float()), dim=-1)

    def resample_to_student_grid(self, targets: torch.Tensor) -> torch.Tensor:
        """Resample patch targets when the teacher grid differs (the config refuses it unless a mode is set)."""
        student_grid = self.config.image_size // self.config.patch_size
        teacher_grid = int((targets.shape[1] - 1) ** 0.5)
        if teacher_grid == student_grid:
            return targets
        if self.config.teacher_grid_resampling is None:
            raise ValueError(
                f"Teacher grid {teacher_grid}x{teacher_grid} differs from the student grid {student_grid}x"
                f"{student_grid}: set config.teacher_grid_resampling='bilinear' or use a matching teacher."
            )
        patches = targets[:, 1:].transpose(1, 2).reshape(targets.shape[0], -1, teacher_grid, teacher_grid)
        patches = F.interpolate(patches, size=(student_grid, student_grid), mode=self.config.teacher_grid_resampling)
        return torch.cat([targets[:, :1], patches.flatten(2).transpose(1, 2)], dim=1)


@torch.no_grad()
def init_teacher_weights(clip: CLIPVisionModelWithProjection) -> None:
    """CLIP's initialisation of every teacher weight not loaded from a checkpoint, each module after its children so
    that a parent's scheme wins, as in CLIP's own `post_init`. transformers' pass over the teacher alone leaves two
    gaps: the patch embedding, replaced by `CAEv2PatchConv2d` after CLIP's `post_init`, gets a plain Conv2d init; and
    from the meta device (`from_pretrained` with missing teacher weights) it skips the CLIP modules without weights
    of their own (attention, MLP, the projection's owner), as it does in any model defined outside transformers."""
    for module in reversed(list(clip.modules())):
        clip._init_weights(module)


def build_image_processor(config: CAEv2Config) -> BitImageProcessor:
    """The stock transformers processor matching the evaluation transform: resize 256 (bicubic), centre crop 224."""
    resize = round(config.image_size * 256 / 224)
    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": resize},
        resample=3,  # PIL bicubic
        do_center_crop=True,
        crop_size={"height": config.image_size, "width": config.image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=per_channel(config.image_mean, config.num_channels),
        image_std=per_channel(config.image_std, config.num_channels),
        do_convert_rgb=True,
    )


CAEV2_AUTO_MAP = {
    "AutoConfig": "configuration_caev2.CAEv2Config",
    "AutoModel": "modeling_caev2.CAEv2Model",
    "AutoModelForPreTraining": "modeling_caev2.CAEv2ForPreTraining",
    "AutoModelForImageClassification": "modeling_caev2.CAEv2ForImageClassification",
}
# Pretraining-only modules, ignored when a pretraining checkpoint loads into the encoder or a classifier.
PRETRAINING_ONLY_KEYS = [r"^latent_projection\.", r"^regressor\.", r"^head\.", r"^teacher\."]


class CAEv2PreTrainedModel(PreTrainedModel):
    """Weight initialisation (docs/method.md#initialisation), loading and saving shared by every CAE v2 head."""

    config_class = CAEv2Config
    config: CAEv2Config
    base_model_prefix = "caev2"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["CAEv2Embeddings", "CAEv2Layer", "CAEv2RegressorLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # What `capture_outputs` (on `CAEv2Model.forward`) records: each encoder block's input and output, its attention.
    _can_record_outputs = {
        "hidden_states": OutputRecorder(CAEv2Layer, index=0),
        "attentions": OutputRecorder(CAEv2Layer, index=1),
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            fan_out = getattr(module, "xavier_fan_out", module.out_features)
            bound = (6.0 / (module.in_features + fan_out)) ** 0.5
            # xavier-uniform for every Linear (docs/method.md#initialisation)
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # The official trunc_normal_ cuts at +-1 std, not at +-2 absolute as torch's default does.
            init.trunc_normal_(module.weight, std=std, a=-std, b=std)
            init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):  # the probe's pooler, the backbone's neck
            if module.affine:
                init.ones_(module.weight)
                init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, CAEv2LayerScale):
            init.constant_(module.lambda1, module.init_value)
        elif isinstance(module, CAEv2Embeddings):
            init.trunc_normal_(module.cls_token, std=std, a=-std, b=std)
            init.copy_(module.position_embeddings, self._sincos_like(module.position_embeddings))
        elif isinstance(module, CAEv2Regressor):
            init.trunc_normal_(module.mask_token, std=std, a=-std, b=std)
            init.copy_(module.position_embeddings, self._sincos_like(module.position_embeddings))
        elif isinstance(module, CAEv2Teacher):
            init_teacher_weights(module.model)
            init.zeros_(module.has_weights)  # a teacher built or loaded without weights has none
            input_scale, input_shift = module.renormalisation(self.config)
            init.copy_(module.input_scale, input_scale)
            init.copy_(module.input_shift, input_shift)

    def set_attn_implementation(self, attn_implementation: str | dict, *args, **kwargs):
        """As transformers'. A model without the teacher (encoder, classifier, backbone) sets it on
        `config.teacher_config` first, as transformers would otherwise do with a warning that it found no teacher
        module, and puts it back if transformers refuses the value: a refused value changes no config."""
        if not isinstance(attn_implementation, str) or hasattr(self, "teacher"):
            return super().set_attn_implementation(attn_implementation, *args, **kwargs)
        teacher_config = self.config.teacher_config
        previous = teacher_config._attn_implementation_internal
        teacher_config._attn_implementation_internal = attn_implementation
        try:
            return super().set_attn_implementation(attn_implementation, *args, **kwargs)
        except Exception:
            teacher_config._attn_implementation_internal = previous
            raise

    def _sincos_like(self, table: torch.Tensor) -> torch.Tensor:
        grid = self.config.image_size // self.config.patch_size
        return build_2d_sincos_position_embedding(grid, grid, table.shape[-1])[None]

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """Also write the stock image processor, so `AutoImageProcessor.from_pretrained(folder)` works.

        `auto_map` names every head, so any Auto class loads the folder with `trust_remote_code=True`.
        """
        self.config.auto_map = dict(CAEV2_AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            build_image_processor(self.config).save_pretrained(save_directory)


class CAEv2Model(CAEv2PreTrainedModel):
    r"""
    The CAE v2 ViT encoder. Without `bool_masked_pos` it encodes every patch (downstream use); with it, only [CLS] and
    the visible patches enter the blocks, as in pretraining.

    `pooler_output` is the feature `config.classifier_pooling` names: [CLS] after the final LayerNorm, or with
    `"mean"` (a fine-tuned classifier's encoder, BEiT's pooling) the final LayerNorm of the mean of the patch tokens;
    the norm then applies to that mean only, so `last_hidden_state` is the last block's output. The norm keeps its key
    (`layernorm`) either way, so a pretrained final norm loads into it unchanged (the recipe's `fc_norm` starting as
    the final norm, docs/method.md#initialisation).

    Example:

    ```python
    >>> import torch
    >>> from caev2_hf import CAEv2Config, CAEv2Model
    >>> config = CAEv2Config.from_preset("tiny", image_size=32, patch_size=8, num_hidden_layers=2, num_masking_patches=4)
    >>> model = CAEv2Model(config).eval()
    >>> model(torch.randn(1, 3, 32, 32)).last_hidden_state.shape
    torch.Size([1, 17, 192])
    ```"""

    _keys_to_ignore_on_load_unexpected = PRETRAINING_ONLY_KEYS

    def __init__(self, config: CAEv2Config) -> None:
        super().__init__(config)
        self.embeddings = CAEv2Embeddings(config)
        self.encoder = CAEv2Encoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> CAEv2PatchEmbeddings:
        return self.embeddings.patch_embeddings

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images normalised with `config.image_mean` / `config.image_std` (the saved image processor does it).
            bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
                True marks a masked patch; masked patches are dropped, not replaced. Every image must mask exactly
                `config.num_masking_patches` patches.
            interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
                Accept another resolution; its sin-cos table is computed exactly for the new grid.
            output_hidden_states (`bool`, *optional*): Return the input of every block and the last block's output
                (defaults to `config.output_hidden_states`).
            output_attentions (`bool`, *optional*): Return attention maps, eager attention only (defaults to
                `config.output_attentions`).
            return_dict (`bool`, *optional*): Return a `ModelOutput` instead of a tuple (defaults to
                `config.return_dict`).

        Returns:
            `BaseModelOutputWithPooling`: `last_hidden_state` `(batch_size, 1 + num_kept_patches, hidden_size)` after
            the final LayerNorm and `pooler_output` the normalised [CLS] token (the linear-probe feature); with
            `config.classifier_pooling="mean"`, the last block's output and the normalised mean of its patch tokens.
        """
        warn_if_attentions_unavailable(self.config, kwargs.get("output_attentions"))
        visible_ids = None
        if bool_masked_pos is not None:
            check_mask_shape(bool_masked_pos, pixel_values, self.config.patch_size)
            visible_ids, _ = split_visible_and_masked(bool_masked_pos, self.config.num_masking_patches)
        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.projection.weight.dtype)
        embeddings = self.embeddings(pixel_values, visible_ids, interpolate_pos_encoding)
        hidden_states = self.encoder(embeddings).last_hidden_state
        if self.config.classifier_pooling == "mean":
            sequence_output = hidden_states
            pooled_output = self.layernorm(hidden_states[:, 1:].mean(dim=1))
        else:
            sequence_output = self.layernorm(hidden_states)
            pooled_output = sequence_output[:, 0]
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled_output)


def compute_token_losses(predictions: torch.Tensor, targets: torch.Tensor, loss_type: str) -> torch.Tensor:
    """Per-token distance `(batch, tokens)` between L2-normalised predictions and targets (paper Table 2)."""
    if loss_type == "cosine":
        return 1 - (predictions * targets).sum(dim=-1)
    if loss_type == "mse":
        return F.mse_loss(predictions, targets, reduction="none").mean(dim=-1)
    return F.smooth_l1_loss(predictions, targets, reduction="none").mean(dim=-1)


def combine_group_losses(token_losses: torch.Tensor, num_visible: int, config: CAEv2Config) -> dict[str, torch.Tensor]:
    """Per-group means and the loss over supervised tokens, each group weighted by its token count
    (docs/method.md#loss).

    With every group on this is the official mean over [CLS] + visible + masked; visible-only is paper Eq. (1) with
    `dm = 0` ("CAE v2"), visible + masked is "CAE v2+".
    """
    groups = {
        "cls_loss": (token_losses[:, :1], config.supervise_cls),
        "visible_loss": (token_losses[:, 1 : 1 + num_visible], config.supervise_visible),
        "masked_loss": (token_losses[:, 1 + num_visible :], config.supervise_masked),
    }
    losses, weighted_sum, num_supervised = {}, token_losses.new_zeros(()), 0
    for name, (group, supervised) in groups.items():
        losses[name] = group.mean() if group.shape[1] else token_losses.new_zeros(())
        if supervised and group.shape[1]:
            weighted_sum = weighted_sum + group.sum() / group.shape[0]
            num_supervised += group.shape[1]
    losses["loss"] = weighted_sum / num_supervised
    return losses


def draw_random_mask(batch_size: int, num_patches: int, num_masked: int, device: torch.device) -> torch.Tensor:
    """Uniform random mask with exactly `num_masked` patches per image, drawn on the device (no host work)."""
    masked_ids = torch.rand(batch_size, num_patches, device=device).argsort(dim=1)[:, :num_masked]
    return torch.zeros(batch_size, num_patches, dtype=torch.bool, device=device).scatter_(1, masked_ids, True)


class CAEv2ForPreTraining(CAEv2PreTrainedModel):
    r"""
    CAE v2 pretraining: encoder on visible patches, latent regressor for masked patches, a shared head, and the
    frozen CLIP teacher giving targets for [CLS], visible and masked tokens.

    The teacher is a frozen submodule saved with the model (docs/design.md#teacher): `load_teacher()` gives it the
    weights of `config.teacher_name_or_path` once, and every later `save_pretrained` / `from_pretrained` carries them,
    so a pretraining folder continues without a download. A teacher that never received weights refuses to give
    targets: call `load_teacher()`, pass `target_features`, or set `config.use_random_teacher=True`.

    Example:

    ```python
    >>> import torch
    >>> from caev2_hf import CAEv2Config, CAEv2ForPreTraining
    >>> config = CAEv2Config.from_preset(
    ...     "tiny", image_size=32, patch_size=8, num_hidden_layers=2, num_masking_patches=4, use_random_teacher=True,
    ...     teacher_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    ...                         image_size=32, patch_size=8, projection_dim=512))
    >>> model = CAEv2ForPreTraining(config)
    >>> outputs = model(torch.randn(2, 3, 32, 32))
    >>> outputs.logits.shape
    torch.Size([2, 17, 512])
    ```"""

    # forward() takes **kwargs but computes a mean loss: Trainer must still divide it for gradient accumulation.
    accepts_loss_kwargs = False

    def __init__(self, config: CAEv2Config) -> None:
        config.validate_for_pretraining()
        super().__init__(config)
        self.caev2 = CAEv2Model(config)
        if config.regressor_hidden_size != config.hidden_size:
            self.latent_projection = CAEv2LatentProjection(config)
        else:
            self.latent_projection = nn.Identity()
        self.regressor = CAEv2Regressor(config)
        self.head = CAEv2Head(config)
        self.teacher = CAEv2Teacher(config)
        self.post_init()

    def get_input_embeddings(self) -> CAEv2PatchEmbeddings:
        return self.caev2.get_input_embeddings()

    def load_teacher(
        self, teacher_name_or_path: str | os.PathLike | None = None, dtype: torch.dtype | None = None, **kwargs
    ) -> None:
        """Load the frozen CLIP teacher's weights (by default from `config.teacher_name_or_path`).

        Args:
            teacher_name_or_path: Hub id or local folder of a CLIP checkpoint whose vision tower matches
                `config.teacher_config`.
            dtype: Precision to keep the teacher in (bfloat16 on GPU halves its cost; targets are normalised in fp32).
            kwargs: Passed to `CLIPVisionModelWithProjection.from_pretrained` (e.g. `token`, `revision`).
        """
        source = teacher_name_or_path or self.config.teacher_name_or_path
        pretrained = CLIPVisionModelWithProjection.from_pretrained(source, **kwargs)
        expected, found = self.config.teacher_config, pretrained.config
        fields = ("hidden_size", "num_hidden_layers", "patch_size", "image_size", "projection_dim")
        mismatched = [
            f"{name}: {getattr(found, name)} != {getattr(expected, name)}"
            for name in fields
            if getattr(found, name) != getattr(expected, name)
        ]
        if mismatched:
            raise ValueError(
                f"The teacher at {source} does not match config.teacher_config ({'; '.join(mismatched)}): build the "
                f"config with teacher_config=CLIPVisionConfig.from_pretrained({str(source)!r})."
            )
        self.teacher.model.load_state_dict(pretrained.state_dict())
        if dtype is not None:
            self.teacher.model.to(dtype)
        self.teacher.has_weights.fill_(True)

    def compute_target_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Teacher targets `(batch, 1 + num_patches, target_hidden_size)` in image order, L2-normalised."""
        self.teacher.check_has_weights()
        return self.teacher(pixel_values)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.BoolTensor | None = None,
        target_features: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CAEv2ForPreTrainingOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`):
                One crop per image, normalised with the student statistics; the teacher sees the same crop,
                re-normalised with CLIP's statistics on the device.
            bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
                True = masked; exactly `config.num_masking_patches` per image. Without it a uniformly random mask
                with that count is drawn on the device (training takes block masks from `caev2_hf.data.masking`).
            target_features (`torch.FloatTensor` of shape `(batch_size, 1 + num_patches, target_hidden_size)`,
                *optional*): Teacher tokens in image order ([CLS] first). When given, the teacher is not run; they
                are L2-normalised here as the teacher's own are, so raw cached features need no normalising.
            output_hidden_states / output_attentions / return_dict: as for `CAEv2Model` (encoder states only).
        """
        batch_size, num_patches = pixel_values.shape[0], self.config.num_patches
        size = self.config.image_size
        if tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(
                f"Pretraining takes {size}x{size} images (config.image_size), got pixel_values of shape "
                f"{tuple(pixel_values.shape)}: crop or resize them, or pretrain with a config of that image_size."
            )
        if bool_masked_pos is None:
            bool_masked_pos = draw_random_mask(
                batch_size, num_patches, self.config.num_masking_patches, pixel_values.device
            )
        visible_ids, masked_ids = split_visible_and_masked(bool_masked_pos, self.config.num_masking_patches)

        encoder_outputs = self.caev2(pixel_values, bool_masked_pos=bool_masked_pos, return_dict=True, **kwargs)
        latents = self.latent_projection(encoder_outputs.last_hidden_state)
        predicted_masked = self.regressor(latents[:, 1:], visible_ids, masked_ids)
        logits = self.head(torch.cat([latents, predicted_masked], dim=1))

        if target_features is None:
            target_features = self.compute_target_features(pixel_values)
        targets = self.order_like_predictions(target_features, visible_ids, masked_ids)
        token_losses = compute_token_losses(logits, targets, self.config.loss_type)
        losses = combine_group_losses(token_losses, visible_ids.shape[1], self.config)

        return CAEv2ForPreTrainingOutput(
            **losses,
            logits=logits,
            targets=targets,
            bool_masked_pos=bool_masked_pos,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )

    def order_like_predictions(
        self, target_features: torch.Tensor, visible_ids: torch.Tensor, masked_ids: torch.Tensor
    ) -> torch.Tensor:
        """Image-order targets -> [CLS, visible..., masked...], the order of the predictions, L2-normalised in fp32
        (docs/method.md#head-and-targets): the authors normalise every target, so cached raw CLIP features passed as
        `target_features` give the loss the teacher's own targets give."""
        expected = (visible_ids.shape[0], 1 + self.config.num_patches, self.config.target_hidden_size)
        if tuple(target_features.shape) != expected:
            raise ValueError(
                f"target_features has shape {tuple(target_features.shape)}, expected {expected} "
                f"(batch, 1 + num_patches, target_hidden_size) in image order with [CLS] first."
            )
        patch_targets = target_features[:, 1:]
        ordered = [
            target_features[:, :1],
            gather_tokens(patch_targets, visible_ids),
            gather_tokens(patch_targets, masked_ids),
        ]
        return F.normalize(torch.cat(ordered, dim=1).to(torch.float32), dim=-1)


class CAEv2ClsBatchNormPooler(nn.Module):
    """Linear-probe features: [CLS] after the final norm, then BatchNorm without affine (official probe,
    docs/method.md#recipes)."""

    def __init__(self, config: CAEv2Config) -> None:
        super().__init__()
        self.batch_norm = nn.BatchNorm1d(config.hidden_size, affine=False, eps=1e-6)

    def forward(self, pooled_output: torch.Tensor) -> torch.Tensor:
        if self.training and pooled_output.shape[0] == 1:
            raise ValueError(
                "classifier_pooling='cls' normalises with batch statistics, which one image does not have: train "
                "with batches of 2 or more (with Trainer, set dataloader_drop_last=True for a last batch of one)."
            )
        return self.batch_norm(pooled_output)


def compute_classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: CAEv2Config) -> torch.Tensor:
    """Cross-entropy, BCE or MSE following `config.problem_type`, inferred from the labels as transformers does."""
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.squeeze(-1).float())
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.float().view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


class CAEv2ForImageClassification(CAEv2PreTrainedModel):
    r"""
    CAE v2 encoder with a classification head: `config.classifier_pooling="mean"` for fine-tuning (mean of the patch
    tokens -> LayerNorm -> Linear, BEiT's head) or `"cls"` for linear probing ([CLS] after the final LayerNorm ->
    BatchNorm without affine -> Linear).

    With mean pooling the encoder applies its final LayerNorm to the pooled feature only (see `CAEv2Model`): that norm
    is the recipe's `fc_norm`, starts as the pretrained final norm because it keeps its checkpoint key, and every
    parameter of the model takes part in the loss. A config without a head (`classifier_pooling=None`, a pretrained
    encoder's) gets the fine-tuning head, recorded in this model's own copy of the config: its saved folder, loaded
    with `AutoModel`, then gives the feature the head was trained on.

    Example:

    ```python
    >>> import torch
    >>> from caev2_hf import CAEv2Config, CAEv2ForImageClassification
    >>> config = CAEv2Config.from_preset("tiny", image_size=32, patch_size=8, num_hidden_layers=2,
    ...                                  num_masking_patches=4, num_labels=3)
    >>> model = CAEv2ForImageClassification(config).eval()
    >>> model(torch.randn(2, 3, 32, 32)).logits.shape
    torch.Size([2, 3])
    ```"""

    accepts_loss_kwargs = False  # see CAEv2ForPreTraining
    _keys_to_ignore_on_load_unexpected = PRETRAINING_ONLY_KEYS

    def __init__(self, config: CAEv2Config) -> None:
        if config.classifier_pooling is None:  # no head chosen (an encoder's config): the fine-tuning head, in a copy
            config = copy.deepcopy(config)
            config.classifier_pooling = "mean"
        super().__init__(config)
        self.num_labels = config.num_labels
        self.caev2 = CAEv2Model(config)
        self.pooler = nn.Identity() if config.classifier_pooling == "mean" else CAEv2ClsBatchNormPooler(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels else nn.Identity()
        self.post_init()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Module-wise init, then the head's own (skipped for tensors loaded from a checkpoint)."""
        super().initialize_weights()
        if not isinstance(self.classifier, nn.Linear):
            return
        if self.config.classifier_pooling == "mean":
            # BEiT fine-tuning: small head init.
            init.trunc_normal_(self.classifier.weight, std=self.config.initializer_range)
            init.copy_(self.classifier.weight, self.classifier.weight * self.config.classifier_init_scale)
        else:
            init.trunc_normal_(self.classifier.weight, std=0.01)
        init.zeros_(self.classifier.bias)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`): Normalised images.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): Class indices for the loss (or floats
                for regression / multi-label, following `config.problem_type`).
            interpolate_pos_encoding / output_hidden_states / output_attentions / return_dict: as for `CAEv2Model`.
        """
        outputs = self.caev2(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        logits = self.classifier(self.pooler(outputs.pooler_output))
        loss = compute_classification_loss(logits, labels, self.config) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "CAEv2PreTrainedModel",
    "CAEv2Model",
    "CAEv2ForPreTraining",
    "CAEv2ForImageClassification",
    "CAEv2ForPreTrainingOutput",
]
