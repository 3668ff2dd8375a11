"""Additive Gaussian noise on the shared update (Zhu et al. 2019, DLG §5; GIFD's ``additive_noise``)."""

from __future__ import annotations

from fedinvert.defenses.base import AdditiveNoise, check_positive, register_defense


@register_defense("gaussian_noise")
class GaussianNoise(AdditiveNoise):
    """Add i.i.d. N(0, std²) noise to every entry of the update.

    Not replayable: an adaptive attacker cannot reproduce the noise.

    Args:
        std: standard deviation σ of the noise, in the update's units (≥ 0; GIFD default 0.01, its FFHQ
            defence config 0.1; the survey's CIFAR run 0.1).
    """

    noise_kind = "normal"

    def __init__(self, *, std: float = 0.01) -> None:
        self.std = check_positive("gaussian_noise.std", std, allow_zero=True)

    @property
    def noise_scale(self) -> float:
        return self.std
