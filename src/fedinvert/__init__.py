"""fedinvert: measure how much private image data leaks from federated-learning updates."""

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
