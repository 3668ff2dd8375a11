"""Generation-based attacks (GEN-GIA): images searched through a pretrained generator (GGL, GIAS, GIFD) or
rendered by an untrained one whose parameters are searched (CI-Net), or read out by a learned inversion
model (LTI). Importing registers them."""

from fedinvert.attacks.generative import ci_net, ggl, gias, gifd, lti  # noqa: F401  (registration)
from fedinvert.attacks.generative.ci_net import CINet
from fedinvert.attacks.generative.ggl import GGL
from fedinvert.attacks.generative.gias import GIAS
from fedinvert.attacks.generative.gifd import GIFD
from fedinvert.attacks.generative.lti import LTI

__all__ = ["CINet", "GGL", "GIAS", "GIFD", "LTI"]
