"""Restarts as groups of one victim: every restart's parameter gradient in one plain-autograd pass, no vmap.

A search of R restarts needs R parameter gradients of the victim, one per restart's dummy batch. Looping runs
the victim R times; ``vmap`` batches the restarts but pays its batching rules on every op of the double
backward. Here each restart gets its own copy of the victim's parameters — the same values, expanded to a
leading dimension R (no memory) — and the victim's parameterised layers are swapped for ones that run the R
restarts' inputs, stacked on the batch dimension, through one batched matmul (a convolution as columns, im2col).
Every other op of the victim (activations, pooling, flattening, residual sums) sees an ordinary batch of
R · B samples. The gradient of the summed losses w.r.t. the copies is then each restart's own gradient.

Only layers whose semantics are known are swapped (`SWAPPED`); a victim with a parameter anywhere else (a
bare ``nn.Parameter`` used in ``forward``, an attention block with its own weights) is refused with a reason,
and a model whose ``forward`` mixes samples outside those layers would give wrong numbers, so
`fedinvert.attacks.objectives.GradientMatcher` checks its first grouped step against the looped one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedinvert.attacks.affine_norm import AffineBatchNorm


class GroupingRefused(Exception):
    """The victim cannot run its restarts as groups; the message says why."""


class _Grouped(nn.Module):
    """A parameterised layer run for R restarts at once; its per-restart parameters are set before each call."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = [layer]  # kept out of the module tree: its parameters are not this model's
        self.values: dict[str, Tensor | None] = {name: None for name, _ in layer.named_parameters(recurse=False)}

    @property
    def restarts(self) -> int:
        value = next(v for v in self.values.values() if v is not None)
        return value.shape[0]

    def by_restart(self, x: Tensor) -> Tensor:
        """(R·B, ...) → (R, B, ...)."""
        return x.reshape(self.restarts, x.shape[0] // self.restarts, *x.shape[1:])

    def channel_affine(self, normalised: Tensor, x: Tensor) -> Tensor:
        """``normalised`` (R, B, C, *spatial) times each restart's per-channel weight plus its bias (where the
        layer has them), in ``x``'s shape (R·B, C, *spatial)."""
        weight, bias = self.values.get("weight"), self.values.get("bias")
        if weight is None or bias is None:  # both or neither (affine)
            return normalised.reshape(x.shape)
        shape = (weight.shape[0], 1, weight.shape[1], *(1,) * (x.dim() - 2))
        return (normalised * weight.reshape(shape) + bias.reshape(shape)).reshape(x.shape)


class _GroupedConv2d(_Grouped):
    """Columns (im2col) times each restart's weight matrix in one batched matmul. On small victims this beats
    a grouped convolution, whose CPU kernels are slow for few channels a group, in the double backward too."""

    def forward(self, x: Tensor) -> Tensor:
        conv = self.layer[0]
        assert isinstance(conv, nn.Conv2d) and not isinstance(conv.padding, str)
        weight, bias = self.values["weight"], self.values.get("bias")
        assert weight is not None
        r = weight.shape[0]
        size = [
            (x.shape[2 + i] + 2 * conv.padding[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1)
            // conv.stride[i] + 1
            for i in range(2)
        ]
        columns = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (R·B, C·k·k, L)
        columns = columns.reshape(r, -1, *columns.shape[1:])
        out = torch.matmul(weight.reshape(r, 1, weight.shape[1], -1), columns)  # (R, B, O, L)
        if bias is not None:
            out = out + bias.reshape(r, 1, -1, 1)
        return out.reshape(x.shape[0], -1, *size)


class _GroupedLinear(_Grouped):
    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.values["weight"], self.values.get("bias")
        assert weight is not None
        r = weight.shape[0]
        rows = x.reshape(r, -1, x.shape[-1])  # each restart's samples (and tokens) as rows
        out = torch.bmm(rows, weight.transpose(1, 2)) if bias is None else torch.baddbmm(
            bias.unsqueeze(1), rows, weight.transpose(1, 2)
        )
        return out.reshape(*x.shape[:-1], -1)


class _GroupedBatchNorm(_Grouped):
    def forward(self, x: Tensor) -> Tensor:
        bn = self.layer[0]
        assert isinstance(bn, (nn.modules.batchnorm._BatchNorm, AffineBatchNorm))
        xr = self.by_restart(x)  # (R, B, C, *spatial)
        spatial = x.dim() - 2
        shape = (1, 1, -1) + (1,) * spatial
        batch_statistics = bn.running_mean is None or (bn.training and not isinstance(bn, AffineBatchNorm))
        if batch_statistics:  # the client's batch statistics, per restart's batch (AffineBatchNorm: never)
            dims = (1, *range(3, xr.dim()))
            mean = xr.mean(dims, keepdim=True)
            var = xr.var(dims, keepdim=True, unbiased=False)
        else:
            assert bn.running_mean is not None and bn.running_var is not None
            mean, var = bn.running_mean.view(shape), bn.running_var.view(shape)
        return self.channel_affine((xr - mean) * torch.rsqrt(var + bn.eps), x)


class _GroupedGroupNorm(_Grouped):
    def forward(self, x: Tensor) -> Tensor:
        norm = self.layer[0]
        assert isinstance(norm, nn.GroupNorm)
        return self.channel_affine(self.by_restart(F.group_norm(x, norm.num_groups, None, None, norm.eps)), x)


class _GroupedLayerNorm(_Grouped):
    def forward(self, x: Tensor) -> Tensor:
        norm = self.layer[0]
        assert isinstance(norm, nn.LayerNorm)
        out = self.by_restart(F.layer_norm(x, norm.normalized_shape, None, None, norm.eps))
        lead = out.dim() - 1 - len(norm.normalized_shape)  # the dims between R and the normalised ones
        for name in ("weight", "bias"):
            value = self.values.get(name)
            if value is not None:
                value = value.reshape(value.shape[0], *(1,) * lead, *value.shape[1:])
                out = out * value if name == "weight" else out + value
        return out.reshape(x.shape)


_KINDS: dict[type[nn.Module], type[_Grouped]] = {
    nn.Conv2d: _GroupedConv2d,
    nn.Linear: _GroupedLinear,
    nn.BatchNorm1d: _GroupedBatchNorm,
    nn.BatchNorm2d: _GroupedBatchNorm,
    AffineBatchNorm: _GroupedBatchNorm,  # eval-mode BatchNorm as the functional (vmappable) victims carry it
    nn.GroupNorm: _GroupedGroupNorm,
    nn.LayerNorm: _GroupedLayerNorm,
}


def _swapped(layer: nn.Module) -> type[_Grouped] | None:
    """The grouped form of ``layer``: by exact type, as a subclass may change what ``forward`` computes."""
    if isinstance(layer, nn.Conv2d) and (
        layer.padding_mode != "zeros" or isinstance(layer.padding, str) or layer.groups != 1
    ):
        return None
    return _KINDS.get(type(layer))


SWAPPED = ("Conv2d (zero, numeric padding; one group)", "Linear", "BatchNorm", "GroupNorm", "LayerNorm")
"""The layers a grouped victim runs for all restarts at once; a parameter anywhere else refuses grouping."""


class GroupedVictim:
    """A copy of a victim whose parameterised layers run R restarts at once (R from the parameters given).

    ``logits(params, inputs)``: ``params`` maps every parameter name of the victim to a tensor with a leading
    restart dimension R; ``inputs`` is the R restarts' batches stacked, (R·B, ...), restart-major. Returns the
    victim's output for them, (R·B, ...), restart r's rows computed with ``params[...][r]``.

    Raises:
        GroupingRefused: a parameter lives in a layer outside `SWAPPED`.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = copy.deepcopy(model)
        self.owner: dict[str, tuple[_Grouped, str]] = {}
        self._swap(self.model, "")
        missing = [n for n, _ in self.model.named_parameters() if n not in self.owner]
        if missing:
            raise GroupingRefused(
                f"parameter {missing[0]!r} is not in a layer that runs restarts as groups ({', '.join(SWAPPED)})"
            )

    def _swap(self, module: nn.Module, prefix: str) -> None:
        for name, child in list(module.named_children()):
            path = f"{prefix}{name}"
            kind = _swapped(child)
            if kind is None or not any(True for _ in child.parameters(recurse=False)):  # nothing per restart
                self._swap(child, f"{path}.")
                continue
            grouped = kind(child)
            setattr(module, name, grouped)
            for attr in grouped.values:
                self.owner[f"{path}.{attr}"] = (grouped, attr)

    @property
    def names(self) -> list[str]:
        """Every parameter name the victim had, in its order."""
        return list(self.owner)

    def logits(self, params: Mapping[str, Tensor], inputs: Tensor) -> Tensor:
        for name, (layer, attr) in self.owner.items():
            layer.values[attr] = params[name]
        try:
            return self.model(inputs)
        finally:
            for layer, attr in self.owner.values():
                layer.values[attr] = None
