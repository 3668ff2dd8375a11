"""Analysis-based attacks (ANA-GIA): inputs read out of an update in closed form. Importing registers them."""

from fedinvert.attacks.analytic import imprint, linear_leakage, trap_weights  # noqa: F401  (registration)
from fedinvert.attacks.analytic.imprint import Imprint, ImprintBlock, ImprintedModel, brightness_offsets
from fedinvert.attacks.analytic.linear_leakage import LinearLeakage, linear_layer_input, unique_label_features
from fedinvert.attacks.analytic.trap_weights import TrapWeights, first_linear, trap_matrix

__all__ = [
    "Imprint", "ImprintBlock", "ImprintedModel", "LinearLeakage", "brightness_offsets", "linear_layer_input",
    "TrapWeights", "first_linear", "trap_matrix", "unique_label_features",
]
