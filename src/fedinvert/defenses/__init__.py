"""Client-side defences against gradient inversion. Importing this package registers every defence in
`DEFENSES` (``fedinvert list defenses``)."""

from fedinvert.defenses import (  # noqa: F401  (registration)
    clipping,
    dp_sgd,
    gaussian_noise,
    laplace_noise,
    pruning,
    quantization,
    secure_aggregation,
    soteria,
)
from fedinvert.defenses.base import DEFENSES, AdditiveNoise, Defense, register_defense
from fedinvert.defenses.clipping import Clipping
from fedinvert.defenses.dp_sgd import DPSGD
from fedinvert.defenses.gaussian_noise import GaussianNoise
from fedinvert.defenses.laplace_noise import LaplaceNoise
from fedinvert.defenses.pipeline import (
    RoundResult,
    build_defenses,
    client_count,
    declared_clients,
    federated_round,
    replay_transform,
)
from fedinvert.defenses.pruning import Pruning
from fedinvert.defenses.quantization import Quantization
from fedinvert.defenses.secure_aggregation import SecureAggregation
from fedinvert.defenses.soteria import Soteria

__all__ = [
    "DEFENSES",
    "AdditiveNoise",
    "DPSGD",
    "Clipping",
    "Defense",
    "GaussianNoise",
    "LaplaceNoise",
    "Pruning",
    "Quantization",
    "RoundResult",
    "SecureAggregation",
    "Soteria",
    "build_defenses",
    "client_count",
    "declared_clients",
    "federated_round",
    "register_defense",
    "replay_transform",
]
