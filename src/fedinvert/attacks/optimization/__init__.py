"""Optimisation-based attacks (OP-GIA): images optimised in pixel space to match the update. Importing registers
them."""

from fedinvert.attacks.optimization import dlg, gradinversion, inverting_gradients  # noqa: F401  (registration)
from fedinvert.attacks.optimization.dlg import DLG, IDLG
from fedinvert.attacks.optimization.gradinversion import GradInversion
from fedinvert.attacks.optimization.inverting_gradients import InvertingGradients

__all__ = ["DLG", "IDLG", "GradInversion", "InvertingGradients"]
