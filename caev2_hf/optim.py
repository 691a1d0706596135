# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Optimizers and their parameter groups: weight decay by tensor rank, layer-wise lr decay (the AdamW of fine-tuning,
segmentation and detection), and LARS, the linear probe's optimizer (MoCo v3 / MAE / CAE v2): SGD with momentum whose step on
each matrix is rescaled to move the weights by a fixed fraction (the trust coefficient) of their norm
(docs/method.md#recipes)."""

import re
from collections.abc import Iterable

import torch
from torch import nn


def layer_id_for_parameter(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer decay: 0 for embeddings and tokens, i + 1 for encoder block i, L + 1 above.

    Names are those of any CAE v2 model or of a model wrapping its encoder: `caev2.` (the head models), `backbone.`
    (UperNet) or `backbone.body.` (torchvision's detectors) prefix or none, behind DDP's `module.`. MAE's and BEiT's
    `get_layer_id` rule.
    """
    name = name.removeprefix("module.").removeprefix("caev2.").removeprefix("backbone.").removeprefix("body.")
    if name.startswith("embeddings."):
        return 0
    match = re.match(r"encoder\.layers\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    return num_layers + 1


def is_decayed(parameter: torch.Tensor) -> bool:
    """Matrices and convolutions decay; biases, norms, layer scales (all 1-D) do not. The [CLS] and mask tokens are
    3-D and decay, as in the official pretraining (docs/method.md#initialisation)."""
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
        decay = weight_decay if is_decayed(parameter) and name not in skip_weight_decay else 0.0
        scale = (
            1.0 if layer_decay is None else layer_decay ** (num_layers + 1 - layer_id_for_parameter(name, num_layers))
        )
        group = groups.setdefault(
            (decay, scale), {"params": [], "names": [], "weight_decay": decay, "lr_scale": scale}
        )
        group["params"].append(parameter)
        group["names"].append(name)
    return list(groups.values())


def build_layer_decay_optimizer(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    layer_decay: float,
    num_layers: int,
    skip_weight_decay: tuple[str, ...] = (),
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW whose groups scale the lr by `layer_decay ** (num_layers + 1 - depth)` (`layer_id_for_parameter`), the
    optimizer of fine-tuning, segmentation and detection; weight decay as `build_parameter_groups` gives it.

    Pass it as `Trainer(optimizers=(optimizer, scheduler))`: a scheduler scales every group's own lr alike.
    """
    groups = build_parameter_groups(model, weight_decay, layer_decay, num_layers, skip_weight_decay)
    for group in groups:
        group["lr"] = learning_rate * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps)


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling.

    For a tensor with more than one dimension the update is `u = g + weight_decay * w`, rescaled by
    `trust_coefficient * ||w|| / ||u||` when both norms are positive; 1-D tensors (biases, norms) get the plain
    gradient, with neither weight decay nor rescaling. Then `m = momentum * m + u` and `w = w - lr * m`.

    Args:
        params: Parameters or parameter groups; a group may set its own `lr`, `weight_decay`, `momentum`,
            `trust_coefficient`.
        lr: Learning rate (the linear probe uses `0.1 * batch_size / 256`).
        weight_decay: Decay of matrices (0 for the linear probe).
        momentum: Momentum factor.
        trust_coefficient: Fraction of a matrix's norm that one step of unit learning rate moves it by.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ) -> None:
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise ValueError(
                f"LARS needs lr >= 0, weight_decay >= 0, 0 <= momentum < 1 and trust_coefficient > 0; got lr={lr}, "
                f"weight_decay={weight_decay}, momentum={momentum}, trust_coefficient={trust_coefficient}."
            )
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "trust_coefficient": trust_coefficient,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                update = self._adapted_update(parameter, group)
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(parameter)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                parameter.add_(buffer, alpha=-group["lr"])
        return loss

    @staticmethod
    def _adapted_update(parameter: torch.Tensor, group: dict) -> torch.Tensor:
        """The gradient, with weight decay and the trust-ratio rescaling applied to matrices only."""
        update = parameter.grad
        if parameter.ndim <= 1:
            return update
        update = update.add(parameter, alpha=group["weight_decay"])
        parameter_norm, update_norm = torch.linalg.vector_norm(parameter), torch.linalg.vector_norm(update)
        # torch.where keeps the ratio on the device: no host sync per tensor.
        ratio = torch.where(
            (parameter_norm > 0) & (update_norm > 0),
            group["trust_coefficient"] * parameter_norm / update_norm,
            torch.ones_like(parameter_norm),
        )
        return update * ratio
