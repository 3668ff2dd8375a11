"""The `Attack` base class, the attack registry and the shared optimisation loop.

A new attack is one module with one class that subclasses `Attack`, declares what it needs (`requires`) and
implements `reconstruct(obs)`. Ground truth never reaches an attack: it sees an `Observation` only.
"""

from __future__ import annotations

import abc
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fedinvert.errors import ConfigError, MissingCapabilityError
from fedinvert.observation import Capability, Observation, Reconstruction
from fedinvert.registry import Registry

log = logging.getLogger(__name__)

ATTACKS: Registry[Attack] = Registry("attack")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for, but no CUDA device is available; use device=auto or cpu")
    return dev


@dataclass(frozen=True)
class ServerContext:
    """What a malicious server knows when it builds the model it sends (no private data).

    Attributes:
        image_shape: (C, H, W) of the client's inputs.
        num_classes: size of the label space.
        normalization: (mean, std) per channel the client applies to [0, 1] images.
        public: (N, C, H, W) public images in [0, 1] of the task's data (the data set's other split), or None.
        batch_size: the number of images the server asks each client to train on (FedSGD), or None.
    """

    image_shape: tuple[int, int, int]
    num_classes: int
    normalization: tuple[tuple[float, ...], tuple[float, ...]]
    public: Tensor | None = None
    batch_size: int | None = None


class Attack(abc.ABC):
    """Base class of every gradient inversion attack.

    Subclasses take typed keyword arguments with their paper's defaults and implement `reconstruct`.
    ``requires`` lists the capabilities the threat model must grant (the runner checks it).
    """

    requires: ClassVar[frozenset[Capability]] = frozenset()

    def __init__(self, *, device: str | torch.device = "auto", log_every: int = 50) -> None:
        if log_every < 1:
            raise ConfigError(f"attack.log_every must be ≥ 1, got {log_every}")
        self.device = resolve_device(device)
        self.log_every = int(log_every)

    @property
    def modifies_model(self) -> bool:
        """True when the attack changes the model the server sends (it requires MALICIOUS_MODEL)."""
        return Capability.MALICIOUS_MODEL in self.requires

    def modify_model(self, model: nn.Module, context: ServerContext) -> nn.Module:
        """The model a malicious server sends instead of ``model`` (architecture and/or weights).

        Called by the runner before the client computes its update, only for attacks that require
        ``Capability.MALICIOUS_MODEL`` and only under ``threat.server=malicious``. The default sends the
        model unchanged. The returned module must take the client's (B, C, H, W) inputs and return logits.
        """
        return model

    @abc.abstractmethod
    def reconstruct(
        self, obs: Observation, *, rng: torch.Generator | None = None, progress: bool = False
    ) -> Reconstruction:
        """Reconstruct the private batch from what the server observed."""

    def check(self, obs: Observation, granted: frozenset[Capability] | None = None) -> None:
        """Raise MissingCapabilityError when the scenario does not grant what this attack needs."""
        have = set(granted or ())
        if obs.labels is not None:
            have.add(Capability.KNOWN_LABELS)
        if obs.batch_size is not None:
            have.add(Capability.KNOWN_BATCH_SIZE)
        if obs.local_training is not None:
            have.add(Capability.LOCAL_HPARAMS)
        missing = sorted(c.value for c in self.requires - have)
        if missing:
            raise MissingCapabilityError(
                f"attack {type(self).__name__} needs {', '.join(missing)}, which this scenario does not grant"
            )


def batch_size_of(obs: Observation) -> int:
    if obs.batch_size is None:
        raise MissingCapabilityError(
            "this attack needs the batch size; set threat.batch_size=known or pass it to the attack"
        )
    return obs.batch_size


# -- learning-rate schedules (a factor in [0, 1] of the base rate, t = step / steps) -------------------
def ramp_schedule(t: float, *, rampdown: float = 0.75, rampup: float = 0.05) -> float:
    """GIFD / StyleGAN2-projector ramp: linear warm-up over ``rampup``, cosine decay over the last ``rampdown``."""
    ramp = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(math.pi * ramp)
    return ramp * min(1.0, t / rampup)


def step_schedule(t: float) -> float:
    """Inverting Gradients: ×0.1 at 3/8, 5/8 and 7/8 of the run."""
    return 0.1 ** sum(t >= m for m in (3 / 8, 5 / 8, 7 / 8))


SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda t: 1.0,
    "step": step_schedule,
    "ramp": ramp_schedule,
    "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t)),
}


def get_schedule(name: str) -> Callable[[float], float]:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ConfigError(f"unknown lr schedule {name!r}; known: {', '.join(SCHEDULES)}") from None


@dataclass
class LoopResult:
    """What `optimize` returns: per restart, the best iterate (by pure distance) and its distance, and the last
    iterate whose distance was evaluated (the update after the last evaluation is never scored) with its
    distance (inf where it was not finite, or before the first step)."""

    best: list[Tensor]
    best_distance: Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    interrupted: bool = False
    last: list[Tensor] = field(default_factory=list)
    last_distance: Tensor | None = None
    group_history: list[list[dict[str, Any]]] = field(default_factory=list)


class Adam:
    """Adam (Kingma & Ba, ICLR 2015) on a few leaf tensors, one learning rate each: the update of
    `torch.optim.Adam` with its defaults (betas 0.9 / 0.999, eps 1e-8, no weight decay, no AMSGrad), step for
    step the same numbers as its single-tensor path (tested against it).

    The attacks' loops use this instead of `torch.optim.Adam` because every `torch.optim` optimiser imports
    ``torch._dynamo`` on its first call (about 1.2 s of a short run's whole process on a CPU) and wraps each
    ``step`` in hooks and dynamo guards that cost tens of microseconds a step on a small victim; this has neither.

    Args:
        params: the tensors to update in place (leaves; their ``.grad`` is not used).
        lrs: one learning rate per tensor (> 0).
        betas: the moment decay rates.
        eps: added to the root of the second moment.
    """

    def __init__(self, params: Sequence[Tensor], lrs: Sequence[float], *, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lrs = [float(r) for r in lrs]
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = 0

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], factor: float = 1.0) -> None:
        """One update with gradients ``grads`` (one per tensor) and every learning rate times ``factor``."""
        self.steps += 1
        bias1 = 1 - self.beta1**self.steps
        bias2_sqrt = (1 - self.beta2**self.steps) ** 0.5  # as torch.optim.Adam computes it, to the last bit
        for p, g, m, v, lr in zip(self.params, grads, self.exp_avg, self.exp_avg_sq, self.lrs, strict=True):
            m.lerp_(g, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            denom = (v.sqrt() / bias2_sqrt).add_(self.eps)
            p.addcdiv_(m, denom, value=-(lr * factor) / bias1)


def _entry(step: int, seconds: float, loss: Tensor, dist: Tensor, best_distance: Tensor) -> dict[str, Any]:
    """A history entry of `optimize`: the least loss, distance and best distance over the given restarts."""
    return {
        "step": step,
        "loss": loss.min().item(),
        "distance": dist.min().item(),
        "best_distance": best_distance.min().item(),
        "seconds": seconds,
    }


def optimize(
    step: Callable[[Sequence[Tensor]], tuple[tuple[Tensor, ...], Tensor, Tensor]],
    variables: Sequence[Tensor],
    *,
    iterations: int,
    lr: float | Sequence[float],
    schedule: str = "constant",
    signed: bool = False,
    project: Callable[[list[Tensor]], None] | None = None,
    log_every: int = 50,
    progress: bool = False,
    description: str = "attack",
    groups: int = 1,
) -> LoopResult:
    """Adam on variables with a leading restart dimension; keeps each restart's least-distance iterate.

    ``step`` returns per-restart gradients, losses and pure distances (see `GradientMatcher.step`).
    ``project`` is applied in place after every update (box constraint, ℓ1 ball, sphere). Host syncs happen
    only every ``log_every`` steps. Ctrl-C stops the loop and returns the best found so far. The best and the
    last evaluated iterates live in buffers allocated once and written in place (no copy allocated per step).

    ``groups`` > 1 splits the restarts into that many equal, consecutive groups (the private batches of a
    batched study, `PixelAttack.reconstruct_batched`): ``group_history`` then holds each group's own history.
    """
    from tqdm.auto import tqdm

    leaves = [v.detach().clone().requires_grad_(True) for v in variables]
    rates = [lr] * len(leaves) if isinstance(lr, (int, float)) else list(lr)
    optimizer = Adam(leaves, rates)
    sched = get_schedule(schedule)
    restarts = leaves[0].shape[0]
    best = [v.detach().clone() for v in leaves]
    best_distance = torch.full((restarts,), float("inf"), device=leaves[0].device)
    last = [v.detach().clone() for v in leaves]  # the iterate the latest distance was computed on
    last_distance = best_distance
    history: list[dict[str, Any]] = []
    group_history: list[list[dict[str, Any]]] = [[] for _ in range(groups)] if groups > 1 else []
    if restarts % groups:
        raise ValueError(f"{restarts} restarts do not split into {groups} equal groups")
    start = time.perf_counter()
    bar = tqdm(total=iterations, desc=description, disable=not progress, leave=False)
    done = 0
    interrupted = False
    try:
        for it in range(iterations):
            factor = sched(it / iterations)
            grads, loss, dist = step(leaves)
            # the distance belongs to the iterate it was computed on (the leaves, not yet updated): keep that
            # iterate if it is the best, and as the last evaluated one
            with torch.no_grad():
                improved = dist < best_distance
                best_distance = torch.where(improved, dist, best_distance)
                for b, lst, v in zip(best, last, leaves, strict=True):
                    torch.where(improved.view(-1, *([1] * (b.dim() - 1))), v, b, out=b)
                    lst.copy_(v)
                last_distance = dist.detach()
            optimizer.step([g.sign() for g in grads] if signed else grads, factor)
            if project is not None:
                with torch.no_grad():
                    project(leaves)
            done = it + 1
            if done % log_every == 0 or done == iterations:
                seconds = time.perf_counter() - start
                history.append(_entry(done, seconds, loss, dist, best_distance))
                for k, log_k in enumerate(group_history):
                    part = slice(k * restarts // groups, (k + 1) * restarts // groups)
                    log_k.append(_entry(done, seconds, loss[part], dist[part], best_distance[part]))
                bar.update(done - bar.n)
                bar.set_postfix(distance=f"{history[-1]['best_distance']:.4g}")
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted after %d steps; returning the best result so far", done)
    finally:
        bar.close()
    if not torch.isfinite(best_distance).any():
        best = [v.detach().clone() for v in leaves]
    last_distance = torch.nan_to_num(last_distance, nan=float("inf"), neginf=float("inf"))
    return LoopResult(best=best, best_distance=best_distance, history=history, steps=done, interrupted=interrupted,
                      last=last, last_distance=last_distance, group_history=group_history)
