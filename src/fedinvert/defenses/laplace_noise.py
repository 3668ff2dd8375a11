"""Additive Laplace noise on the shared update (as evaluated by Zhu et al. 2019, DLG §5)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fedinvert.defenses.base import Defense, check_positive, noise_like, register_defense


@register_defense("laplace_noise")
class LaplaceNoise(Defense):
    """Add i.i.d. Laplace(0, scale) noise to every entry of the update (standard deviation √2·scale).

    Not replayable: an adaptive attacker cannot reproduce the noise.

    Args:
        scale: the Laplace scale b, in the update's units (≥ 0; DLG tries 1e-4 … 1e-1).
    """

    def __init__(self, *, scale: float = 0.01) -> None:
        self.scale = check_positive("laplace_noise.scale", scale, allow_zero=True)

    def apply(
        self,
        update: dict[str, Tensor],
        *,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        rng: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        return {n: t + self.scale * noise_like(t, rng, kind="laplace") for n, t in update.items()}
