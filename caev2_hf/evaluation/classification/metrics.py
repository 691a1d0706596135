# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Top-1 / top-5 accuracy of a classifier, shared by linear probing and fine-tuning."""

import torch


TOP_K = (1, 5)


def rank_predictions(logits: torch.Tensor, k: int = max(TOP_K)) -> torch.Tensor:
    """Class indices `(batch, min(k, num_classes))`, best first: all that top-k accuracy needs.

    Equal logits rank the lower class index first, as `argmax` picks it (a stable sort; `topk` leaves ties in no
    stated order).
    """
    return logits.sort(dim=-1, descending=True, stable=True).indices[:, :k]


def compute_topk_accuracy(
    ranked_predictions: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> dict[str, float | None]:
    """`top{k}_accuracy` for k in `TOP_K`: the fraction of examples whose label is among their first k ranked classes.

    None for a k that reaches the class count (top-5 of 5 classes or fewer): every example would count as right.
    """
    hits = ranked_predictions == labels.to(ranked_predictions.device)[:, None]
    return {
        f"top{k}_accuracy": hits[:, :k].any(dim=1).float().mean().item() if k < num_classes else None for k in TOP_K
    }


def describe_missing_topk(k: int, num_classes: int) -> str:
    """Why a top-k is left out: every label is among the first k of `num_classes` ranked classes."""
    return f"every label is among the top {k} of {num_classes} classes"


def format_topk_accuracy(result) -> str:
    """`top-1 81.23 %, top-5 95.00 %` from a result's `top{k}_accuracy` and `num_classes`; a top-k left out (None)
    says why."""
    parts = []
    for k in TOP_K:
        value = getattr(result, f"top{k}_accuracy")
        described = (
            f"{100 * value:.2f} %" if value is not None else f"n/a ({describe_missing_topk(k, result.num_classes)})"
        )
        parts.append(f"top-{k} {described}")
    return ", ".join(parts)


def topk_notes(result) -> dict[str, str]:
    """For results.json, beside each top-k left out (None): `{"top5_accuracy_note": why}`; empty when none is."""
    return {
        f"top{k}_accuracy_note": f"null: {describe_missing_topk(k, result.num_classes)}"
        for k in TOP_K
        if getattr(result, f"top{k}_accuracy") is None
    }
