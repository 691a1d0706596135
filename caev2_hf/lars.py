# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""LARS, the linear-probe optimizer of MoCo v3 / MAE / CAE v2 (SPEC §8): SGD with momentum whose step on each matrix
is rescaled so that it moves the weights by a fixed fraction (the trust coefficient) of their norm."""

from collections.abc import Iterable

import torch


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
