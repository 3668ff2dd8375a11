"""Analysis-based attacks (ANA-GIA): inputs read out of an update in closed form. Importing registers them."""

from fedinvert.attacks.analytic import imprint, linear_leakage  # noqa: F401  (registration)
from fedinvert.attacks.analytic.imprint import Imprint, ImprintBlock, ImprintedModel, brightness_offsets
from fedinvert.attacks.analytic.linear_leakage import LinearLeakage, linear_layer_input, unique_label_features

__all__ = [
    "Imprint", "ImprintBlock", "ImprintedModel", "LinearLeakage", "brightness_offsets", "linear_layer_input",
    "unique_label_features",
]
