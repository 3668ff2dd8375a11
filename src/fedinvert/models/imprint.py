"""Malicious modifications a server can send (DESIGN §2): Robbing the Fed's binned linear block in front of any
victim. The attack that sets its weights and reads its gradient is `fedinvert.attacks.analytic.imprint`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ImprintBlock(nn.Module):
    """Binned linear block: (B, C, H, W) → x + decoder(ReLU(encoder(flatten(x)))), same shape.

    Args:
        image_shape: (C, H, W) of the inputs.
        bins: number of bins (rows of the encoder), ≥ 2.
    """

    def __init__(self, *, image_shape: tuple[int, int, int], bins: int) -> None:
        super().__init__()
        size = math.prod(image_shape)
        self.encoder = nn.Linear(size, bins)
        self.decoder = nn.Linear(bins, size)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.decoder(torch.relu(self.encoder(torch.flatten(x, 1)))).view_as(x)


class ImprintedModel(nn.Module):
    """The model a Robbing-the-Fed server sends: ``victim(imprint(x))``."""

    def __init__(self, *, imprint: ImprintBlock, victim: nn.Module) -> None:
        super().__init__()
        self.imprint = imprint
        self.victim = victim

    def forward(self, x: Tensor) -> Tensor:
        return self.victim(self.imprint(x))
