"""Optimizer parameter groups: weight decay by tensor rank, optional layer-wise lr decay (SPEC §8)."""

import re

import torch
from torch import nn


def layer_id_for_parameter(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer decay: 0 for embeddings and tokens, i + 1 for encoder block i, L + 1 above.

    Names are those of any CAE v2 model (`caev2.` prefix or not): MAE's and BEiT's `get_layer_id` rule.
    """
    name = name.removeprefix("module.").removeprefix("caev2.")
    if name.startswith("embeddings."):
        return 0
    match = re.match(r"encoder\.layers\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    return num_layers + 1


def is_decayed(name: str, parameter: torch.Tensor) -> bool:
    """Matrices and convolutions decay; biases, norms, layer scales (all 1-D) do not. The [CLS] and mask tokens are
    3-D and decay, as in the official pretraining (SPEC §7)."""
    return parameter.ndim >= 2


def build_parameter_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float | None = None,
    num_layers: int | None = None,
    skip_weight_decay: tuple[str, ...] = (),
) -> list[dict]:
    """Trainable parameters grouped by (weight decay, lr scale); frozen ones (the teacher) are left out.

    Args:
        model: any CAE v2 model.
        weight_decay: decay for matrices; 1-D tensors and names in `skip_weight_decay` get 0.
        layer_decay: when set, group `lr_scale = layer_decay ** (num_layers + 1 - layer_id)` (fine-tuning).
        num_layers: encoder depth, needed with `layer_decay`.
        skip_weight_decay: exact parameter names that must not decay (e.g. the fine-tuning recipe's tokens).
    """
    if layer_decay is not None and num_layers is None:
        raise ValueError("layer_decay needs num_layers (the encoder depth, config.num_hidden_layers).")
    groups: dict[tuple[float, float], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decay = weight_decay if is_decayed(name, parameter) and name not in skip_weight_decay else 0.0
        scale = (
            1.0 if layer_decay is None else layer_decay ** (num_layers + 1 - layer_id_for_parameter(name, num_layers))
        )
        group = groups.setdefault(
            (decay, scale), {"params": [], "names": [], "weight_decay": decay, "lr_scale": scale}
        )
        group["params"].append(parameter)
        group["names"].append(name)
    return list(groups.values())
