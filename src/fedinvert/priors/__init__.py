"""Staged generative priors for generation-based gradient inversion (DESIGN section 5 and 6).

A prior is a generator cut into stages (`Prior`); `to_victim` turns its [0, 1] images into a victim's input.
Registered names: ``face-dcgan`` (weights from the gan-face-generate wheel), ``biggan`` (BigGAN-deep, public
pytorch-pretrained-biggan checkpoints from a local path), ``stylegan2`` (rosinality-layout checkpoints from a
local path), ``fashion`` (our own class-conditional Fashion-MNIST generator, weights committed as
package data; trained by ``fedinvert train-prior``).
"""

from __future__ import annotations

from typing import Any

from fedinvert.priors.adapter import to_victim
from fedinvert.priors.base import FEATURE, Prior, ProjectionKind, Variables
from fedinvert.priors.biggan import BigGANDeep
from fedinvert.priors.dcgan import FaceDCGAN
from fedinvert.priors.fashion import FashionPrior
from fedinvert.priors.stylegan2 import StyleGAN2
from fedinvert.registry import Registry

PRIORS: Registry[Prior] = Registry("prior")
PRIORS.add("face-dcgan", FaceDCGAN)
PRIORS.add("biggan", BigGANDeep)
PRIORS.add("stylegan2", StyleGAN2)
PRIORS.add("fashion", FashionPrior)


def build_prior(name: str, **kwargs: Any) -> Prior:
    """Build the prior registered as ``name`` with keyword arguments (ConfigError for unknown names)."""
    return PRIORS.build(name, **kwargs)


__all__ = [
    "FEATURE",
    "PRIORS",
    "BigGANDeep",
    "FaceDCGAN",
    "FashionPrior",
    "Prior",
    "ProjectionKind",
    "StyleGAN2",
    "Variables",
    "build_prior",
    "to_victim",
]
