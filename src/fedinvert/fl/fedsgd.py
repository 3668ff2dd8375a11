"""FedSGD: the client shares the gradient of its loss on the private batch (McMahan et al. 2017)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedinvert.errors import ConfigError

#: ``(model, inputs, labels) -> {parameter name: gradient}`` of one (mini-)batch; DP-SGD supplies its own.
GradientFunction = Callable[[nn.Module, Tensor, Tensor], dict[str, Tensor]]


def parameter_gradients(model: nn.Module, inputs: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """∇θ of the mean cross-entropy of ``model`` on (inputs, labels), keyed by parameter name.

    BatchNorm running buffers are restored afterwards, so computing the update leaves the model unchanged.
    """
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    loss = F.cross_entropy(model(inputs), labels)
    grads = torch.autograd.grad(loss, [p for _, p in params])
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    return {n: g.detach().clone() for (n, _), g in zip(params, grads, strict=True)}


class FedSGDClient:
    """A FedSGD client: one gradient of the loss on its whole private batch.

    Args:
        mode: ``eval`` (BatchNorm uses running statistics; the usual GIA setting) or ``train``
            (batch statistics, as during real local training).
    """

    kind = "gradient"

    def __init__(self, *, mode: Literal["eval", "train"] = "eval") -> None:
        if mode not in ("eval", "train"):
            raise ConfigError(f"protocol.mode must be eval or train, got {mode!r}")
        self.mode = mode

    def update(
        self, model: nn.Module, inputs: Tensor, labels: Tensor, *, gradient_fn: GradientFunction | None = None
    ) -> dict[str, Tensor]:
        """The shared update for the private (normalised) ``inputs`` (B, C, H, W) and ``labels`` (B,).

        Args:
            gradient_fn: replaces the plain mean cross-entropy gradient (DP-SGD passes its clipped, noised one).
        """
        model.train(self.mode == "train")
        return (gradient_fn or parameter_gradients)(model, inputs, labels)
