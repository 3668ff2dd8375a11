"""Label inference from the shared update of the last linear layer.

For cross-entropy with mean reduction and softmax, the last layer's gradients are
``∇b_c = (1/B) Σ_i (p_ic − [y_i = c])`` and ``∇W_c = (1/B) Σ_i (p_ic − [y_i = c]) h_i``, with ``h_i`` the
penultimate features. Classes in the batch therefore push their bias gradient (and, for non-negative
features, their weight-row sums) below zero.

Methods (registry `LABEL_METHODS`):
  * ``idlg`` — batch of one: the single negative entry (Zhao et al. 2020, iDLG).
  * ``row_sum`` — unique labels: the B most negative row sums of ∇W (used by GIFD and breaching's iDLG).
  * ``row_min`` — unique labels: the B smallest row minima of ∇W (Yin et al. 2021, GradInversion).
  * ``count_aware`` — repeated labels: estimate the count of each class as ``B·(p̄_c − ∇b_c)`` (or the
    row-sum analogue without bias), with ``p̄`` the batch's mean softmax, first estimated on random inputs
    and then refined from the images' own features read off ∇W; every class with a negative entry gets at
    least one — and, since ``p̄_c > 0``, at least ``⌈−B·∇b_c⌉`` — the rest are filled by largest remainder.
  * ``known`` — the labels the threat model grants.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from fedinvert.errors import ConfigError, MissingCapabilityError
from fedinvert.observation import Observation
from fedinvert.registry import Registry

LabelMethod = Callable[[Observation, int], Tensor]
LABEL_METHODS: Registry[Tensor] = Registry("label inference method")


def _classifier(obs: Observation) -> tuple[str, nn.Linear]:
    """Name and module of the model's last nn.Linear layer (the classifier)."""
    linears = [(n, m) for n, m in obs.model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("label inference needs a model ending in an nn.Linear layer")
    return linears[-1]


def _last_layer(obs: Observation) -> tuple[Tensor, Tensor | None]:
    """The observed update of the last linear layer: weight (K, D) and bias (K,) or None."""
    name, layer = _classifier(obs)
    prefix = f"{name}." if name else ""
    if f"{prefix}weight" not in obs.update:
        # a client that shares only some parameters (LoRA adapters, a frozen head) reveals no label counts
        raise MissingCapabilityError(
            f"label inference reads the classifier's update, and the update holds none for {prefix}weight"
            f" (the client shares only {len(obs.update)} tensors, e.g. {next(iter(obs.update), 'none')!r}):"
            " set threat.labels=known, or share the head (model.lora_head=true for a LoRA victim)"
        )
    weight = obs.update[f"{prefix}weight"].detach().float()
    bias = obs.update.get(f"{prefix}bias") if layer.bias is not None else None
    sign = -1.0 if obs.kind == "weight_delta" else 1.0  # a weight delta is −η·(gradient)
    return sign * weight, (sign * bias.detach().float() if bias is not None else None)


def _signal(obs: Observation) -> Tensor:
    """Per-class evidence, most negative for classes in the batch: the bias update, else row sums."""
    weight, bias = _last_layer(obs)
    return bias if bias is not None else weight.sum(dim=1)


@LABEL_METHODS.register("idlg")
def idlg(obs: Observation, batch_size: int) -> Tensor:
    """iDLG (batch of one): the class whose last-layer update is negative."""
    if batch_size != 1:
        raise ConfigError(f"label method 'idlg' needs batch size 1, got {batch_size}; use count_aware")
    return _signal(obs).argmin().view(1)


@LABEL_METHODS.register("row_sum")
def row_sum(obs: Observation, batch_size: int) -> Tensor:
    """Unique labels: the ``batch_size`` most negative row sums of the last weight update, sorted."""
    weight, _ = _last_layer(obs)
    _check_unique(batch_size, weight.shape[0])
    return torch.sort(torch.argsort(weight.sum(dim=1))[:batch_size]).values


@LABEL_METHODS.register("row_min")
def row_min(obs: Observation, batch_size: int) -> Tensor:
    """Unique labels: the ``batch_size`` smallest row minima of the last weight update (Yin et al.)."""
    weight, _ = _last_layer(obs)
    _check_unique(batch_size, weight.shape[0])
    return torch.sort(torch.argsort(weight.min(dim=1).values)[:batch_size]).values


def _check_unique(batch_size: int, num_classes: int) -> None:
    if batch_size > num_classes:
        raise ConfigError(
            f"unique-label inference cannot find {batch_size} labels among {num_classes} classes; use count_aware"
        )


@torch.no_grad()
def dummy_statistics(obs: Observation, *, samples: int = 64, seed: int = 0) -> tuple[Tensor, Tensor]:
    """p̄ and s̄: the model's mean softmax and mean penultimate-feature sum over random inputs in the image box.

    They stand in for the (unknown) private batch's values in the count estimate.
    """
    model = obs.model
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    features: list[Tensor] = []
    handle = linears[-1].register_forward_hook(lambda _m, inp, _o: features.append(inp[0].detach()))
    was_training = model.training
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand((samples, *obs.image_shape), generator=gen).to(device)
    try:
        model.eval()
        probs = torch.softmax(model(obs.normalize(images)).float(), dim=-1)
    finally:
        model.train(was_training)
        handle.remove()
    return probs.mean(0).cpu(), features[0].flatten(1).sum(1).mean().cpu()


def _aggregated_clients(obs: Observation) -> int:
    """K when the observation declares secure aggregation (the sum of K clients' updates), else 1."""
    from fedinvert.defenses import declared_clients

    return declared_clients(obs.defenses)


def _delta_scale(obs: Observation, batch_size: int, signal: Tensor, p_bar: Tensor) -> Tensor:
    """The factor α with −Δ ≈ α·(mean gradient) for a weight delta (FedAvg); count estimates need gradients.

    With known local training, α = lr × local steps (the mean of equal-size mini-batch gradients over an epoch
    is the full-batch gradient), times K for the sum of K securely aggregated clients of B/K samples each.
    Otherwise α is estimated from the negative entries: when every class in the
    batch has a negative entry, ``Σ_{c: s_c < 0} |s_c| = α·(1 − Σ_{c: s_c < 0} p̄_c)``.
    """
    local = obs.local_training
    if local is not None:
        clients = _aggregated_clients(obs)
        steps = local.epochs * math.ceil(batch_size // clients / local.batch_size)
        return torch.tensor(local.lr * steps * clients)
    negative = signal < 0
    return signal[negative].abs().sum() / (1 - p_bar[negative].sum()).clamp(min=1e-3)


def _allocate(signal: Tensor, estimate: Tensor, batch_size: int, *, exact: bool) -> Tensor:
    """Counts per class (K,) summing to B: one for each negative entry (most negative first), at least
    ``⌈−B·signal_c⌉`` when ``signal`` is the exact bias gradient, the rest by largest remainder of ``estimate``.
    """
    counts = torch.zeros(signal.shape[0], dtype=torch.long)
    present = torch.nonzero(signal < 0).flatten()
    present = present[torch.argsort(signal[present])][:batch_size]
    counts[present] = 1
    if exact:
        # the tolerance keeps p̄_c ≈ 0 with an exact −B·∇b_c = n_c from rounding up to n_c + 1
        lower = torch.ceil(-batch_size * signal - 1e-3).long()
        counts[present] = torch.maximum(counts[present], lower[present])
        while int(counts.sum()) > batch_size:  # only when α or p̄ was badly estimated
            counts[int(torch.argmax(counts))] -= 1
    residual = (estimate - counts.float()).clamp(min=0)
    for _ in range(batch_size - int(counts.sum())):
        c = int(torch.argmax(residual))
        counts[c] += 1
        residual[c] -= 1
    return counts


def _refine_counts(
    obs: Observation,
    counts: Tensor,
    weight: Tensor,
    bias: Tensor,
    p_bar: Tensor,
    batch_size: int,
    *,
    rounds: int = 3,
    purity: float = 0.5,
) -> Tensor:
    """Re-estimate p̄ from the batch's own features and re-allocate the counts (bias gradients only).

    For a class c with n_c images, ``−B·∇W_c / n_c = h̄_c − (1/n_c) Σ_i p_ic h_i``: when the class's images
    dominate their row (``B·p̄_c = n_c + B·∇b_c`` below ``purity·n_c``), this is close to their mean feature
    h̄_c, and the classifier's softmax at h̄_c stands in for those images' probabilities. Only the remaining
    images keep the random-input estimate. On DLG's sigmoid LeNet (peaked softmax) this lifts the multiset
    accuracy at B = 8–16 from about 0.96–0.97 to 0.98–0.99 (held-out seeds, Fashion-MNIST).
    """
    _, layer = _classifier(obs)
    w = layer.weight.detach().float().cpu()
    b = layer.bias.detach().float().cpu() if layer.bias is not None else torch.zeros(w.shape[0])
    for _ in range(rounds):
        mass = counts.float() + batch_size * bias  # B·p̄_c for the classes in the batch
        pure = (counts > 0) & (mass < purity * counts.float())
        if not pure.any():
            break
        features = -batch_size * weight[pure] / counts[pure].float().unsqueeze(1)
        probs = torch.softmax(features @ w.T + b, dim=-1)
        seen = (counts[pure].float().unsqueeze(1) * probs).sum(0)
        p_new = (seen + (batch_size - int(counts[pure].sum())) * p_bar) / batch_size
        new = _allocate(bias, batch_size * (p_new - bias), batch_size, exact=True)
        if torch.equal(new, counts):
            break
        counts = new
    return counts


@LABEL_METHODS.register("count_aware")
def count_aware(obs: Observation, batch_size: int) -> Tensor:
    """Repeated labels: estimated counts per class from the last layer's update (sorted labels).

    With a bias, ``∇b_c = p̄_c − n_c/B`` exactly (``p̄`` the batch's mean softmax), so the counts are
    ``B·(p̄_c − ∇b_c)`` with ``p̄`` estimated on random inputs, then refined from the features the rows of
    ∇W reveal (`_refine_counts`). As ``p̄_c > 0``, a class needs at least ``⌈−B·∇b_c⌉`` images: this exact
    lower bound fixes most errors of the estimate on peaked (sigmoid, U(−0.5, 0.5)) victims. Without a bias
    the row sums, divided by the mean feature sum, stand in for ∇b (no lower bound, no refinement). A weight
    delta is first turned into a gradient (`_delta_scale`); a declared secure aggregation of K equal clients
    (a sum of K means) is divided by K.
    """
    weight, bias = _last_layer(obs)
    weight = weight.cpu()
    num_classes = weight.shape[0]
    p_bar, s_bar = dummy_statistics(obs)
    # Σ_j ∇W_cj ≈ s̄ · (p̄_c − n_c / B) stands in for the bias when there is none
    signal = bias.cpu() if bias is not None else weight.sum(dim=1) / s_bar.clamp(min=1e-12)
    if obs.kind == "weight_delta":
        scale = _delta_scale(obs, batch_size, signal, p_bar)
        signal, weight = signal / scale, weight / scale
    elif (clients := _aggregated_clients(obs)) > 1:  # a sum of K means over B/K samples = K × the mean over B
        signal, weight = signal / clients, weight / clients
    counts = _allocate(signal, batch_size * (p_bar - signal), batch_size, exact=bias is not None)
    if bias is not None:
        counts = _refine_counts(obs, counts, weight, signal, p_bar, batch_size)
    return torch.repeat_interleave(torch.arange(num_classes), counts)


def infer_labels(obs: Observation, *, method: str = "auto", batch_size: int | None = None) -> Tensor:
    """Labels for the attack: ``auto`` = known labels if granted, iDLG at B = 1, count-aware at B > 1."""
    size = batch_size or obs.batch_size
    if size is None:
        raise ConfigError("label inference needs the batch size (threat.batch_size=known or attack.batch_size)")
    if method == "known" or (method == "auto" and obs.labels is not None):
        if obs.labels is None:
            raise MissingCapabilityError(
                "attack.labels=known needs threat.labels=known: the observation holds no labels"
            )
        return obs.labels.detach().cpu().long()
    if method == "auto":
        method = "idlg" if size == 1 else "count_aware"
    return LABEL_METHODS.get(method)(obs, size)  # type: ignore[call-arg]
