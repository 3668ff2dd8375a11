"""Server-side aggregation of client updates (the sums secure aggregation reveals)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fedinvert.errors import ConfigError


def sum_updates(updates: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Σ_k update_k per parameter name: what a server behind secure aggregation sees (Bonawitz et al. 2017).

    Raises:
        ConfigError: no updates, or updates with different parameter names or shapes.
    """
    if not updates:
        raise ConfigError("cannot aggregate zero client updates")
    names = list(updates[0])
    for k, update in enumerate(updates[1:], start=1):
        if list(update) != names:
            raise ConfigError(f"client {k}'s update has other parameters than client 0's")
    return {n: torch.stack([u[n] for u in updates]).sum(0) for n in names}


def split_clients(inputs: Tensor, labels: Tensor, clients: int) -> list[tuple[Tensor, Tensor]]:
    """Cut a batch of K·B samples into K client batches of B consecutive samples each.

    Raises:
        ConfigError: ``clients`` < 1 or not a divisor of the batch size.
    """
    n = inputs.shape[0]
    if clients < 1 or n % clients:
        raise ConfigError(f"cannot split a batch of {n} into {clients} equal client batches")
    size = n // clients
    return [(inputs[k * size : (k + 1) * size], labels[k * size : (k + 1) * size]) for k in range(clients)]
