"""Additive Laplace noise on the shared update (as evaluated by Zhu et al. 2019, DLG §5)."""

from __future__ import annotations

from fedinvert.defenses.base import AdditiveNoise, check_positive, register_defense


@register_defense("laplace_noise")
class LaplaceNoise(AdditiveNoise):
    """Add i.i.d. Laplace(0, scale) noise to every entry of the update (standard deviation √2·scale).

    Not replayable: an adaptive attacker cannot reproduce the noise.

    Args:
        scale: the Laplace scale b, in the update's units (≥ 0; DLG tries 1e-4 … 1e-1).
    """

    noise_kind = "laplace"

    def __init__(self, *, scale: float = 0.01) -> None:
        self.scale = check_positive("laplace_noise.scale", scale, allow_zero=True)

    @property
    def noise_scale(self) -> float:
        return self.scale
