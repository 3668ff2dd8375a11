"""Secure aggregation (Bonawitz et al., CCS 2017): the server learns only the sum of K clients' updates."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedinvert.defenses.base import Defense, register_defense
from fedinvert.errors import ConfigError
from fedinvert.fl.aggregation import sum_updates


@register_defense("secure_aggregation")
class SecureAggregation(Defense):
    """The server sees ``Σ_k update_k`` over K clients, never a single client's update (the cryptography
    itself is out of scope: only what it reveals matters to an attacker).

    Each of the K clients holds its own private batch of B samples, drawn from the same data set with distinct
    indices (the runner draws K·B images and gives client k the k-th B). Defences listed before
    ``secure_aggregation`` run on each client's update, those after it on the sum. The observation's batch
    size is K·B, and the K·B reconstructions are matched against all K clients' images.

    We reveal the sum, not the mean (DESIGN §12): a mean is the same information, and an attacker who knows
    K can rescale. An adaptive attacker (``attack.adaptive=true``) models the protocol: its dummy update is
    the sum of K client updates computed on K equal chunks of its dummy batch.

    Args:
        clients: K, the number of clients whose updates are summed (≥ 1).
    """

    aggregates = True

    def __init__(self, *, clients: int = 4) -> None:
        if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
            raise ConfigError(f"defense.secure_aggregation.clients must be an integer ≥ 1, got {clients!r}")
        self.clients = clients

    def aggregate(self, updates: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The sum of the K clients' updates (`fedinvert.fl.aggregation.sum_updates`)."""
        if len(updates) != self.clients:
            raise ConfigError(f"secure_aggregation expects {self.clients} client updates, got {len(updates)}")
        return sum_updates(updates)

    def apply(
        self,
        update: dict[str, Tensor],
        *,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        rng: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """One client's contribution, unchanged: the K updates are combined by `aggregate`."""
        return dict(update)
