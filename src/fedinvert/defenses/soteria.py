"""Soteria: representation pruning at the classifier's input (Sun et al., CVPR 2021, "Soteria: Provable
Defense against Privacy Leakage in Federated Learning from Representation Perspective")."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedinvert.defenses.base import Defense, check_ratio, last_linear, register_defense
from fedinvert.defenses.pruning import pruned_count
from fedinvert.errors import ConfigError


@register_defense("soteria")
class Soteria(Defense):
    """Prune the classifier-input features that reveal the most about the input, in the last layer's update.

    Let r (B, D) be the input of the last linear layer for the private batch. For each feature f the score is
    ``s_f = Σ_i ‖∂r_if/∂x_i‖₂ / |r_if|`` (Sun et al. prune where ‖r‖/‖∇_x r‖ is largest, i.e. s_f smallest; the
    GIFD code's ``perturb_representation``). The ``⌊prune_ratio · D⌋`` features with the smallest scores
    are pruned: their columns of the last layer's weight update are zeroed; every other tensor is unchanged.
    Features with r_if = 0 get an infinite term (they carry no signal; pruning them would protect nothing).
    For a FedAvg weight delta the mask is computed at the global weights and applied to the delta.

    Replayable: the adaptive attacker zeroes its dummy's last-layer weight update where the observed one is
    zero (the GIFD code's dummy-side mask).

    Args:
        prune_ratio: fraction of the D features pruned, in [0, 1) (GIFD default 0.1, its defence config 0.8).
        layer: module name of the linear layer; None is the model's last ``nn.Linear``. For the replay, None
            means the last two-dimensional tensor of the update (the classifier's weight in every fedinvert
            victim).
        chunk: features whose input gradients are computed in one batched backward pass (memory vs speed).
    """

    replayable = True

    def __init__(self, *, prune_ratio: float = 0.1, layer: str | None = None, chunk: int = 64) -> None:
        self.prune_ratio = check_ratio("soteria.prune_ratio", prune_ratio)
        self.layer = layer
        if chunk < 1:
            raise ConfigError(f"defense.soteria.chunk must be ≥ 1, got {chunk}")
        self.chunk = int(chunk)

    def _module(self, model: nn.Module) -> tuple[str, nn.Module]:
        if self.layer is None:
            return last_linear(model)
        modules = dict(model.named_modules())
        if not isinstance(modules.get(self.layer), nn.Linear):
            raise ConfigError(f"defense.soteria.layer={self.layer!r} is not an nn.Linear of the victim")
        return self.layer, modules[self.layer]

    def feature_scores(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """(D,) the score s_f of every input feature of the linear layer on ``inputs`` (B, C, H, W)."""
        work = copy.deepcopy(model)  # a forward pass in train mode would move BatchNorm buffers
        name, _ = self._module(work)
        module = dict(work.named_modules())[name]
        captured: list[Tensor] = []
        handle = module.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0]))
        x = inputs.detach().clone().requires_grad_(True)
        try:
            with torch.enable_grad():
                work(x)
        finally:
            handle.remove()
        r = captured[0].flatten(1)  # (B, D)
        batch, features = r.shape
        norms = torch.empty(batch, features, dtype=r.dtype, device=r.device)
        for start in range(0, features, self.chunk):
            index = torch.arange(start, min(start + self.chunk, features), device=r.device)
            # one backward per feature f, batched: Σ_i r_if depends on x_i through r_if only (per-sample model)
            outputs = torch.zeros(len(index), batch, features, dtype=r.dtype, device=r.device)
            outputs[torch.arange(len(index)), :, index] = 1
            (grads,) = torch.autograd.grad(r, x, grad_outputs=outputs, retain_graph=True, is_grads_batched=True)
            norms[:, index] = grads.flatten(2).norm(dim=2).T
        terms = (norms / r.detach().abs()).nan_to_num(nan=float("inf"))
        return terms.sum(0)

    def pruned_features(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """Indices of the ``⌊prune_ratio · D⌋`` features with the smallest score (sorted)."""
        scores = self.feature_scores(model, inputs)
        k = pruned_count(self.prune_ratio, scores.numel())
        return torch.sort(torch.argsort(scores, stable=True)[:k]).values

    def apply(
        self,
        update: dict[str, Tensor],
        *,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        rng: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        name, _ = self._module(model)
        key = f"{name}.weight" if name else "weight"
        if key not in update:
            raise ConfigError(
                f"Soteria: the update has no tensor {key!r} (the last linear layer's weight); a client that shares"
                " only some parameters must share that layer's (model.lora_head=true for a LoRA victim)"
            )
        pruned = self.pruned_features(model, inputs).to(update[key].device)
        out = dict(update)
        weight = update[key].clone()
        weight[:, pruned] = 0
        out[key] = weight
        return out

    def _index(self, tensors: Sequence[Tensor], names: Sequence[str] | None) -> int:
        if self.layer is not None and names is not None:
            key = f"{self.layer}.weight"
            if key in names:
                return list(names).index(key)
        candidates = [i for i, t in enumerate(tensors) if t.dim() == 2]
        if not candidates:
            raise ConfigError("Soteria replay: the update has no two-dimensional (linear weight) tensor")
        return candidates[-1]

    def replay(
        self, dummy_update: list[Tensor], observed: list[Tensor], *, names: Sequence[str] | None = None
    ) -> list[Tensor]:
        i = self._index(observed, names)
        out = list(dummy_update)
        out[i] = dummy_update[i] * (observed[i] != 0).to(dummy_update[i].dtype)
        return out
