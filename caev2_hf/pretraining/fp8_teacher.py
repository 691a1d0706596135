# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""An optional FP8 teacher: the frozen CLIP teacher's Linear layers run as FP8 (e4m3) matmuls with row-wise scales.

The teacher is about a third of a ViT-B pretraining step and never trains, so its matmuls are the cheapest place to
trade precision for speed: Hopper GPUs multiply FP8 at about twice the bf16 rate. Weights are quantised once (they
are frozen), activations on every call, each row with its own scale, through `torch._scaled_mm`, which PyTorch also
implements on the CPU (so the fidelity test runs anywhere). Attention products, norms, GELU and the patch
convolution stay in the teacher's dtype, and so does the final 768 -> 512 projection: it is 1% of the teacher's
FLOPs but half of its FP8 error (the targets are its normalised outputs). Off by default (`--teacher_fp8 true`).
The run measures the fidelity on its first batch: when FP8 targets agree with the teacher's own at a mean cosine
below 0.999, it warns and keeps the teacher as it was.
"""

import logging

import torch
import torch.nn.functional as F
from torch import nn


logger = logging.getLogger(__name__)


FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448
MATMUL_MULTIPLE = 16  # _scaled_mm needs both matrix dimensions of the weight to be multiples of 16
KEPT_IN_TEACHER_DTYPE = ("visual_projection",)
MIN_MEAN_COSINE = 0.999


def quantize_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(rows, k)` -> FP8 values and float32 scales `(rows, 1)` with `matrix ~ values * scales`, row by row."""
    matrix = matrix.float()
    scales = matrix.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (matrix / scales).to(FP8_DTYPE), scales


class Fp8Linear(nn.Linear):
    """A frozen `nn.Linear` computing `x W^T + b` from FP8 copies of `x` and `W`.

    The original weight stays a parameter (the state dict keeps its keys and values); its FP8 copy and scales are
    buffers that are not saved, made once at construction.
    """

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)  # not nn.Linear's: no new storage, the parameters are the given layer's
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        weight_fp8, weight_scales = quantize_rows(linear.weight.detach())
        self.register_buffer("weight_fp8", weight_fp8, persistent=False)
        self.register_buffer("weight_scales", weight_scales.t().contiguous(), persistent=False)  # (1, out)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        rows = hidden_states.reshape(-1, self.in_features)
        values, scales = quantize_rows(rows)
        bias = None if self.bias is None else self.bias.to(torch.bfloat16)
        output = torch._scaled_mm(
            values, self.weight_fp8.t(), scale_a=scales, scale_b=self.weight_scales, bias=bias,
            out_dtype=torch.bfloat16,
        )  # fmt: skip
        return output.to(hidden_states.dtype).reshape(*hidden_states.shape[:-1], self.out_features)


def convert_linears_to_fp8(module: nn.Module, keep: tuple[str, ...] = KEPT_IN_TEACHER_DTYPE) -> list[tuple]:
    """Replaces every frozen `nn.Linear` of `module` whose sizes FP8 matmuls accept by an `Fp8Linear`, in place,
    except those named in `keep`. Returns `(parent, name, original)` for each, which `restore_linears` undoes.

    Refuses a module with trainable Linear layers: FP8 here has no backward.
    """
    replaced = []
    for name, child in module.named_children():
        if type(child) is nn.Linear and name not in keep:
            if child.weight.requires_grad:
                raise ValueError(f"{name} is trainable: only a frozen teacher's Linear layers can run in FP8.")
            if child.in_features % MATMUL_MULTIPLE == 0 and child.out_features % MATMUL_MULTIPLE == 0:
                setattr(module, name, Fp8Linear(child))
                replaced.append((module, name, child))
        elif type(child) is not nn.Linear:
            replaced += convert_linears_to_fp8(child, keep)
    return replaced


def restore_linears(replaced: list[tuple]) -> None:
    for parent, name, original in replaced:
        setattr(parent, name, original)


@torch.no_grad()
def enable_fp8_teacher(teacher: nn.Module, pixel_values: torch.Tensor, min_mean_cosine: float = MIN_MEAN_COSINE):
    """Switches the teacher's matmuls to FP8 if its targets on `pixel_values` (student-normalised images, a training
    batch) stay within `min_mean_cosine` of the current ones; otherwise warns and leaves the teacher unchanged.

    Returns the measured mean cosine between FP8 and original targets over every token.
    """
    reference = teacher(pixel_values)
    replaced = convert_linears_to_fp8(teacher)
    mean_cosine = F.cosine_similarity(teacher(pixel_values), reference, dim=-1).mean().item()
    if mean_cosine < min_mean_cosine:
        restore_linears(replaced)
        logger.warning(
            f"FP8 teacher targets agree with the teacher's own at a mean cosine of {mean_cosine:.5f} < "
            f"{min_mean_cosine} on the first batch: the teacher keeps its precision (drop --teacher_fp8)."
        )
    else:
        logger.info(
            f"Teacher matmuls in FP8 ({len(replaced)} Linear layers): mean cosine {mean_cosine:.5f} to the "
            "teacher's own targets on the first batch."
        )
    return mean_cosine
