"""Generation-based attacks (GEN-GIA): images searched through a pretrained generator. Importing registers
them."""

from fedinvert.attacks.generative import ggl, gias, gifd  # noqa: F401  (registration)
from fedinvert.attacks.generative.ggl import GGL
from fedinvert.attacks.generative.gias import GIAS
from fedinvert.attacks.generative.gifd import GIFD

__all__ = ["GGL", "GIAS", "GIFD"]
