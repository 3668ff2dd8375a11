"""Gradient inversion attacks. Importing this package registers every attack in `ATTACKS`."""

from fedinvert.attacks import analytic, generative, optimization  # noqa: F401  (registration)
from fedinvert.attacks.base import ATTACKS, Attack
from fedinvert.attacks.labels import LABEL_METHODS, infer_labels
from fedinvert.attacks.objectives import DISTANCES, GradientMatcher

__all__ = ["ATTACKS", "DISTANCES", "LABEL_METHODS", "Attack", "GradientMatcher", "infer_labels"]
