"""Additive Gaussian noise on the shared update (Zhu et al. 2019, DLG §5; GIFD's ``additive_noise``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fedinvert.defenses.base import Defense, check_positive, noise_like, register_defense


@register_defense("gaussian_noise")
class GaussianNoise(Defense):
    """Add i.i.d. N(0, std²) noise to every entry of the update.

    Not replayable: an adaptive attacker cannot reproduce the noise.

    Args:
        std: standard deviation σ of the noise, in the update's units (≥ 0; GIFD default 0.01, its FFHQ
            defence config 0.1; the survey's CIFAR run 0.1).
    """

    def __init__(self, *, std: float = 0.01) -> None:
        self.std = check_positive("gaussian_noise.std", std, allow_zero=True)

    def apply(
        self,
        update: dict[str, Tensor],
        *,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        rng: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        return {n: t + self.std * noise_like(t, rng, kind="normal") for n, t in update.items()}
