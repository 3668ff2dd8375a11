"""fedinvert: measure how much private image data leaks from federated-learning updates.

The names below are imported on first use (PEP 562), so ``import fedinvert.cli`` does not import torch or
pydantic before the command line has decided what it needs (docs/speed.md, "Fixed cost").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedinvert.errors import (
        CheckpointError,
        ConfigError,
        DataNotFoundError,
        FedinvertError,
        MissingCapabilityError,
        ObservationError,
    )
    from fedinvert.observation import (
        Capability,
        DefenseSpec,
        LocalTraining,
        Observation,
        Reconstruction,
        StageResult,
    )

__version__ = "0.1.0"

_HOME = {
    "CheckpointError": "fedinvert.errors",
    "ConfigError": "fedinvert.errors",
    "DataNotFoundError": "fedinvert.errors",
    "FedinvertError": "fedinvert.errors",
    "MissingCapabilityError": "fedinvert.errors",
    "ObservationError": "fedinvert.errors",
    "Capability": "fedinvert.observation",
    "DefenseSpec": "fedinvert.observation",
    "LocalTraining": "fedinvert.observation",
    "Observation": "fedinvert.observation",
    "Reconstruction": "fedinvert.observation",
    "StageResult": "fedinvert.observation",
}

__all__ = [
    "Capability",
    "CheckpointError",
    "ConfigError",
    "DataNotFoundError",
    "DefenseSpec",
    "FedinvertError",
    "LocalTraining",
    "MissingCapabilityError",
    "Observation",
    "ObservationError",
    "Reconstruction",
    "StageResult",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedinvert' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
