"""Eval-mode BatchNorm as an affine map: the same numbers with plain ops that `vmap` batches natively."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AffineBatchNorm(nn.Module):
    """Eval-mode BatchNorm written as an affine map, with the same parameter and buffer names.

    Numerically the same as `nn.BatchNorm*d` in eval mode, but with plain ops that `vmap` batches natively.
    """

    running_mean: Tensor
    running_var: Tensor
    weight: Tensor | None
    bias: Tensor | None

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.eps = bn.eps
        if bn.affine:
            self.weight = bn.weight
            self.bias = bn.bias
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked)

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        scale = torch.rsqrt(self.running_var + self.eps)
        out = (x - self.running_mean.view(shape)) * scale.view(shape)
        if self.weight is not None and self.bias is not None:  # both or neither (affine)
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def affine_batch_norm_(model: nn.Module) -> None:
    """Replace every eval-mode BatchNorm with running statistics by `AffineBatchNorm`, in place."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and child.track_running_stats:
            setattr(model, name, AffineBatchNorm(child))
        else:
            affine_batch_norm_(child)
