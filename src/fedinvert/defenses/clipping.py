"""Norm clipping of the shared update (GIFD's ``gradient_clipping``; the clipping half of DP-FedAvg)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedinvert.defenses.base import Defense, as_dict, as_list, check_positive, register_defense


def clip_by_norm(tensors: Sequence[Tensor], *, bound: float, per_layer: bool = False) -> list[Tensor]:
    """Scale ``tensors`` so that their L2 norm is at most ``bound`` (unchanged when it already is).

    Global: one factor ``min(1, bound / ‖(t_1, …, t_n)‖₂)`` for all tensors jointly; per layer: each tensor
    by its own factor ``min(1, bound / ‖t_i‖₂)``. Pure and differentiable (the attacker's replay).
    """
    if per_layer:
        return [t * (bound / t.norm().clamp_min(bound)) for t in tensors]
    total = torch.sqrt(sum((t * t).sum() for t in tensors))  # type: ignore[arg-type]
    factor = bound / total.clamp_min(bound)
    return [t * factor for t in tensors]


@register_defense("clipping")
class Clipping(Defense):
    """Clip the update's L2 norm to ``bound``, over all tensors jointly or per tensor.

    Replayable: the adaptive attacker clips its dummy update the same way.

    Args:
        bound: the norm bound C, in the update's units (> 0; GIFD default 4).
        per_layer: clip each parameter tensor to ``bound`` on its own instead of the whole update.
    """

    replayable = True

    def __init__(self, *, bound: float = 4.0, per_layer: bool = False) -> None:
        self.bound = check_positive("clipping.bound", bound)
        self.per_layer = bool(per_layer)

    def apply(
        self,
        update: dict[str, Tensor],
        *,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        rng: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        names, tensors = as_list(update)
        return as_dict(names, clip_by_norm(tensors, bound=self.bound, per_layer=self.per_layer))

    def replay(
        self, dummy_update: list[Tensor], observed: list[Tensor], *, names: Sequence[str] | None = None
    ) -> list[Tensor]:
        return clip_by_norm(dummy_update, bound=self.bound, per_layer=self.per_layer)
