"""FedAvg: the client runs E local epochs of mini-batch SGD and shares its weight delta (McMahan et al. 2017).

The same module holds the attacker's side of the protocol: `simulate_local_training`, a pure and differentiable
unrolling of the client's local training (the "simulation" of the TPAMI GIA survey, Guo et al. 2025, Table III).
Both sides draw their mini-batches from `local_batches`, so with the right hyper-parameters and shuffle seed the
simulation reproduces the client's delta exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedinvert.errors import ConfigError
from fedinvert.fl.fedsgd import GradientFunction, parameter_gradients
from fedinvert.observation import LocalTraining

LossFunction = Callable[[Mapping[str, Tensor], Tensor, Tensor], Tensor]

#: The weak simulation's guess (TPAMI GIA survey, Guo et al. 2025, "weak simulation": B = 8, E = 2, lr = 1e-3).
GUESSED_LOCAL_TRAINING = LocalTraining(epochs=2, batch_size=8, lr=1e-3, momentum=0.0, shuffle_seed=None)


def local_batches(n: int, local: LocalTraining) -> list[Tensor]:
    """The index tensors of the client's mini-batches, in training order, over all local epochs.

    Each epoch visits the ``n`` samples in a fresh random order drawn from one NumPy generator seeded with
    ``local.shuffle_seed`` (no shuffling when it is None) and cuts it into batches of ``local.batch_size``; the
    last batch of an epoch is smaller when ``batch_size`` does not divide ``n`` (as a DataLoader without
    ``drop_last``). NumPy rather than torch draws the orders, so the schedule can be computed inside
    `torch.func.vmap` (which refuses torch's random operations).

    Args:
        n: number of private samples (≥ 1).
        local: the local-training hyper-parameters.

    Returns:
        ``local.epochs · ⌈n / batch_size⌉`` int64 index tensors on the CPU.
    """
    if n < 1:
        raise ConfigError(f"local training needs at least one sample, got {n}")
    check_local_training(local)
    rng = None if local.shuffle_seed is None else np.random.default_rng(int(local.shuffle_seed))
    batches: list[Tensor] = []
    for _ in range(local.epochs):
        order = torch.arange(n) if rng is None else torch.from_numpy(rng.permutation(n).astype(np.int64))
        batches.extend(order[i : i + local.batch_size] for i in range(0, n, local.batch_size))
    return batches


def local_steps(n: int, local: LocalTraining) -> int:
    """Number of SGD steps a client with ``n`` samples takes: ``epochs · ⌈n / batch_size⌉``."""
    return local.epochs * math.ceil(n / local.batch_size)


def check_local_training(local: LocalTraining) -> None:
    """Raise ConfigError when a hyper-parameter is out of range."""
    if local.epochs < 1 or local.batch_size < 1:
        raise ConfigError(
            f"protocol.local_epochs and protocol.local_batch_size must be ≥ 1, got {local.epochs}, {local.batch_size}"
        )
    if not local.lr > 0:
        raise ConfigError(f"protocol.lr must be positive, got {local.lr}")
    if not 0 <= local.momentum < 1:
        raise ConfigError(f"protocol.momentum must lie in [0, 1), got {local.momentum}")


def model_loss(model: nn.Module, *, buffers: Mapping[str, Tensor] | None = None) -> LossFunction:
    """``loss(params, inputs, labels)``: mean cross-entropy of ``model`` run with ``params`` via `functional_call`.

    Parameters missing from ``params`` and the buffers (``buffers``, else the model's own) are taken from the
    model. A model in train mode with BatchNorm updates running buffers in place during `functional_call`;
    pass a model prepared with `torch.func.replace_all_batch_norm_modules_` to keep it pure.
    """
    named = {n: p.detach() for n, p in model.named_parameters()}
    fixed = dict(buffers) if buffers is not None else {n: b.detach() for n, b in model.named_buffers()}

    def loss(params: Mapping[str, Tensor], inputs: Tensor, labels: Tensor) -> Tensor:
        logits = torch.func.functional_call(model, {**named, **params, **fixed}, (inputs,))
        return F.cross_entropy(logits, labels)

    return loss


def simulate_local_training(
    loss_fn: LossFunction,
    params: Mapping[str, Tensor],
    inputs: Tensor,
    labels: Tensor,
    local: LocalTraining,
    *,
    batches: Sequence[Tensor] | None = None,
) -> dict[str, Tensor]:
    """The weight delta θ_after − θ_before of FedAvg local training, unrolled as a pure differentiable function.

    Runs ``local.epochs`` epochs of SGD (momentum ``local.momentum`` as `torch.optim.SGD`: ``v ← μ·v + g``,
    ``θ ← θ − η·v``, no dampening, no weight decay) over the mini-batches of `local_batches`. The inner
    gradients come from `torch.func.grad`, so the result is differentiable with respect to ``inputs`` (and
    soft ``labels``) under plain autograd, `torch.func.grad` and `vmap` alike (the attacker's "strong" and
    "weak" simulation, TPAMI GIA survey, Guo et al. 2025).

    Args:
        loss_fn: ``loss(params, inputs, labels) -> scalar`` (e.g. `model_loss`), mean over the batch.
        params: the global weights θ_before the client starts from, by parameter name.
        inputs: (n, C, H, W) the (dummy) private inputs in the victim's normalised space.
        labels: (n,) class indices or (n, K) soft labels.
        local: epochs, batch size, learning rate, momentum and shuffle seed.
        batches: ``local_batches(n, local)`` computed beforehand (keeps the schedule out of a compiled step).

    Returns:
        The delta per parameter name, same shapes as ``params``.
    """
    grad_fn = torch.func.grad(loss_fn)
    current = dict(params)
    velocity: dict[str, Tensor] | None = None
    for index in batches if batches is not None else local_batches(inputs.shape[0], local):
        index = index.to(inputs.device)
        grads = grad_fn(current, inputs[index], labels[index])
        if local.momentum:
            velocity = grads if velocity is None else {n: local.momentum * velocity[n] + grads[n] for n in grads}
            direction = velocity
        else:
            direction = grads
        current = {n: current[n] - local.lr * direction[n] for n in current}
    return {n: current[n] - params[n] for n in params}


class FedAvgClient:
    """A FedAvg client: E local epochs of mini-batch SGD on its private batch, sharing θ_after − θ_before.

    Cross-entropy with mean reduction per mini-batch; `torch.optim.SGD` as the optimiser. Only trainable
    parameters are part of the update (BatchNorm running buffers are not); training runs on a copy, so the
    server's model keeps the global weights and buffers. The client sets the model's mode (train or eval) on
    the model it is given, which is how the observation records it.

    Args:
        local_epochs: E, passes over the private batch (≥ 1; the survey's grid: 1, 2, 5).
        local_batch_size: b, samples per SGD step (≥ 1; the survey's grid: 1, 8, 16).
        lr: η, the local learning rate (> 0; survey: 0.01, weak guess 1e-3).
        momentum: μ in [0, 1) (0: plain SGD).
        mode: ``eval`` (BatchNorm uses running statistics; the usual GIA setting, and the config default) or
            ``train`` (batch statistics, as in real local training).
        shuffle_seed: seed of the per-epoch shuffling (`local_batches`); None keeps the batch's order. The
            runner derives one from the run's seed (``client`` stream) when it is not given.
    """

    kind = "weight_delta"

    def __init__(
        self,
        *,
        local_epochs: int = 1,
        local_batch_size: int = 8,
        lr: float = 1e-3,
        momentum: float = 0.0,
        mode: Literal["eval", "train"] = "eval",
        shuffle_seed: int | None = None,
    ) -> None:
        if mode not in ("eval", "train"):
            raise ConfigError(f"protocol.mode must be eval or train, got {mode!r}")
        self.local_epochs = int(local_epochs)
        self.local_batch_size = int(local_batch_size)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.mode = mode
        self.shuffle_seed = None if shuffle_seed is None else int(shuffle_seed)
        check_local_training(self.local_training())

    def local_training(self) -> LocalTraining:
        """The hyper-parameters as the `LocalTraining` a server that knows them would hold."""
        return LocalTraining(
            epochs=self.local_epochs,
            batch_size=self.local_batch_size,
            lr=self.lr,
            momentum=self.momentum,
            shuffle_seed=self.shuffle_seed,
        )

    def update(
        self, model: nn.Module, inputs: Tensor, labels: Tensor, *, gradient_fn: GradientFunction | None = None
    ) -> dict[str, Tensor]:
        """The weight delta for the private (normalised) ``inputs`` (n, C, H, W) and ``labels`` (n,).

        Args:
            gradient_fn: ``(model, inputs, labels) -> {name: gradient}`` for one mini-batch; the plain
                mean cross-entropy gradient by default (DP-SGD passes its clipped, noised one).
        """
        model.train(self.mode == "train")
        work = copy.deepcopy(model)
        compute = gradient_fn or parameter_gradients
        params = [(n, p) for n, p in work.named_parameters() if p.requires_grad]
        before = {n: p.detach().clone() for n, p in params}
        optimizer = torch.optim.SGD([p for _, p in params], lr=self.lr, momentum=self.momentum)
        for index in local_batches(inputs.shape[0], self.local_training()):
            grads = compute(work, inputs[index], labels[index])
            for n, p in params:
                p.grad = grads[n].to(p.dtype)
            optimizer.step()
        return {n: p.detach() - before[n] for n, p in params}
