"""Small building blocks and argument checks shared by the built-in victim classifiers."""

from __future__ import annotations

from typing import Literal, get_args

from torch import nn

from fedinvert.errors import ConfigError

MIN_IMAGE_SIZE = 8
"""Smallest input resolution (pixels per side) every built-in victim accepts."""

Norm = Literal["batch", "group", "none"]
NORMS: tuple[str, ...] = get_args(Norm)


def check_dims(model: str, *, in_channels: int, num_classes: int, image_size: int) -> None:
    """Raise ConfigError unless the input channels, class count and resolution are usable by ``model``."""
    if int(in_channels) < 1:
        raise ConfigError(f"model {model!r}: in_channels must be at least 1, got {in_channels}")
    if int(num_classes) < 2:
        raise ConfigError(f"model {model!r}: num_classes must be at least 2, got {num_classes}")
    if int(image_size) < MIN_IMAGE_SIZE:
        raise ConfigError(
            f"model {model!r}: image_size must be at least {MIN_IMAGE_SIZE} px, got {image_size};"
            f" resize the data (dataset.image_size) or use larger images"
        )


def check_choice(model: str, option: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"model {model!r}: {option} must be one of {', '.join(choices)}; got {value!r}")


def scaled_widths(model: str, base: tuple[int, ...], width: float) -> tuple[int, ...]:
    """Channel widths ``base`` multiplied by ``width`` (rounded, at least 1 channel each)."""
    if not float(width) > 0:
        raise ConfigError(f"model {model!r}: width must be a positive number, got {width}")
    return tuple(max(1, round(b * float(width))) for b in base)


def group_count(channels: int) -> int:
    """Number of GroupNorm groups: the largest divisor of ``channels`` that is at most min(8, channels)."""
    return next(g for g in range(min(8, channels), 0, -1) if channels % g == 0)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """A 2-d normalisation layer: ``"batch"`` (BatchNorm2d), ``"group"`` (GroupNorm) or ``"none"`` (identity)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    return nn.Identity()
