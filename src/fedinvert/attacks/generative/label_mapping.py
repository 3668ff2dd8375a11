"""Label mapping (journal GIFD, DESIGN §5): translate FL labels into a class-conditional prior's own classes.

The label inferred from a gradient lives in the FL task's label space; a conditional generator expects its own
classes. A *remapper* — a classifier trained only on the prior's own class-conditioned samples — reads a coarse
reconstruction and names the generator class it looks like. That class then conditions the generator; the FL
loss keeps the inferred FL label.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fedinvert.errors import ConfigError
from fedinvert.models import build_model
from fedinvert.priors.adapter import to_victim
from fedinvert.priors.base import Prior

log = logging.getLogger(__name__)


@dataclass
class Remapper:
    """A classifier from images (N, *image_shape) in [0, 1] to the prior's classes.

    Attributes:
        model: the classifier, in eval mode, on the prior's device.
        image_shape: the (C, H, W) it reads, the victim's image shape.
        accuracy: its accuracy on fresh prior samples it was not trained on (how far its labels can be trusted).
    """

    model: nn.Module
    image_shape: tuple[int, int, int]
    accuracy: float

    @torch.no_grad()
    def predict(self, images01: Tensor) -> Tensor:
        """(N,) the prior class each image looks like."""
        device = next(self.model.parameters()).device
        return self.model(_center(images01.to(device))).argmax(dim=1)


_CACHE: dict[tuple[object, ...], Remapper] = {}


@torch.no_grad()
def _fingerprint(prior: Prior) -> tuple[object, ...]:
    """Identifies a prior's weights within a process (a fresh copy of the same weights gives the same key)."""
    # accumulated in float64 where the weights are (no float64 copy of them), read back once
    total = float(sum(p.sum(dtype=torch.float64) for p in prior.parameters()))
    return (type(prior).__name__, sum(p.numel() for p in prior.parameters()), round(total, 6))


def _center(images01: Tensor) -> Tensor:
    return (images01 - 0.5) / 0.5


@torch.no_grad()
def prior_samples(
    prior: Prior, n: int, image_shape: tuple[int, int, int], *, generator: torch.Generator, chunk: int = 256
) -> tuple[Tensor, Tensor]:
    """``n`` class-conditioned prior samples at ``image_shape`` in [0, 1] with their classes, balanced."""
    if prior.num_classes is None:
        raise ConfigError("label mapping needs a class-conditional prior")
    labels = torch.arange(n) % prior.num_classes
    labels = labels[torch.randperm(n, generator=generator)]
    identity = ((0.0,) * image_shape[0], (1.0,) * image_shape[0])  # sizes and channels only: stay in [0, 1]
    images = []
    for start in range(0, n, chunk):
        part = labels[start : start + chunk].to(prior.device)
        latent = prior.sample_latent(len(part), generator=generator)
        images.append(to_victim(prior(latent, prior.condition(part)).clamp(0, 1), image_shape=image_shape,
                                normalization=identity))
    return torch.cat(images), labels.to(prior.device)


def train_remapper(
    prior: Prior,
    image_shape: tuple[int, int, int],
    *,
    samples: int = 6000,
    epochs: int = 4,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
) -> Remapper:
    """Train a remapper (a ReLU LeNet-5, Adam with a one-cycle schedule) on ``samples`` fresh class-conditioned
    samples of ``prior`` — nothing else: the FL data never enter it.

    Results are cached per (prior weights, image shape, samples, epochs, seed) for the life of the process: a
    sweep that attacks many observations with one prior trains once.

    Raises:
        ConfigError: an unconditional prior or a non-positive budget.
    """
    if prior.num_classes is None:
        raise ConfigError("label mapping needs a class-conditional prior (e.g. prior=fashion); this prior has no classes")
    if samples < prior.num_classes or epochs < 1:
        raise ConfigError(f"the remapper needs ≥ {prior.num_classes} samples and ≥ 1 epoch")
    image_shape = tuple(int(s) for s in image_shape)  # type: ignore[assignment]
    key = (*_fingerprint(prior), image_shape, samples, epochs, seed)
    if key in _CACHE:
        return _CACHE[key]
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = prior_samples(prior, samples, image_shape, generator=generator)
    test_x, test_y = prior_samples(prior, max(prior.num_classes * 50, samples // 5), image_shape, generator=generator)
    channels, height, _ = image_shape
    net = build_model(
        "lenet5", in_channels=channels, num_classes=prior.num_classes, image_size=height, seed=seed, activation="relu"
    )
    net = net.to(prior.device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * math.ceil(samples / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    for _ in range(epochs):
        order = torch.randperm(samples, generator=generator).to(prior.device)
        for start in range(0, samples, batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(net(_center(train_x[idx])), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    net.eval().requires_grad_(False)
    with torch.no_grad():
        accuracy = float((net(_center(test_x)).argmax(1) == test_y).float().mean())
    log.info("remapper: %d prior samples, %d epochs, accuracy %.3f on fresh prior samples", samples, epochs, accuracy)
    remapper = Remapper(model=net, image_shape=image_shape, accuracy=accuracy)  # type: ignore[arg-type]
    _CACHE[key] = remapper
    return remapper
