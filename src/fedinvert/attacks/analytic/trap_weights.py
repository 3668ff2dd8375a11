"""Trap weights (Boenisch et al., "When the curious abandon honesty: Federated learning is not private",
EuroS&P 2023): a malicious server leaves the architecture alone and only sets the first linear layer's
weights so that each of its ReLU rows fires for few inputs. A row that fires for exactly one image of the
batch holds that image in its gradient: dL/dW_i = g_ni x_n and dL/db_i = g_ni, so x_n = dL/dW_i / dL/db_i.

Each row gets random magnitudes, half of its entries negative, and the negative ones multiplied by one scale
s ≥ 1, so that the row's response to a non-negative image is mostly negative ("mostly negative weights"). The
server picks s from public images of the task: the smallest s at which a row fires for a fraction ``rate`` of
them on average (by bisection). The weights act on raw pixels in [0, 1]; the victim's normalisation is folded
into the layer's weight and bias, so the client's normalised input gives the same responses.

Recovery: every row whose bias gradient is not (near) zero yields a candidate; the candidates of rows that
fired for the same single image coincide (to float precision), while rows that fired for several images give
mixtures that differ from row to row. Candidates are grouped at a small relative distance and the largest
groups are returned first, then the single candidates whose pixels lie in the valid range.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from fedinvert.attacks.analytic.linear_leakage import image_layer, padded_images, signal_rows
from fedinvert.attacks.base import ATTACKS, Attack, ServerContext, batch_size_of
from fedinvert.errors import ConfigError, ObservationError
from fedinvert.observation import Capability, Observation, Reconstruction


def trap_layer(model: nn.Module, image_shape: tuple[int, int, int]) -> tuple[str, nn.Linear]:
    """The linear layer (with a bias) that receives the flattened image (`image_layer`), where the traps go;
    ConfigError when the model has none (e.g. a convolutional victim)."""
    name = image_layer(model, image_shape)
    if name is None:
        raise ConfigError(
            "attack 'trap_weights' needs a victim whose first layer is linear and sees the image (e.g. model=mlp);"
            f" {type(model).__name__} has no linear layer that reads the image"
        )
    layer = model.get_submodule(name)
    assert isinstance(layer, nn.Linear)
    return name, layer


def trap_matrix(public: Tensor, rows: int, *, rate: float, seed: int) -> tuple[Tensor, float]:
    """(rows, D) trap weights on raw pixels and their negative scale s, for public (N, C, H, W) images in [0, 1].

    Magnitudes U(0, 1), a random half of each row negative and scaled by s; s ≥ 1 is chosen by bisection so
    that a row fires (positive response) for a fraction ``rate`` of the public images, averaged over rows.
    """
    g = torch.Generator().manual_seed(seed)
    size = public[0].numel()
    magnitude = torch.rand(rows, size, generator=g, dtype=torch.float64)
    negative = torch.rand(rows, size, generator=g).argsort(dim=1) < size // 2
    x = public.flatten(1).double()
    pos = (magnitude * ~negative) @ x.T  # (rows, N)
    neg = (magnitude * negative) @ x.T

    def firing(s: float) -> float:
        return float((pos - s * neg > 0).double().mean())

    low, high = 1.0, 2.0
    while firing(high) > rate and high < 1e6:
        low, high = high, high * 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if firing(mid) > rate else (low, mid)
    weight = torch.where(negative, -high * magnitude, magnitude)
    return weight, high


@ATTACKS.register("trap_weights")
class TrapWeights(Attack):
    """Boenisch et al.'s trap weights in the first linear layer; exact recovery of the images that fire a row
    alone, under FedSGD.

    Needs a malicious server (``threat.server=malicious``) and a victim whose first layer is linear
    (``model=mlp``; its width is the number of rows, 1000 in the paper). The architecture is unchanged; only
    that layer's weight and bias are replaced (`modify_model`).

    Args:
        rate: fraction of the public images that fire each row on average, in (0, 1); None: 4 / B (at most
            0.5) when the server knows the batch size, else 0.05. 4 / B recovered more images than 1 / B (the
            rate at which a row most often fires for exactly one image) in all six cells of
            ``benchmarks/trap_weights.py`` (Fashion-MNIST and photo crops, B = 16, 64, 100; paired over 8
            batches, e.g. +3.50 ± 1.95 images at B = 64 on Fashion-MNIST): brighter images fire many more rows
            than darker ones, so a higher rate lets the dark images fire some row alone.
        group: relative distance below which two rows' candidates are the same image.
        tolerance: relative threshold on |dL/db_i| below which a row fired for no image.
        seed: seed of the weights' magnitudes and signs.
    """

    requires = frozenset({Capability.MALICIOUS_MODEL})

    def __init__(
        self,
        *,
        rate: float | None = None,
        group: float = 1e-4,
        tolerance: float = 1e-6,
        seed: int = 0,
        device: str | torch.device = "auto",
        log_every: int = 50,
    ) -> None:
        super().__init__(device=device, log_every=log_every)
        if rate is not None and not 0 < rate < 1:
            raise ConfigError(f"attack.rate must lie in (0, 1), got {rate}")
        if not 0 < group < 1:
            raise ConfigError(f"attack.group must lie in (0, 1), got {group}")
        if not 0 <= tolerance < 1:
            raise ConfigError(f"attack.tolerance must lie in [0, 1), got {tolerance}")
        self.rate = None if rate is None else float(rate)
        self.group = float(group)
        self.tolerance = float(tolerance)
        self.seed = int(seed)
        self.scale: float | None = None  # the negative scale s chosen by the last modify_model

    def target_rate(self, context: ServerContext) -> float:
        if self.rate is not None:
            return self.rate
        return min(0.5, 4.0 / context.batch_size) if context.batch_size and context.batch_size > 1 else 0.05

    def modify_model(self, model: nn.Module, context: ServerContext) -> nn.Module:
        if context.public is None or len(context.public) < 10:
            raise ConfigError("attack 'trap_weights' needs public images of the task's data to scale its weights")
        sent = copy.deepcopy(model)
        _, layer = trap_layer(sent, context.image_shape)
        size = math.prod(context.image_shape)
        weight, self.scale = trap_matrix(context.public, layer.out_features, rate=self.target_rate(context),
                                         seed=self.seed)
        # fold the normalisation in: W x = W' (x − m) / s + b'  with  W' = W · s,  b' = W m
        channels = context.image_shape[0]
        pixels = size // channels
        mean = torch.tensor(context.normalization[0], dtype=torch.float64).repeat_interleave(pixels)
        std = torch.tensor(context.normalization[1], dtype=torch.float64).repeat_interleave(pixels)
        with torch.no_grad():
            layer.weight.copy_((weight * std).to(layer.weight.dtype))
            layer.bias.copy_((weight @ mean).to(layer.bias.dtype))
        return sent

    def reconstruct(
        self, obs: Observation, *, rng: torch.Generator | None = None, progress: bool = False
    ) -> Reconstruction:
        size = batch_size_of(obs)
        try:
            name, _ = trap_layer(obs.model, obs.image_shape)
        except ConfigError as err:
            raise ObservationError(str(err)) from None
        prefix = f"{name}." if name else ""
        gw = obs.update[f"{prefix}weight"].detach().cpu().double()
        gb = obs.update[f"{prefix}bias"].detach().cpu().double()
        candidates, counts = self.candidates(gw, gb)
        order = self.rank(obs, candidates, counts)[:size]
        images = padded_images(obs, candidates[order], size)
        return Reconstruction(
            images=images.to(self.device),
            labels=None,
            score=0.0,
            iterations=1,
            extras={"active_rows": int(counts.sum()) if len(counts) else 0, "rows": int(len(gb)),
                    "groups": int(len(counts)), "repeated": int((counts > 1).sum()), "recovered": int(len(order)),
                    "scale": self.scale},
        )

    def candidates(self, gw: Tensor, gb: Tensor) -> tuple[Tensor, Tensor]:
        """One candidate input per group of rows whose ratios dL/dW_i / dL/db_i coincide, and the group sizes."""
        rows = signal_rows(gb, self.tolerance)
        if not len(rows):
            return gw.new_zeros(0, gw.shape[1]), torch.zeros(0, dtype=torch.long)
        ratio = gw[rows] / gb[rows, None]
        norm = ratio.norm(dim=1).clamp_min(1e-12)
        close = torch.cdist(ratio, ratio) <= self.group * torch.minimum(norm[:, None], norm[None, :])
        free = torch.ones(len(rows), dtype=torch.bool)
        reps: list[Tensor] = []
        counts: list[int] = []
        for i in close.sum(1).argsort(descending=True).tolist():  # the most repeated candidates first
            if not free[i]:
                continue
            members = close[i] & free
            free &= ~members
            reps.append(ratio[members].mean(0))
            counts.append(int(members.sum()))
        return torch.stack(reps), torch.tensor(counts)

    def rank(self, obs: Observation, candidates: Tensor, counts: Tensor) -> Tensor:
        """Candidate order: by group size, then by the share of pixels inside the valid range (mixtures of images
        with gradient weights of both signs leave it)."""
        if not len(candidates):
            return torch.zeros(0, dtype=torch.long)
        images = obs.denormalize(candidates.float().view(-1, *obs.image_shape)).flatten(1)
        inside = ((images >= -1e-3) & (images <= 1 + 1e-3)).double().mean(1)
        key = counts.double() + inside.double() * 0.5  # a repeated group always ranks above any single row
        return key.argsort(descending=True)
