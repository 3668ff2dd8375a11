"""Analysis-based attacks (ANA-GIA): the server changes the model it sends, or reads a layer directly, and the
inputs come out of the update in closed form (linear leakage, imprint, trap weights) or after the model
isolated one sample (fishing). Importing registers them."""

from fedinvert.attacks.analytic import fishing, imprint, linear_leakage, trap_weights  # noqa: F401  (registration)
from fedinvert.attacks.analytic.fishing import Fishing, classifier
from fedinvert.attacks.analytic.imprint import Imprint, ImprintBlock, ImprintedModel, brightness_offsets
from fedinvert.attacks.analytic.linear_leakage import (
    LinearLeakage,
    image_layer,
    linear_layer_input,
    padded_images,
    signal_rows,
    unique_label_features,
)
from fedinvert.attacks.analytic.trap_weights import TrapWeights, trap_layer, trap_matrix

__all__ = [
    "Fishing", "Imprint", "ImprintBlock", "ImprintedModel", "LinearLeakage", "TrapWeights", "brightness_offsets",
    "classifier", "image_layer", "linear_layer_input", "padded_images", "signal_rows", "trap_layer", "trap_matrix",
    "unique_label_features",
]
