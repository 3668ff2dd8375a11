"""Running a round: clients compute their updates, the defences transform them, the server receives one.

Also the attacker's side: `replay_transform` composes the deterministic parts of the declared defences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from fedinvert.defenses.base import DEFENSES, Defense
from fedinvert.defenses.dp_sgd import DPSGD
from fedinvert.errors import ConfigError
from fedinvert.fl.fedsgd import GradientFunction
from fedinvert.observation import DefenseSpec


class Client(Protocol):
    """What `federated_round` needs of a protocol client (`FedSGDClient`, `FedAvgClient`)."""

    kind: str

    def update(
        self, model: nn.Module, inputs: Tensor, labels: Tensor, *, gradient_fn: GradientFunction | None = None
    ) -> dict[str, Tensor]: ...


@dataclass
class RoundResult:
    """What the server receives, and what the round reports about it.

    Attributes:
        update: parameter name -> the tensor the server sees.
        info: per defence name, what it reports (dp_sgd: ε, δ, steps, sample rate).
    """

    update: dict[str, Tensor]
    info: dict[str, Any] = field(default_factory=dict)


def build_defenses(config: dict[str, dict[str, Any]] | Sequence[DefenseSpec]) -> list[Defense]:
    """Defences from ``{name: params}`` (the config's ordered ``defense`` mapping) or from `DefenseSpec`\\ s."""
    from fedinvert.config import resolve_keywords

    items = [(s.name, s.params) for s in config] if not isinstance(config, dict) else list(config.items())
    built = []
    for name, params in items:
        factory, preset = DEFENSES.entry(name)
        kwargs = resolve_keywords(f"defense.{name}", name, factory, dict(params or {}), preset=preset)
        built.append(factory(**kwargs))
    if sum(d.aggregates for d in built) > 1:
        raise ConfigError("only one aggregating defence (secure_aggregation) may be listed")
    return built


def client_count(defenses: Sequence[Defense]) -> int:
    """K: the number of clients a round with these defences needs (secure aggregation's ``clients``, else 1)."""
    return next((int(d.clients) for d in defenses if d.aggregates), 1)  # type: ignore[attr-defined]


def declared_clients(specs: Sequence[DefenseSpec]) -> int:
    """K as the attacker reads it from the declared defences: the ``clients`` of an aggregating one, else 1."""
    for spec in specs:
        if spec.name in DEFENSES and getattr(DEFENSES.get(spec.name), "aggregates", False):
            return int(spec.params.get("clients", 1))
    return 1


def federated_round(
    *,
    client: Client,
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    defenses: Sequence[Defense] = (),
    rng: torch.Generator | None = None,
) -> RoundResult:
    """One round as the server sees it: each client's update, then the defences in list order.

    Defences before an aggregating one (secure aggregation) run on every client's update with that client's
    batch; the aggregating one sums them; defences after it run on the sum (with all clients' samples as the
    batch). DP-SGD acts inside each client's local training, whatever its position.

    Args:
        client: the protocol client (FedSGD or FedAvg), shared by all clients of the round.
        model: the global model the server sent (its mode is set by the client).
        batches: one (inputs (B, C, H, W) normalised, labels (B,)) per client; more than one needs an
            aggregating defence with as many clients.
        defenses: the defence objects, in the order they are applied.
        rng: source of all defence randomness (noise).

    Raises:
        ConfigError: the number of batches does not fit the defences, or DP-SGD cannot train the model.
    """
    expected = client_count(defenses)
    if len(batches) != expected:
        raise ConfigError(f"a round with these defences needs {expected} client batches, got {len(batches)}")
    dp = [d for d in defenses if isinstance(d, DPSGD)]
    info: dict[str, Any] = {}
    gradient_fn: GradientFunction | None = None
    steps: list[tuple[int, float]] = []  # per client: (DP steps, sample rate)
    if dp:
        private = dp[0]
        private.check_model(model)
        calls: list[int] = []

        def gradient_fn(m: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
            calls.append(x.shape[0])
            return private.private_gradient(m, x, y, rng=rng)

    current = []
    for inputs, labels in batches:
        if dp:
            calls = []
        current.append((client.update(model, inputs, labels, gradient_fn=gradient_fn), inputs, labels))
        if dp:
            steps.append((len(calls), max(calls) / inputs.shape[0]))
    for defense in defenses:
        if defense.trains_privately:
            continue
        if defense.aggregates:
            total = defense.aggregate([u for u, _, _ in current])  # type: ignore[attr-defined]
            current = [(total, torch.cat([x for _, x, _ in current]), torch.cat([y for _, _, y in current]))]
        else:
            current = [(defense.apply(u, model=model, inputs=x, labels=y, rng=rng), x, y) for u, x, y in current]
    if dp:
        n_steps, rate = steps[0]
        private = dp[0]
        eps = private.epsilon(steps=n_steps, sample_rate=rate)
        info["dp_sgd"] = {
            "epsilon": eps if eps != float("inf") else None,
            "delta": private.delta,
            "steps": n_steps,
            "sample_rate": rate,
            "noise_multiplier": private.noise_multiplier,
            "max_grad_norm": private.max_grad_norm,
        }
    return RoundResult(update=current[0][0], info=info)


def replay_transform(
    specs: Sequence[DefenseSpec], *, names: Sequence[str], observed: Sequence[Tensor]
) -> Callable[[list[Tensor]], list[Tensor]] | None:
    """The adaptive attacker's transform of its dummy update: the declared defences' `replay`, in order.

    Defences without a deterministic part (noise, DP-SGD, secure aggregation) are skipped. Returns None when
    nothing is replayable.

    Args:
        specs: the declared defences (`Observation.defenses`).
        names: the parameter names of the update, in order.
        observed: the update the server received, in the same order.
    """
    replays = [DEFENSES.build(s.name, **s.params) for s in specs if DEFENSES.get(s.name).replayable]  # type: ignore[attr-defined]
    if not replays:
        return None
    observed = [t.detach() for t in observed]

    def transform(update: list[Tensor]) -> list[Tensor]:
        for defense in replays:
            update = defense.replay(update, observed, names=names)
        return update

    return transform
