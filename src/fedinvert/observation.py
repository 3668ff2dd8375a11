"""The boundary types between the client side, the attacker and evaluation (DESIGN §1, §3).

`Observation` is everything the attacker sees and nothing else: it never holds private images.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from fedinvert.errors import ObservationError

_CHANNEL_CONSTANTS: dict[tuple[tuple[float, ...], torch.device, torch.dtype], Tensor] = {}
_CHANNEL_CONSTANTS_LIMIT = 256


def channel_constant(
    values: Sequence[float], *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Per-channel ``values`` (a normalisation mean or std, luma weights, ...) as a (1, C, 1, 1) tensor.

    Built once per (values, device, dtype) and reused, so an attack step that normalises its images does no
    host-to-device copy (on CUDA each ``torch.tensor(list)`` is one, and it waits for the device). The
    tensor is shared: read it, never write into it. Under ``torch.compile`` a fresh constant is returned,
    which the compiler folds into its graph.
    """
    key = (tuple(float(v) for v in values), torch.device(device if device is not None else "cpu"), dtype)
    if torch.compiler.is_compiling():
        return torch.tensor(key[0], dtype=dtype, device=key[1]).view(1, -1, 1, 1)
    cached = _CHANNEL_CONSTANTS.get(key)
    if cached is None:
        if len(_CHANNEL_CONSTANTS) >= _CHANNEL_CONSTANTS_LIMIT:
            _CHANNEL_CONSTANTS.clear()
        # a normal tensor even when first asked for under inference mode, so autograd may save it later
        with torch.inference_mode(False):
            cached = torch.tensor(key[0], dtype=dtype, device=key[1]).view(1, -1, 1, 1)
        _CHANNEL_CONSTANTS[key] = cached
    return cached


class Capability(enum.Enum):
    """What an attack may need beyond the honest-but-curious server's view."""

    PRIOR = "prior"  # a pretrained generator (granted by `prior=`)
    KNOWN_LABELS = "known_labels"  # the server knows the private labels
    KNOWN_BATCH_SIZE = "known_batch_size"
    MALICIOUS_MODEL = "malicious_model"  # the server may modify the model it sends
    LOCAL_HPARAMS = "local_hparams"  # FedAvg local-training hyper-parameters are known


@dataclass(frozen=True)
class LocalTraining:
    """FedAvg local-training hyper-parameters, as far as the server knows them."""

    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-3
    momentum: float = 0.0
    shuffle_seed: int | None = None


@dataclass(frozen=True)
class DefenseSpec:
    """A declared defence and its public parameters (what an adaptive attacker may replay)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    """What the server sees of one client's round.

    Attributes:
        model: architecture plus the global weights the server sent; ``model.training`` records the mode
            the client used.
        update: parameter name -> shared tensor (gradient for FedSGD, weight delta for FedAvg).
        kind: ``"gradient"`` or ``"weight_delta"``.
        image_shape: (C, H, W) of the client's inputs.
        num_classes: size of the label space.
        normalization: (mean, std) per channel that the client applied to [0, 1] images.
        batch_size: number of private images, if known to the server.
        labels: the private labels, only when the threat model grants them.
        local_training: FedAvg hyper-parameters, if known.
        defenses: declared defences with their public parameters, if granted.
        loss: the client's loss (cross-entropy, mean reduction).
    """

    model: nn.Module
    update: dict[str, Tensor]
    kind: Literal["gradient", "weight_delta"]
    image_shape: tuple[int, int, int]
    num_classes: int
    normalization: tuple[tuple[float, ...], tuple[float, ...]]
    batch_size: int | None = None
    labels: Tensor | None = None
    local_training: LocalTraining | None = None
    defenses: tuple[DefenseSpec, ...] = ()
    loss: str = "cross_entropy"

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check that the update fits the model, update and weights are finite and the labels fit the label
        space; raise ObservationError otherwise."""
        if self.kind not in ("gradient", "weight_delta"):
            raise ObservationError(f"observation kind must be 'gradient' or 'weight_delta', got {self.kind!r}")
        if len(self.image_shape) != 3 or any(int(s) <= 0 for s in self.image_shape):
            raise ObservationError(f"image_shape must be (C, H, W) with positive sizes, got {self.image_shape}")
        params = dict(self.model.named_parameters())
        expected = {n for n, p in params.items() if p.requires_grad}
        missing = sorted(expected - set(self.update))
        if missing:
            raise ObservationError(
                f"observation has no {self.kind} for {missing[0]!r}"
                f" ({len(missing)} missing); the model has parameters {sorted(expected)[:6]}..."
            )
        extra = sorted(set(self.update) - expected)
        if extra:
            raise ObservationError(
                f"observation has a {self.kind} for {extra[0]!r}, which is not a trainable parameter of the model"
            )
        for name, tensor in self.update.items():
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise ObservationError(
                    f"{self.kind} for {name!r} has shape {tuple(tensor.shape)}, the model's parameter has"
                    f" {tuple(params[name].shape)}"
                )
            if not torch.isfinite(tensor).all():
                raise ObservationError(f"{self.kind} for {name!r} holds NaN or inf")
        # the weights the server sent are part of what the attack differentiates through: a NaN there turns
        # every step into NaN just as one in the update does
        for name, tensor in (*self.model.named_parameters(), *self.model.named_buffers()):
            if tensor.is_floating_point() and not torch.isfinite(tensor.detach()).all():
                raise ObservationError(f"model weight {name!r} holds NaN or inf")
        mean, std = self.normalization
        channels = self.image_shape[0]
        if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
            raise ObservationError(
                f"normalization must give {channels} means and {channels} positive stds, got {self.normalization}"
            )
        if self.num_classes < 2:
            raise ObservationError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.labels is not None:
            if self.labels.dim() != 1 or self.labels.dtype.is_floating_point or self.labels.dtype == torch.bool:
                raise ObservationError(
                    f"labels must be a (B,) integer tensor, got {self.labels.dtype} of shape {tuple(self.labels.shape)}"
                )
            if self.batch_size is not None and len(self.labels) != self.batch_size:
                raise ObservationError(f"{len(self.labels)} labels given for a batch of {self.batch_size}")
            if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
                raise ObservationError(
                    f"labels must lie in [0, {self.num_classes}), got {int(self.labels.min())}..{int(self.labels.max())}"
                )

    # -- helpers used by attacks -----------------------------------------------------------------
    @property
    def parameter_names(self) -> list[str]:
        """Names of the shared tensors, in the model's parameter order."""
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def update_list(self) -> list[Tensor]:
        """The shared tensors in the model's parameter order."""
        return [self.update[n] for n in self.parameter_names]

    def mean_std(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std as (1, C, 1, 1) float32 tensors on ``device``, cached (`channel_constant`)."""
        mean, std = self.normalization
        return channel_constant(mean, device=device), channel_constant(std, device=device)

    def normalize(self, images: Tensor) -> Tensor:
        """[0, 1] images -> the victim's input tensor."""
        m, s = self.mean_std(images.device)
        return (images - m) / s

    def denormalize(self, inputs: Tensor) -> Tensor:
        """The victim's input tensor -> [0, 1] images (not clamped)."""
        m, s = self.mean_std(inputs.device)
        return inputs * s + m

    def input_box(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """Lower and upper bounds of valid inputs in the victim's normalised space."""
        m, s = self.mean_std(device)
        return (0 - m) / s, (1 - m) / s

    def find_defense(self, name: str) -> DefenseSpec | None:
        return next((d for d in self.defenses if d.name == name), None)


@dataclass
class StageResult:
    """GIFD: the best image of one stage (least pure gradient distance over restarts)."""

    name: str
    images: Tensor
    distance: float
    restart: int = 0


@dataclass
class Reconstruction:
    """What an attack returns.

    Attributes:
        images: (B, C, H, W) in [0, 1], un-normalised.
        labels: (B,) the labels the attack used or recovered, or None.
        score: the attack's own gradient-matching distance of the returned images (lower is better).
        history: per logged step / per stage: loss, distance, seconds, ...
        stages: GIFD's per-stage best images.
        iterations: gradient-matching evaluations done, summed over restarts, stages and passes.
        interrupted: True when the attack was stopped early (Ctrl-C) and returns its best so far.
    """

    images: Tensor
    labels: Tensor | None
    score: float
    history: list[dict[str, Any]] = field(default_factory=list)
    stages: list[StageResult] = field(default_factory=list)
    iterations: int = 0
    interrupted: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"reconstructed images must be (B, C, H, W), got {tuple(self.images.shape)}")
        if not math.isfinite(self.score):
            self.score = float("inf")
