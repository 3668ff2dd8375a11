"""Magnitude pruning ("gradient compression") of the shared update (Zhu et al. 2019; GIFD's
``gradient_compression``; Lin et al. 2018, deep gradient compression)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedinvert.defenses.base import Defense, check_ratio, register_defense


def prune_smallest(tensor: Tensor, ratio: float) -> Tensor:
    """Zero exactly ``⌊ratio · numel⌋`` entries of ``tensor``: those of smallest magnitude.

    Ties are broken by position (a stable sort), so the count is exact even among equal magnitudes; with
    ``ratio < 1`` at least one entry survives.
    """
    k = pruned_count(ratio, tensor.numel())
    if k == 0:
        return tensor.clone()
    flat = tensor.flatten().clone()
    flat[torch.argsort(flat.abs(), stable=True)[:k]] = 0
    return flat.view_as(tensor)


def pruned_count(ratio: float, size: int) -> int:
    """⌊ratio · size⌋ (robust to float error such as 0.29 · 100 = 28.999…): how many of ``size`` are pruned."""
    return min(size, math.floor(ratio * size + 1e-9))


@register_defense("pruning")
class Pruning(Defense):
    """Per tensor, zero the ``prune_ratio`` fraction of entries with the smallest magnitude (top-k sparsification).

    Replayable: the adaptive attacker multiplies its dummy update by the observed support (1 where the
    observed entry is non-zero), so it compares only the entries the client sent.

    Args:
        prune_ratio: fraction of entries zeroed per tensor, in [0, 1) (GIFD default 0.2, its defence
            configs 0.9; DLG tries up to 0.99 — pass 0.99).
    """

    replayable = True

    def __init__(self, *, prune_ratio: float = 0.2) -> None:
        self.prune_ratio = check_ratio("pruning.prune_ratio", prune_ratio)

    def apply(
        self,
        update: dict[str, Tensor],
        *,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        rng: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        return {n: prune_smallest(t, self.prune_ratio) for n, t in update.items()}

    def replay(
        self, dummy_update: list[Tensor], observed: list[Tensor], *, names: Sequence[str] | None = None
    ) -> list[Tensor]:
        return [d * (o != 0).to(d.dtype) for d, o in zip(dummy_update, observed, strict=True)]
