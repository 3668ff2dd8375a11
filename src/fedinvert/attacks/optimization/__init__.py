"""Optimisation-based attacks (OP-GIA): images optimised in pixel space to match the update. Importing registers
them."""

from fedinvert.attacks.optimization import (  # noqa: F401  (registration)
    dlg,
    gradinversion,
    inverting_gradients,
    lora_inversion,
)
from fedinvert.attacks.optimization.dlg import DLG, IDLG
from fedinvert.attacks.optimization.gradinversion import GradInversion
from fedinvert.attacks.optimization.inverting_gradients import InvertingGradients
from fedinvert.attacks.optimization.lora_inversion import LoRAInversion

__all__ = ["DLG", "IDLG", "GradInversion", "InvertingGradients", "LoRAInversion"]
