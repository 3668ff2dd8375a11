"""The victim-model registry, seeded construction and helpers that work on any classifier."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from fedinvert import seeding
from fedinvert.errors import ConfigError
from fedinvert.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")
"""Built-in victim classifiers by name (``lenet-dlg``, ``lenet5``, ``convnet``, ``resnet18``, ...)."""

_SHAPE_KEYS = ("in_channels", "num_classes", "image_size")


def model_options(name: str) -> list[str]:
    """The keyword options ``build_model(name, ...)`` accepts beyond the input shape and the seed."""
    factory, preset = MODELS.entry(name)
    parameters = inspect.signature(factory).parameters.values()
    return sorted(
        p.name
        for p in parameters
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.name not in _SHAPE_KEYS
        and p.name not in preset
    )


@contextlib.contextmanager
def _seeded_init(seed: int) -> Iterator[None]:
    """Run the block with the CPU RNG set from the ``model`` stream of ``seed``; restore the RNG afterwards.

    Layers draw their default initialisation from the global CPU generator, so seeding it for the duration of
    the construction gives every layer its own default rule and a reproducible result, without leaving a
    trace on the caller's random state. (Not safe against other threads drawing random numbers meanwhile.)
    """
    state = seeding.generator(seed, "model").get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.set_state(state)
        yield


def build_model(
    name: str, *, in_channels: int, num_classes: int, image_size: int, seed: int = 0, **kwargs: Any
) -> nn.Module:
    """Build the registered victim ``name`` with weights initialised from the ``model`` stream of ``seed``.

    The same seed gives identical weights, a different seed different ones; the global torch RNG is left as
    it was. The model is returned on the CPU in training mode.

    Args:
        name: a name in ``MODELS`` (``lenet-dlg``, ``lenet5``, ``convnet``, ``resnet18``, ``resnet18-imagenet``,
            ``resnet34``).
        in_channels: image channels C (≥ 1).
        num_classes: number of classes (≥ 2).
        image_size: side of the square input images in pixels (≥ 8).
        seed: the user's seed; the ``model`` stream is derived from it (``fedinvert.seeding``).
        **kwargs: model options such as ``width``, ``norm`` or ``activation`` (see ``model_options(name)``).

    Raises:
        ConfigError: unknown model name, unknown option (the message lists the valid ones) or invalid value.
    """
    options = model_options(name)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        valid = ", ".join(options) if options else "none"
        raise ConfigError(f"model {name!r} has no option {unknown[0]!r}; valid options: {valid}")
    with _seeded_init(seed):
        return MODELS.build(
            name,
            in_channels=int(in_channels),
            num_classes=int(num_classes),
            image_size=int(image_size),
            **kwargs,
        )


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier layer of ``model``: the last ``nn.Linear`` in its module tree (``model.modules()`` order).

    That is the final layer for every built-in victim and for any network that registers its head last.
    Raises ConfigError when the model has no ``nn.Linear``.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"{type(model).__name__} has no nn.Linear layer; feature distance and label inference need the"
            f" classifier to end in one"
        )
    return linears[-1]


def penultimate_features(model: nn.Module, inputs: Tensor) -> Tensor:
    """The input of ``last_linear(model)`` when ``model`` runs on ``inputs`` (captured by a forward hook).

    Args:
        model: any classifier ending in an ``nn.Linear``; run in its current mode and grad context.
        inputs: (B, C, H, W) in the victim's normalised space.

    Returns:
        (B, F) features (whatever shape the last Linear receives).
    """
    captured: list[Tensor] = []

    def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
        captured.append(args[0])

    handle = last_linear(model).register_forward_pre_hook(hook)
    try:
        model(inputs)
    finally:
        handle.remove()
    if not captured:
        raise ConfigError(f"the last nn.Linear of {type(model).__name__} was not called in its forward pass")
    return captured[-1]
