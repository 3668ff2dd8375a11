"""The `Defense` base class and the defence registry.

A defence transforms a client's update before the server sees it (DESIGN §1). Each one is a class with typed
keyword arguments (its public parameters), registered under a name in `DEFENSES`:

* `Defense.apply` runs on the client side; it may need the model and the private batch (Soteria, DP-SGD).
* `Defense.spec` is what the server may be told (`Observation.defenses`, granted by ``threat.defenses=known``).
* `Defense.replay` is the deterministic part of the transform, which an adaptive attacker applies to its own
  dummy update (``attack.adaptive=true``); randomness (noise) is never replayed.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from fedinvert.errors import ConfigError
from fedinvert.observation import DefenseSpec
from fedinvert.registry import Registry

DEFENSES: Registry[Defense] = Registry("defense")

D = TypeVar("D", bound=type)


def register_defense(name: str) -> Callable[[D], D]:
    """Class decorator: register a `Defense` subclass under ``name`` and record the name on the class."""

    def decorator(cls: D) -> D:
        cls.name = name  # type: ignore[attr-defined]
        DEFENSES.add(name, cls)
        return cls

    return decorator


class Defense(abc.ABC):
    """Base class of every client-side defence.

    Subclasses store each constructor keyword under an attribute of the same name (that is how `spec` finds
    the public parameters) and set the class flags that say how the pipeline must run them.

    Attributes:
        name: the registry name (set by `register_defense`).
        replayable: whether `replay` exists (a deterministic transform an attacker can apply to its dummy).
        aggregates: the defence combines several clients' updates (secure aggregation, see `aggregate`).
        trains_privately: the defence acts inside local training rather than on the finished update (DP-SGD).
    """

    name: ClassVar[str] = ""
    replayable: ClassVar[bool] = False
    aggregates: ClassVar[bool] = False
    trains_privately: ClassVar[bool] = False

    @abc.abstractmethod
    def apply(
        self,
        update: dict[str, Tensor],
        *,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        rng: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """The protected update.

        Args:
            update: parameter name -> gradient or weight delta, in the model's parameter order.
            model: the victim with the global weights, in the mode the client used.
            inputs: (B, C, H, W) the client's private inputs, normalised as the victim expects.
            labels: (B,) the client's labels.
            rng: source of randomness (noise); the global RNG when None.
        """

    def replay(
        self, dummy_update: list[Tensor], observed: list[Tensor], *, names: Sequence[str] | None = None
    ) -> list[Tensor]:
        """The deterministic part of the transform, applied to the attacker's dummy update.

        Must be differentiable (or straight-through) and pure, so it runs inside the attack's step under
        `torch.func` transforms. ``observed`` is the update the server received (masks are read from it);
        ``names`` the parameter names of both lists, in order.
        """
        raise NotImplementedError(f"defence {self.name!r} has no deterministic part an attacker can replay")

    def params(self) -> dict[str, Any]:
        """The public parameters: every constructor keyword with its current value."""
        keys = [
            n
            for n, p in inspect.signature(type(self).__init__).parameters.items()
            if n != "self" and p.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        return {k: getattr(self, k) for k in keys}

    def spec(self) -> DefenseSpec:
        """What a server that is told about this defence knows: its name and public parameters."""
        return DefenseSpec(name=self.name, params=self.params())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class AdditiveNoise(Defense):
    """Base of the defences that add i.i.d. zero-mean noise of one family to every entry of the update.

    Subclasses set ``noise_kind`` (``normal`` or ``laplace``, see `noise_like`) and ``noise_scale`` (the factor
    on unit noise). Not replayable: an adaptive attacker cannot reproduce the noise.
    """

    noise_kind: ClassVar[str] = "normal"

    @property
    @abc.abstractmethod
    def noise_scale(self) -> float:
        """The factor on unit noise, in the update's units."""

    def apply(
        self,
        update: dict[str, Tensor],
        *,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        rng: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        return {n: t + self.noise_scale * noise_like(t, rng, kind=self.noise_kind) for n, t in update.items()}


# -- shared helpers ---------------------------------------------------------------------------------------
def as_list(update: dict[str, Tensor]) -> tuple[list[str], list[Tensor]]:
    """Names and tensors of an update, in its order."""
    return list(update), list(update.values())


def as_dict(names: Sequence[str], tensors: Sequence[Tensor]) -> dict[str, Tensor]:
    return dict(zip(names, tensors, strict=True))


def check_positive(key: str, value: float, *, allow_zero: bool = False) -> float:
    """``value`` as a float, or a ConfigError naming ``defense.<key>``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"defense.{key} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ConfigError(f"defense.{key} must be {bound}, got {value}")
    return float(value)


def check_ratio(key: str, value: float) -> float:
    """A fraction in [0, 1)."""
    value = check_positive(key, value, allow_zero=True)
    if value >= 1:
        raise ConfigError(f"defense.{key} must lie in [0, 1), got {value}")
    return value


def noise_like(tensor: Tensor, rng: torch.Generator | None, *, kind: str) -> Tensor:
    """Unit noise of ``tensor``'s shape, dtype and device: ``normal`` (N(0, 1)) or ``laplace`` (Laplace(0, 1)).

    Drawn on the CPU from ``rng`` (so a CPU generator seeds runs on any device), then moved.
    """
    if kind == "normal":
        noise = torch.randn(tensor.shape, generator=rng, dtype=torch.float64)
    elif kind == "laplace":
        # inverse CDF of Laplace(0, 1): u ~ U(-1/2, 1/2), x = -sign(u) log(1 - 2|u|)
        u = torch.rand(tensor.shape, generator=rng, dtype=torch.float64) - 0.5
        noise = -torch.sign(u) * torch.log1p(-2 * u.abs())
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    # narrowed on the host, then moved: no float64 copy on a GPU
    return noise.to(dtype=tensor.dtype).to(device=tensor.device)


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """Name and module of the model's last `nn.Linear` (the classifier); ConfigError when there is none."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"the victim {type(model).__name__} has no nn.Linear classifier layer")
    return linears[-1]
