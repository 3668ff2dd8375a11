"""Uniform quantisation of the shared update (communication compression; e.g. QSGD, Alistarh et al. 2017,
without its stochastic rounding)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedinvert.defenses.base import Defense, register_defense
from fedinvert.errors import ConfigError


def quantize_symmetric(tensor: Tensor, bits: int) -> Tensor:
    """Round ``tensor`` to the nearest of ``2^bits − 1`` levels ``k · s``, ``|k| ≤ L = 2^(bits−1) − 1``.

    Uniform, per tensor and symmetric around zero: the step is ``s = max|t| / L``, so the largest entry is
    kept exactly, zero stays zero, and every entry moves by at most ``s / 2``. A zero tensor stays zero.
    """
    levels = 2 ** (bits - 1) - 1
    scale = tensor.detach().abs().amax() / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(tensor / safe).clamp(-levels, levels) * scale


@register_defense("quantization")
class Quantization(Defense):
    """Quantise every tensor of the update to ``bits`` bits: uniform, per tensor, symmetric (see
    `quantize_symmetric`; at most ``2^bits − 1`` distinct values, error ≤ half a step).

    Replayable with a straight-through estimator: the adaptive attacker quantises its dummy update in the
    forward pass and differentiates as if it had not (``d + (q(d) − d).detach()``).

    Args:
        bits: bits per entry, 2 … 32 (sign plus magnitude; 8 is a common choice).
    """

    replayable = True

    def __init__(self, *, bits: int = 8) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32:
            raise ConfigError(f"defense.quantization.bits must be an integer in [2, 32], got {bits!r}")
        self.bits = bits

    def apply(
        self,
        update: dict[str, Tensor],
        *,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        rng: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        return {n: quantize_symmetric(t, self.bits) for n, t in update.items()}

    def replay(
        self, dummy_update: list[Tensor], observed: list[Tensor], *, names: Sequence[str] | None = None
    ) -> list[Tensor]:
        return [d + (quantize_symmetric(d, self.bits) - d).detach() for d in dummy_update]
