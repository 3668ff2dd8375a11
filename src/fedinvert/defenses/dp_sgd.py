"""DP-SGD: per-sample gradient clipping plus Gaussian noise in every local step (Abadi et al., CCS 2016),
run through opacus, with the privacy spent from opacus's RDP accountant (Mironov 2017)."""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedinvert.defenses.base import Defense, check_positive, register_defense
from fedinvert.errors import ConfigError

INSTALL_HINT = "pip install 'fedinvert[dp]' (or: pip install opacus)"


def require_opacus() -> Any:
    """The opacus module, or a ConfigError that says how to install it."""
    try:
        import opacus
    except ImportError:
        raise ConfigError(f"defense dp_sgd needs opacus, which is not installed: {INSTALL_HINT}") from None
    return opacus


@register_defense("dp_sgd")
class DPSGD(Defense):
    """Differentially private SGD: each local step clips every per-sample gradient to ``max_grad_norm``, sums
    them, adds N(0, (noise_multiplier · max_grad_norm)²) noise and divides by the batch size.

    It acts inside local training, whatever its position in the defence list: with FedSGD the shared
    gradient is one DP-SGD gradient of the whole private batch (`apply`); with FedAvg every local step uses
    one (`private_gradient` as the client's gradient function). Per-sample gradients, clipping and noise come
    from opacus (`GradSampleModule`, `DPOptimizer`). The privacy spent by one client's round is ε at
    ``delta`` from opacus's RDP accountant, with sample rate b/n per step (1 for FedSGD); shuffled batches
    stand in for the Poisson sampling the accountant assumes, the usual approximation.

    Not replayable. opacus cannot compute per-sample gradients through BatchNorm: a victim with BatchNorm is
    a ConfigError that names ``model.norm=group`` (layers are never swapped silently).

    Args:
        max_grad_norm: per-sample clipping bound C (> 0; Abadi et al. use 4, opacus examples 1).
        noise_multiplier: σ, the noise std in units of C (≥ 0; 0 clips without noise and gives ε = ∞).
        delta: the δ at which ε is reported (in (0, 1); 1e-5, below 1/n for the usual data-set sizes).

    Raises:
        ConfigError: opacus is not installed (with the install command) or a value is out of range.
    """

    trains_privately = True

    def __init__(self, *, max_grad_norm: float = 1.0, noise_multiplier: float = 1.0, delta: float = 1e-5) -> None:
        require_opacus()
        self.max_grad_norm = check_positive("dp_sgd.max_grad_norm", max_grad_norm)
        self.noise_multiplier = check_positive("dp_sgd.noise_multiplier", noise_multiplier, allow_zero=True)
        self.delta = check_positive("dp_sgd.delta", delta)
        if self.delta >= 1:
            raise ConfigError(f"defense.dp_sgd.delta must lie in (0, 1), got {delta}")

    def check_model(self, model: nn.Module) -> None:
        """Raise ConfigError when opacus cannot train ``model`` privately (BatchNorm, unsupported layers)."""
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                raise ConfigError(
                    f"defense dp_sgd cannot train a victim with BatchNorm (layer {name!r}): per-sample gradients"
                    " do not exist through batch statistics; use model.norm=group (or a victim without BatchNorm)"
                )
        from opacus.validators import ModuleValidator

        errors = ModuleValidator.validate(copy.deepcopy(model).train(), strict=False)
        if errors:
            raise ConfigError(f"defense dp_sgd: opacus cannot train this victim: {str(errors[0]).splitlines()[0]}")

    def private_gradient(
        self, model: nn.Module, inputs: Tensor, labels: Tensor, *, rng: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """One DP-SGD gradient of the mean cross-entropy on (inputs (b, C, H, W), labels (b,)), by parameter name.

        ``(Σ_i clip_C(g_i) + N(0, σ²C²)) / b`` with ``clip_C(g) = g · min(1, C / (‖g‖₂ + 1e-6))`` (opacus). The
        model is not modified (opacus wraps a copy, in train mode: a victim with dropout gets train-mode
        dropout here).
        """
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        # opacus records activations only in train mode; without BatchNorm (checked) and dropout both modes
        # compute the same function
        work = copy.deepcopy(model).train()
        wrapped = GradSampleModule(work, loss_reduction="mean")
        params = [(n, p) for n, p in work.named_parameters() if p.requires_grad]
        optimizer = DPOptimizer(
            torch.optim.SGD([p for _, p in params], lr=0.0),
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=inputs.shape[0],
            loss_reduction="mean",
            generator=rng,
        )
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad(), warnings.catch_warnings():
            # opacus's hooks fire on module outputs, as they should when the inputs need no gradient
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            F.cross_entropy(wrapped(inputs), labels).backward()
        optimizer.pre_step()  # clip, accumulate, add noise, divide by the batch size; no parameter update
        grads = {n: p.grad.detach().clone() for n, p in params}  # type: ignore[union-attr]
        wrapped._close()
        return grads

    def apply(
        self,
        update: dict[str, Tensor],
        *,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        rng: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """FedSGD: the DP-SGD gradient of the whole private batch replaces ``update`` (the plain gradient)."""
        return self.private_gradient(model, inputs, labels, rng=rng)

    def epsilon(self, *, steps: int, sample_rate: float) -> float:
        """ε spent by ``steps`` DP-SGD steps at ``sample_rate`` (δ = ``delta``), from opacus's RDP accountant."""
        if steps == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        from opacus.accountants import RDPAccountant

        accountant = RDPAccountant()
        accountant.history = [(self.noise_multiplier, float(sample_rate), int(steps))]
        with warnings.catch_warnings():
            # tiny noise multipliers put the optimum at the smallest RDP order: ε is huge either way
            warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha", category=UserWarning)
            return float(accountant.get_epsilon(delta=self.delta))
