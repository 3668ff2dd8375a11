"""The victim-model registry, seeded construction and helpers that work on any classifier."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from fedinvert import seeding
from fedinvert.errors import ConfigError
from fedinvert.registry import Registry

_SHAPE_KEYS = ("in_channels", "num_classes", "image_size")


def is_entry_point(name: str) -> bool:
    """True for a ``package.module:function`` model name (the user's own ``nn.Module``)."""
    module, sep, attr = str(name).partition(":")
    return bool(sep and module and attr) and all(part.isidentifier() for part in (*module.split("."), *attr.split(".")))


def load_entry_point(name: str) -> Callable[..., nn.Module]:
    """The factory ``package.module:function`` names: imported (the current folder is searched after the
    installed packages, as ``python -m`` would), then the attribute path after the colon.

    The factory is called with the keyword arguments it declares among ``in_channels``, ``num_classes`` and
    ``image_size`` (all three when it takes ``**kwargs``), the ``model.<option>=value`` keys of the run, and must
    return an ``nn.Module`` that ends in an ``nn.Linear``.

    Raises:
        ConfigError: the module cannot be imported, has no such attribute, or the attribute is not callable.
    """
    module_name, _, attr = name.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"model {name!r}: cannot import {module_name} ({err}); give an importable"
                          " package.module:function (the current folder is searched)") from None
    except Exception as err:  # the user's module failed while it was imported: one line, not its traceback
        raise ConfigError(f"model {name!r}: importing {module_name} failed: {type(err).__name__}: {err}") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"model {name!r}: {module_name} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"model {name!r}: {attr} is not callable (a function or class returning an nn.Module)")
    return target  # type: ignore[no-any-return]


class ModelRegistry(Registry[nn.Module]):
    """The victim registry; a name ``package.module:function`` resolves to the user's own factory."""

    def entry(self, name: str) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
        if name not in self and is_entry_point(name):
            return load_entry_point(name), {}
        return super().entry(name)


MODELS: Registry[nn.Module] = ModelRegistry("model")
"""Built-in victim classifiers by name (``lenet-dlg``, ``lenet5``, ``convnet``, ``resnet18``, ...); any
``package.module:function`` name resolves to the user's own factory (`load_entry_point`)."""


def _accepts(factory: Callable[..., Any], key: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True
    return key in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


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
            ``resnet34``), or ``package.module:function`` for the user's own factory (`load_entry_point`).
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
    shape = {"in_channels": int(in_channels), "num_classes": int(num_classes), "image_size": int(image_size)}
    if is_entry_point(name) and name not in MODELS:
        factory = MODELS.get(name)
        shape = {k: v for k, v in shape.items() if _accepts(factory, k)}
    with _seeded_init(seed):
        model = MODELS.build(name, **shape, **kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} returned {type(model).__name__}, not a torch nn.Module")
    return model


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
