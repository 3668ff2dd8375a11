"""Gradient-matching distances, image regularisers and the pure gradient-matching step.

Every distance takes two equally long sequences of tensors (the dummy update and the observed one, in the
model's parameter order) and returns a scalar. The step (`GradientMatcher`) is written as a pure function of
(parameters, dummy input) through `torch.func.functional_call`, so one definition runs eagerly, under `vmap`
over restarts and under `torch.compile` (DESIGN §11); plain autograd stays as the fallback.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedinvert.attacks.affine_norm import AffineBatchNorm as _AffineBatchNorm  # noqa: F401  (re-exported)
from fedinvert.attacks.affine_norm import affine_batch_norm_ as _affine_batch_norm_
from fedinvert.attacks.compilation import CompileClock
from fedinvert.attacks.grouped import GroupedVictim, GroupingRefused
from fedinvert.errors import ConfigError, MissingCapabilityError
from fedinvert.fl.aggregation import split_clients
from fedinvert.fl.fedavg import GUESSED_LOCAL_TRAINING, local_batches, simulate_local_training
from fedinvert.observation import LocalTraining, Observation
from fedinvert.registry import Registry

log = logging.getLogger(__name__)

Distance = Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor]
DISTANCES: Registry[Tensor] = Registry("gradient distance")

_EPS = 1e-12


Reduce = Callable[[Tensor], Tensor]


def _per_chain(t: Tensor) -> Tensor:
    """Sum over all but the leading chain dimension: (R, ...) → (R,)."""
    return t.flatten(1).sum(1)


@DISTANCES.register("l2")
def l2_distance(dummy: Sequence[Tensor], target: Sequence[Tensor]) -> Tensor:
    """Squared Euclidean distance summed over all tensors (DLG, Zhu et al. 2019)."""
    return _l2(dummy, target, torch.sum)


def _l2(dummy: Sequence[Tensor], target: Sequence[Tensor], reduce: Reduce) -> Tensor:
    return sum(reduce((d - t) ** 2) for d, t in zip(dummy, target, strict=True))  # type: ignore[return-value]


@DISTANCES.register("cosine")
def cosine_distance(dummy: Sequence[Tensor], target: Sequence[Tensor]) -> Tensor:
    """1 − one cosine similarity over all tensors jointly (Inverting Gradients, Geiping et al. 2020)."""
    return _cosine(dummy, target, sum((t * t).sum() for t in target))  # type: ignore[arg-type]


def _cosine(dummy: Sequence[Tensor], target: Sequence[Tensor], target_sq: Tensor, reduce: Reduce = torch.sum) -> Tensor:
    """1 − cosine of ``dummy`` and ``target`` given the target's squared norm; ``reduce`` sums each product
    (whole tensors, or `_per_chain`)."""
    dot = sum(reduce(d * t) for d, t in zip(dummy, target, strict=True))
    dn = sum(reduce(d * d) for d in dummy)
    return 1 - dot / (torch.sqrt(dn) * torch.sqrt(target_sq) + _EPS)  # type: ignore[operator, arg-type]


def restart_distance(name: str, dummy: Sequence[Tensor], target: Sequence[Tensor]) -> Tensor:
    """Distance ``name`` (``cosine`` or ``l2``) of each chain's update: ``dummy`` tensors have a leading chain
    dimension R; ``target`` tensors have it too (each chain its own observation) or not (one target for all
    restarts). Returns (R,), each entry the distance `DISTANCES` gives."""
    if name == "l2":
        return _l2(dummy, target, _per_chain)
    target_sq = sum(_per_chain(t * t) if t.dim() == d.dim() else (t * t).sum()
                    for d, t in zip(dummy, target, strict=True))
    return _cosine(dummy, target, target_sq, _per_chain)  # type: ignore[arg-type]


def grouped_update(
    victim: GroupedVictim, params: Mapping[str, Tensor], names: Sequence[str], inputs: Tensor, labels: Sequence[Tensor]
) -> list[Tensor]:
    """Each chain's parameter gradient ∇θ CE, in one plain-autograd pass through the grouped victim.

    ``params``: every parameter of the victim with a leading chain dimension R (those in ``names`` leaves that
    require grad); ``inputs``: the chains' batches stacked, (R·B, ...); ``labels``: each chain's labels. Returns
    the gradients w.r.t. ``params[name]`` for ``names``, each (R, ...), differentiable (create_graph).
    """
    chains = len(labels)
    logits = victim.logits(params, inputs)
    if all(y.shape == labels[0].shape for y in labels):  # each chain's mean over B rows, summed: one call
        ce = chains * soft_cross_entropy(logits, torch.cat(list(labels)))
    else:
        ce = torch.stack([soft_cross_entropy(part, y)
                          for part, y in zip(logits.chunk(chains), labels, strict=True)]).sum()
    return list(torch.autograd.grad(ce, [params[n] for n in names], create_graph=True))


@DISTANCES.register("layer_cosine")
def layer_cosine_distance(dummy: Sequence[Tensor], target: Sequence[Tensor]) -> Tensor:
    """Mean over tensors of (1 − per-tensor cosine similarity)."""
    terms = [
        1 - (d * t).sum() / (d.norm() * t.norm() + _EPS) for d, t in zip(dummy, target, strict=True)
    ]
    return torch.stack(terms).mean()


def magnitude_masks(target: Sequence[Tensor], prune_ratio: float) -> list[Tensor]:
    """Per tensor, 1 where |target| lies in the top (1 − prune_ratio) fraction, else 0 (GIAS's `sim_cmprR`)."""
    if not 0.0 <= prune_ratio < 1.0:
        raise ConfigError(f"prune_ratio must lie in [0, 1), got {prune_ratio}")
    masks = []
    for t in target:
        flat = t.detach().abs().flatten()
        keep = max(1, round(flat.numel() * (1 - prune_ratio)))
        threshold = torch.topk(flat, keep).values[-1]
        masks.append((t.detach().abs() >= threshold).to(t.dtype))
    return masks


class MaskedCosineDistance:
    """Pruning-aware global cosine: compare only entries where the observed update is among the largest.

    With ``prune_ratio=0`` this equals `cosine_distance`. The mask is computed once from the observed update.
    """

    def __init__(self, target: Sequence[Tensor], *, prune_ratio: float = 0.0) -> None:
        self.masks = magnitude_masks(target, prune_ratio)

    def __call__(self, dummy: Sequence[Tensor], target: Sequence[Tensor]) -> Tensor:
        return cosine_distance(
            [d * m for d, m in zip(dummy, self.masks, strict=True)],
            [t * m for t, m in zip(target, self.masks, strict=True)],
        )


class TargetCosineDistance:
    """`cosine_distance` with the target's squared norm computed once: the same numbers, bit for bit, and one
    reduction over the observed update less per step (it is constant through an attack)."""

    def __init__(self, target: Sequence[Tensor]) -> None:
        self.target = target  # the very sequence object the matcher passes back at every step
        self.target_sq = sum((t * t).sum() for t in target)

    def __call__(self, dummy: Sequence[Tensor], target: Sequence[Tensor]) -> Tensor:
        if target is not self.target:
            return cosine_distance(dummy, target)
        return _cosine(dummy, target, self.target_sq)  # type: ignore[arg-type]


def build_distance(name: str, target: Sequence[Tensor], *, prune_ratio: float = 0.0) -> Distance:
    """Resolve a distance name; ``masked_cosine`` needs the observed update to build its mask, ``cosine``
    precomputes the target's norm (`TargetCosineDistance`)."""
    if name == "masked_cosine":
        return MaskedCosineDistance(target, prune_ratio=prune_ratio)
    if name == "cosine":
        return TargetCosineDistance(target)  # type: ignore[return-value]
    return DISTANCES.get(name)  # type: ignore[return-value]


DISTANCES.add("masked_cosine", MaskedCosineDistance)  # type: ignore[arg-type]


def total_variation(x: Tensor, *, chains: bool = False) -> Tensor:
    """Anisotropic total variation: mean |dx| + mean |dy| of a (B, C, H, W) tensor; with ``chains``, of each
    chain of an (R, B, C, H, W) tensor: (R,)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs()
    if chains:
        return dx.flatten(1).mean(1) + dy.flatten(1).mean(1)
    return dx.mean() + dy.mean()


def image_norm(x: Tensor, *, chains: bool = False) -> Tensor:
    """‖x‖₂ divided by the number of pixels per channel (GIFD's 1e-6·‖x‖₂/H·W term); with ``chains``, of each
    chain of an (R, B, C, H, W) tensor: (R,)."""
    norm = x.flatten(1).norm(dim=1) if chains else x.norm()
    return norm / (x.shape[-1] * x.shape[-2])


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy, mean reduction; ``target`` is class indices (B,) or soft labels/logits (B, K).

    Soft targets are given as unnormalised logits (DLG optimises them) and softmaxed here.
    """
    if target.dtype in (torch.int64, torch.int32):
        return F.cross_entropy(logits, target)
    return -(F.softmax(target, dim=-1) * F.log_softmax(logits, dim=-1)).sum(-1).mean()


class GradientMatcher:
    """The gradient-matching objective of one observation, as a step usable by every attack.

    ``render(*variables) -> (inputs, labels)`` maps the attack's optimisation variables (dummy pixels, a GAN
    latent, soft labels, ...) to the victim's normalised input and the labels for the loss.
    ``regularizer(inputs, variables)`` adds prior terms to the loss (never to the distance used to pick the
    best result); it sees the rendered input and the tuple of one restart's variables, so a term on a latent,
    or on a constant the attack passes as an extra variable (GradInversion's group consensus), needs no state
    outside the pure objective. Gradients with respect to such a constant are returned and may be ignored.

    ``step(variables)`` takes every variable with a leading restart dimension R and returns
    ``(grads, loss[R], distance[R])``. In functional mode it runs ``vmap(grad_and_value(objective))`` over
    restarts, optionally under `torch.compile` (with ``loop_restarts``, the compiled single chain once per
    restart instead); in eager mode it loops over restarts with plain autograd, or, with ``grouped_restarts``,
    runs them as groups of one victim (`fedinvert.attacks.grouped`): one plain-autograd pass for all
    restarts. A grouped step is checked against the looped one on its first call; a victim or setting it cannot
    serve (``grouped_refusal`` says why) runs looped.

    The observed model is copied, so the attack never changes its weights or BatchNorm buffers; a model in
    train mode keeps using batch statistics (as the client did).

    FedAvg (``obs.kind == "weight_delta"``, TPAMI GIA survey, Guo et al. 2025, Table III), by ``fedavg``:
    ``strong`` unrolls the client's local training with ``obs.local_training`` (`simulate_local_training`)
    and compares dummy and observed deltas; ``weak`` unrolls it with the survey's guess (local batch 8,
    2 epochs, lr 1e-3, no shuffling); ``none`` treats the delta as one gradient step and compares the dummy
    gradient with ``−Δ/η`` (η from ``obs.local_training``, else 1e-3) — for the cosine distances η does
    not matter, for ``l2`` it only rescales the distance. For gradient observations ``fedavg`` is ignored.

    ``holdout`` > 0 leaves a fixed random share of the update's coordinates (drawn once from ``holdout_seed``)
    out of the optimised distance: ``step`` and `distance` never read them, and `heldout_distance` scores a
    candidate on them alone — validation data for choosing among candidates (GIFD's ``selection="held_out"``).

    ``adaptive=True`` (DESIGN §4, adaptive attacker) applies the deterministic part of every defence declared
    in ``obs.defenses`` (clipping, pruning mask, Soteria mask, quantisation) to the dummy update, in the
    declared order (`fedinvert.defenses.replay_transform`); noise is never replayed. With a declared
    ``secure_aggregation`` of K clients the dummy batch is cut into K equal chunks and the dummy update is the
    sum of their K updates, as the server received it. Both replays act in the observed update's space (for
    ``fedavg="none"`` on the pseudo-delta ``−η·g``). ``update_transform`` is applied after them.
    """

    def __init__(
        self,
        obs: Observation,
        *,
        distance: str = "cosine",
        prune_ratio: float = 0.0,
        render: Callable[..., tuple[Tensor, Tensor]],
        regularizer: Callable[[Tensor, tuple[Tensor, ...]], Tensor] | None = None,
        update_transform: Callable[[list[Tensor]], list[Tensor]] | None = None,
        adaptive: bool = False,
        fedavg: str = "strong",
        functional: bool = False,
        compile: bool = False,
        holdout: float = 0.0,
        holdout_seed: int = 0,
        loop_restarts: bool = False,
        grouped_restarts: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        if not 0.0 <= holdout < 1.0:
            raise ValueError(f"holdout must lie in [0, 1), got {holdout}")
        self.device = torch.device(device)
        model = copy.deepcopy(obs.model).to(self.device)
        for p in model.parameters():
            p.requires_grad_(False)
        if model.training:
            # Batch statistics without touching running buffers: what the client computed, and vmap-safe.
            torch.func.replace_all_batch_norm_modules_(model)
        elif functional:
            # eval-mode BatchNorm has no vmap batching rule (a slow per-sample fallback); its affine form does
            _affine_batch_norm_(model)
        self.model = model
        self.names = obs.parameter_names
        named = dict(model.named_parameters())
        self.params = {n: named[n].detach() for n in self.names}
        # eager steps differentiate w.r.t. the model's own observed parameters, the module called as it is (no
        # functional_call re-binding per step); the functional path passes the detached ``params`` in instead
        for name in self.names:
            named[name].requires_grad_(True)
        self._leaf_params = {name: named[name] for name in self.names}
        self.frozen = {n: p.detach() for n, p in named.items() if n not in self.params}
        self.buffers = {n: b.detach() for n, b in model.named_buffers()}
        observed = [t.detach().to(self.device, torch.float32) for t in obs.update_list()]
        self.local, self.step_size = _fedavg_simulation(obs, fedavg)
        self._batches: dict[int, list[Tensor]] = {}  # the simulation's mini-batch schedule per client size
        # fedavg="none": the dummy gradient g is compared with −Δ/η
        self.target = observed if self.step_size is None else [-t / self.step_size for t in observed]
        self.replay: Callable[[list[Tensor]], list[Tensor]] | None = None
        self.clients = 1
        if adaptive:
            from fedinvert.defenses import declared_clients, replay_transform

            self.replay = replay_transform(obs.defenses, names=self.names, observed=observed)
            self.clients = declared_clients(obs.defenses)
            if not obs.defenses:
                log.warning("attack.adaptive=true, but the observation declares no defences: nothing to replay")
        if self.local is not None and obs.batch_size:  # the schedule outside any (compiled, vmapped) step
            n = max(1, obs.batch_size // self.clients)
            self._batches[n] = [i.to(self.device) for i in local_batches(n, self.local)]
        # the held-out coordinates: zeroed in both updates, so no distance reads them (cosine and l2 alike)
        self.kept: list[Tensor] | None = None
        self.heldout_fn: Distance | None = None
        self._held_target: list[Tensor] = []
        if holdout > 0:
            draw = torch.Generator().manual_seed(holdout_seed)
            held = [(torch.rand(t.shape, generator=draw) < holdout).to(self.device) for t in self.target]
            self.kept = [(~h).to(torch.float32) for h in held]
            self._held_target = [t * h.to(torch.float32) for t, h in zip(self.target, held, strict=True)]
            self.target = [t * k for t, k in zip(self.target, self.kept, strict=True)]
            self.heldout_fn = build_distance(distance, self._held_target, prune_ratio=prune_ratio)
        self.distance_fn = build_distance(distance, self.target, prune_ratio=prune_ratio)
        self.distance_name = distance if prune_ratio == 0 else f"{distance} (pruned)"
        self.render = render
        self.regularizer = regularizer
        self.update_transform = update_transform
        self.functional = functional
        self.loop_restarts = loop_restarts  # functional mode: one (compiled) chain called per restart, no vmap
        self.compiled = functional and compile
        # what compiling costs and what a compiled step takes (`compilation.choose` gives it a record key)
        self.clock = CompileClock(self.device) if self.compiled else None
        self.evaluations = 0
        self._step_fn: Callable[..., Any] | None = None
        if functional:
            fn = torch.func.grad_and_value(self._objective, argnums=0, has_aux=True)
            batched = torch.func.vmap(fn)
            self._single_fn = self.clock.compile(fn) if self.clock else fn
            self._step_fn = self.clock.compile(batched) if self.clock else batched
        self._grouped: GroupedVictim | None = None
        self._grouped_checked = False
        self.grouped_refusal: str | None = None
        if grouped_restarts and not functional:
            self._group_restarts()

    def _group_restarts(self) -> None:
        """Build the grouped victim, or say in ``grouped_refusal`` why the restarts run looped."""
        if self.distance_name not in BATCHED_DISTANCES:
            self.grouped_refusal = f"the {self.distance_name} distance has no per-restart form"
        elif self.local is not None or self.replay is not None or self.clients > 1:
            self.grouped_refusal = "FedAvg unrolling and replayed defences run restarts looped"
        elif self.update_transform is not None:
            self.grouped_refusal = "an attack's update transform runs restarts looped"
        else:
            try:
                self._grouped = GroupedVictim(self.model)
            except GroupingRefused as refused:
                self.grouped_refusal = str(refused)
        if self.grouped_refusal:
            log.info("restarts run looped, not grouped: %s", self.grouped_refusal)

    @property
    def compile_seconds(self) -> float:
        """Seconds compiling this step cost (torch.compile's set-up and the first call); 0 uncompiled."""
        return self.clock.seconds if self.clock else 0.0

    # -- pure pieces -----------------------------------------------------------------------------
    def _loss(self, params: Mapping[str, Tensor], inputs: Tensor, labels: Tensor) -> Tensor:
        logits = torch.func.functional_call(self.model, {**params, **self.frozen, **self.buffers}, (inputs,))
        return soft_cross_entropy(logits, labels)

    def _client_update(self, inputs: Tensor, labels: Tensor, *, create_graph: bool) -> list[Tensor]:
        """One client's dummy update in parameter order: ∇θ CE, or the simulated FedAvg delta."""
        if self.local is not None:
            size = inputs.shape[0]
            if size not in self._batches:
                self._batches[size] = [i.to(self.device) for i in local_batches(size, self.local)]
            delta = simulate_local_training(
                self._loss, self.params, inputs, labels, self.local, batches=self._batches[size]
            )
            return [delta[n] for n in self.names]
        if self.functional:
            grads = torch.func.grad(self._loss)(self.params, inputs, labels)
            return [grads[n] for n in self.names]
        loss = soft_cross_entropy(self.model(inputs), labels)
        return list(torch.autograd.grad(loss, [self._leaf_params[n] for n in self.names], create_graph=create_graph))

    def parameter_gradient(self, inputs: Tensor, labels: Tensor, *, create_graph: bool = True) -> list[Tensor]:
        """The dummy update, comparable with ``self.target``, in parameter order.

        ∇θ CE(f_θ(inputs), labels) for gradient observations and ``fedavg="none"``; the simulated delta for
        ``fedavg="strong"|"weak"``; summed over K chunks and passed through the declared defences' replay when
        adaptive; then ``update_transform``.
        """
        if self.clients > 1:
            chunks = split_clients(inputs, labels, self.clients)
            parts = [self._client_update(x, y, create_graph=create_graph) for x, y in chunks]
            out = [torch.stack(ts).sum(0) for ts in zip(*parts, strict=True)]
        else:
            out = self._client_update(inputs, labels, create_graph=create_graph)
        if self.replay is not None:
            if self.step_size is None:
                out = self.replay(out)
            else:  # the defences acted on the delta: replay on the pseudo-delta −η·g, then back to g
                out = [u / -self.step_size for u in self.replay([-self.step_size * g for g in out])]
        if self.update_transform is not None:
            out = self.update_transform(out)
        return out

    def _kept(self, update: list[Tensor]) -> list[Tensor]:
        return update if self.kept is None else [u * k for u, k in zip(update, self.kept, strict=True)]

    def _objective(self, variables: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        inputs, labels = self.render(*variables)
        dist = self.distance_fn(self._kept(self.parameter_gradient(inputs, labels)), self.target)
        loss = dist if self.regularizer is None else dist + self.regularizer(inputs, variables)
        return loss, dist

    # -- the step ------------------------------------------------------------------------------------
    def step(self, variables: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        """Gradients of the loss w.r.t. each variable, the loss and the pure distance, all per restart."""
        variables = tuple(v.detach() for v in variables)
        restarts = variables[0].shape[0]
        self.evaluations += restarts
        if self._step_fn is not None:
            grads, loss, dist = self.clock.call(lambda: self._functional_step(variables)) if self.clock else (
                self._functional_step(variables)
            )
            return grads, loss.detach(), dist.detach()
        if self._grouped is not None and restarts > 1:
            return self._grouped_step(variables)
        return self._looped_step(variables)

    def _looped_step(self, variables: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        """Plain autograd, one restart after another."""
        restarts = variables[0].shape[0]
        grads_r, losses, dists = [], [], []
        for r in range(restarts):
            leaves = tuple(v[r].detach().requires_grad_(True) for v in variables)
            loss, dist = self._objective(leaves)
            grads_r.append(torch.autograd.grad(loss, leaves))
            losses.append(loss.detach())
            dists.append(dist.detach())
        grads = tuple(torch.stack([g[i] for g in grads_r]) for i in range(len(variables)))
        return grads, torch.stack(losses), torch.stack(dists)

    def _grouped_step(self, variables: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        """All restarts in one plain-autograd pass through the grouped victim. The first call is checked
        against the looped step: a disagreement, or an error the victim's ``forward`` raises for the stacked
        batch, ends grouping for this matcher (the looped result kept)."""
        if self._grouped_checked:
            return self._grouped_pass(variables)
        self._grouped_checked = True
        looped = self._looped_step(variables)
        try:
            result = self._grouped_pass(variables)
        except (RuntimeError, ValueError, IndexError, TypeError) as err:  # what torch raises for a bad shape
            self.grouped_refusal = f"its first step failed ({type(err).__name__}: {str(err).splitlines()[0]})"
        else:
            if _agree(result, looped):
                return result
            self.grouped_refusal = "its first step disagreed with the looped step"
        self._grouped = None
        log.warning("restarts run looped: the grouped victim's %s", self.grouped_refusal.removeprefix("its "))
        return looped

    def _grouped_pass(self, variables: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        assert self._grouped is not None
        restarts = variables[0].shape[0]
        leaves = tuple(v.requires_grad_(True) for v in variables)
        chains = list(zip(*(v.unbind(0) for v in leaves), strict=True))  # one op a variable (a stack backward)
        rendered = [self.render(*chain) for chain in chains]
        inputs = torch.stack([x for x, _ in rendered])  # (R, B, ...)
        copies = {name: p.expand(restarts, *p.shape).requires_grad_(name in self.params)
                  for name, p in {**self.params, **self.frozen}.items()}
        update = grouped_update(self._grouped, copies, self.names, inputs.flatten(0, 1), [y for _, y in rendered])
        return _grouped_result(restart_distance(self.distance_name, self._kept(update), self.target),
                               chain_penalties(self.regularizer, inputs, chains), leaves)

    def _functional_step(self, variables: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        """The functional step of all restarts: vmapped, or one chain at a time (one restart, ``loop_restarts``)."""
        assert self._step_fn is not None
        if len(variables[0]) == 1 or self.loop_restarts:  # one chain at a time: no vmap
            chains = [self._single_fn(tuple(v[r] for v in variables)) for r in range(len(variables[0]))]
            grads = tuple(torch.stack(gs) for gs in zip(*(c[0] for c in chains), strict=True))
            return grads, torch.stack([c[1][0] for c in chains]), torch.stack([c[1][1] for c in chains])
        grads, (loss, dist) = self._step_fn(variables)
        return tuple(grads), loss, dist

    @torch.no_grad()
    def distance(self, inputs: Tensor, labels: Tensor) -> float:
        """Pure gradient distance of one candidate batch (no regularisers): the selection criterion."""
        with torch.enable_grad():
            saved = self.functional
            self.functional = False
            try:
                grads = self.parameter_gradient(inputs.detach(), labels.detach(), create_graph=False)
            finally:
                self.functional = saved
        self.evaluations += 1
        return float(self.distance_fn(self._kept([g.detach() for g in grads]), self.target))

    @torch.no_grad()
    def heldout_distance(self, inputs: Tensor, labels: Tensor) -> float:
        """Gradient distance of one candidate batch on the held-out coordinates alone (needs ``holdout`` > 0)."""
        if self.heldout_fn is None or self.kept is None:
            raise ValueError("heldout_distance needs a matcher built with holdout > 0")
        with torch.enable_grad():
            saved = self.functional
            self.functional = False
            try:
                grads = self.parameter_gradient(inputs.detach(), labels.detach(), create_graph=False)
            finally:
                self.functional = saved
        self.evaluations += 1
        held = [g.detach() * (1 - k) for g, k in zip(grads, self.kept, strict=True)]
        return float(self.heldout_fn(held, self._held_target))


class ChainRegularizer:
    """A regulariser that can also score R chains' inputs at once: `rows` maps (R, B, ...) inputs to (R,)
    penalties, row r equal (up to float rounding) to calling it on chain r alone. Grouped and batched steps
    call `rows` once instead of the regulariser once per chain (`chain_penalties`)."""

    def __call__(self, inputs: Tensor, variables: tuple[Tensor, ...] = ()) -> Tensor:
        raise NotImplementedError

    def rows(self, inputs: Tensor) -> Tensor:
        raise NotImplementedError


class ImagePrior(ChainRegularizer):
    """The image prior on the victim's input: ``tv``·TV + ``norm``·‖x‖₂/(H·W) (either weight may be 0); Inverting
    Gradients' and, through `generative.base.image_regularizer`, the generative attacks'."""

    def __init__(self, *, tv: float, norm: float) -> None:
        self.tv, self.norm = tv, norm

    def __call__(self, inputs: Tensor, variables: tuple[Tensor, ...] = ()) -> Tensor:
        total = inputs.new_zeros(())
        if self.tv:
            total = total + self.tv * total_variation(inputs)
        if self.norm:
            total = total + self.norm * image_norm(inputs)
        return total

    def rows(self, inputs: Tensor) -> Tensor:
        total = inputs.new_zeros(inputs.shape[0])
        if self.tv:
            total = total + self.tv * total_variation(inputs, chains=True)
        if self.norm:
            total = total + self.norm * image_norm(inputs, chains=True)
        return total


def chain_penalties(
    regularizer: Callable[[Tensor, tuple[Tensor, ...]], Tensor] | None,
    inputs: Tensor,
    chains: Sequence[tuple[Tensor, ...]] | None = None,
) -> Tensor | None:
    """Each chain's regulariser penalty, (R,), of the chains' stacked victim inputs (R, B, ...): one
    `ChainRegularizer.rows` call, or one call per chain of any other regulariser, with that chain's variables
    from ``chains`` (default: its input alone). None without a regulariser."""
    if regularizer is None:
        return None
    if isinstance(regularizer, ChainRegularizer):
        return regularizer.rows(inputs)
    per_chain = inputs.unbind(0)
    variables = chains if chains is not None else [(x,) for x in per_chain]
    return torch.stack([regularizer(x, chain) for x, chain in zip(per_chain, variables, strict=True)])


def _grouped_result(
    dist: Tensor, penalties: Tensor | None, leaves: tuple[Tensor, ...]
) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
    """A grouped step's (grads w.r.t. ``leaves``, loss[R], distance[R]): each chain's distance plus its
    regulariser's penalty, differentiated in one pass (the chains are independent)."""
    loss = dist if penalties is None else dist + penalties
    return torch.autograd.grad(loss.sum(), leaves), loss.detach(), dist.detach()


def _agree(a: tuple[tuple[Tensor, ...], Tensor, Tensor], b: tuple[tuple[Tensor, ...], Tensor, Tensor]) -> bool:
    """Two steps' results equal to float32 rounding (gradients relative to their own scale)."""
    pairs = [*zip(a[0], b[0], strict=True), (a[1], b[1]), (a[2], b[2])]
    return all(torch.allclose(x, y, rtol=1e-3, atol=1e-4 * float(y.abs().max()) + 1e-7) for x, y in pairs)


BATCHED_DISTANCES = ("cosine", "l2")
"""Distances `BatchedMatcher` computes (those without a per-observation mask or per-tensor weights)."""


def batch_refusal(matchers: Sequence[GradientMatcher]) -> str | None:
    """Why ``matchers`` (one per observation) cannot share one `BatchedMatcher`; None when they can.

    They must match plain gradients of one victim architecture: no FedAvg simulation, no replayed defences,
    no held-out coordinates or update transform, the same frozen weights and buffers (a train-mode
    BatchNorm's running statistics are not used), and the same train or eval mode.
    """
    first = matchers[0]
    for k, m in enumerate(matchers):
        if m.local is not None or m.step_size is not None:
            return "a FedAvg update (the local training is simulated per observation)"
        if m.replay is not None or m.clients > 1 or m.kept is not None or m.update_transform is not None:
            return "replayed defences, secure aggregation, held-out coordinates or an update transform"
        if not m.functional:
            return "a matcher that is not functional"
        if k == 0:
            continue
        if m.names != first.names or any(m.params[n].shape != first.params[n].shape for n in m.names):
            return "different victim architectures"
        if m.model.training != first.model.training:
            return "victims in different modes (train and eval)"
        for mine, theirs in ((m.frozen, first.frozen), (m.buffers, first.buffers)):
            if mine.keys() != theirs.keys() or any(not torch.equal(mine[n], theirs[n]) for n in mine):
                return "victims with different frozen weights or buffers"
    return None


class BatchedMatcher:
    """The gradient-matching step of several observations of one victim architecture in one vmapped batch.

    Independent private batches of the same shape (the replicates of a study: other seeds, other images,
    other victim weights) become chains of one step: ``vmap(grad_and_value(objective))`` over each chain's
    dummy input, victim parameters, observed gradient and labels, so every chain runs through the
    victim at once. ``restarts`` consecutive chains belong to each observation.

    Built from one functional `GradientMatcher` per observation (`batch_refusal` says which can share a step);
    the first one's model, frozen weights and buffers serve all. The render is the identity (pixel attacks),
    ``regularizer(inputs, variables)`` as in `GradientMatcher`.
    """

    def __init__(
        self,
        matchers: Sequence[GradientMatcher],
        labels: Sequence[Tensor],
        *,
        restarts: int,
        distance: str,
        regularizer: Callable[[Tensor, tuple[Tensor, ...]], Tensor] | None = None,
        compile: bool = False,
        grouped: bool = False,
    ) -> None:
        reason = batch_refusal(matchers)
        if reason is not None:
            raise ValueError(f"these observations cannot share one step: {reason}")
        if distance not in BATCHED_DISTANCES:
            raise ValueError(f"a batched step computes {' or '.join(BATCHED_DISTANCES)}, not {distance!r}")
        self.first = matchers[0]
        self.names = self.first.names
        self.restarts = int(restarts)
        self.distance = distance
        self.regularizer = regularizer

        def chains(tensors: Sequence[Tensor]) -> Tensor:
            return torch.stack(list(tensors)).repeat_interleave(self.restarts, dim=0)

        self.params = {n: chains([m.params[n] for m in matchers]) for n in self.names}
        self.targets = [chains([m.target[i] for m in matchers]) for i in range(len(self.names))]
        self.labels = chains([torch.as_tensor(y).to(self.first.device) for y in labels])
        self.evaluations = 0
        self.grouped = GroupedVictim(self.first.model) if grouped and not compile else None
        objective = torch.func.grad_and_value(self._objective, argnums=0, has_aux=True)
        # what compiling costs and what a compiled step takes (`compilation.choose` gives it a record key)
        self.clock = CompileClock(self.first.device) if compile else None
        vmapped = torch.func.vmap(objective)
        self._step_fn = self.clock.compile(vmapped) if self.clock else vmapped

    @property
    def compile_seconds(self) -> float:
        """Seconds compiling this step cost (torch.compile's set-up and the first call); 0 uncompiled."""
        return self.clock.seconds if self.clock else 0.0

    def _objective(
        self, x: Tensor, params: dict[str, Tensor], target: list[Tensor], labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        grads = torch.func.grad(self.first._loss)(params, x, labels)
        dummy = [grads[n] for n in self.names]
        dist = l2_distance(dummy, target) if self.distance == "l2" else cosine_distance(dummy, target)
        loss = dist if self.regularizer is None else dist + self.regularizer(x, (x,))
        return loss, dist

    def step(self, variables: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        """`GradientMatcher.step` over every chain: (grads, loss[chains], distance[chains])."""
        x = variables[0].detach()
        self.evaluations += x.shape[0]
        if self.grouped is not None:
            return self._grouped_step(x)
        if self.clock is not None:
            grad, (loss, dist) = self.clock.call(lambda: self._step_fn(x, self.params, self.targets, self.labels))
        else:
            grad, (loss, dist) = self._step_fn(x, self.params, self.targets, self.labels)
        return (grad,), loss.detach(), dist.detach()

    def _grouped_step(self, x: Tensor) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        """Every chain in one plain-autograd pass through the grouped victim (`grouped_update`)."""
        assert self.grouped is not None
        chains = x.shape[0]
        x.requires_grad_(True)
        params = {n: p.detach().requires_grad_(True) for n, p in self.params.items()}
        frozen = {n: p.expand(chains, *p.shape) for n, p in self.first.frozen.items()}
        update = grouped_update(self.grouped, {**params, **frozen}, self.names, x.flatten(0, 1), list(self.labels))
        penalties = chain_penalties(self.regularizer, x)  # each chain's variables: its input alone
        return _grouped_result(restart_distance(self.distance, update, self.targets), penalties, (x,))


FEDAVG_MODES = ("strong", "weak", "none")


def _fedavg_simulation(obs: Observation, mode: str) -> tuple[LocalTraining | None, float | None]:
    """(local training to unroll, step size η for ``none``) of ``attack.fedavg=mode`` on ``obs``.

    Gradient observations need neither. Raises ConfigError for an unknown mode and MissingCapabilityError for
    ``strong`` without known local hyper-parameters.
    """
    if mode not in FEDAVG_MODES:
        raise ConfigError(f"attack.fedavg must be one of {', '.join(FEDAVG_MODES)}, got {mode!r}")
    if obs.kind != "weight_delta":
        return None, None
    if mode == "strong":
        if obs.local_training is None:
            raise MissingCapabilityError(
                "attack.fedavg=strong needs the client's local-training hyper-parameters, which this scenario"
                " does not grant: set threat.local_hparams=known (or guessed), or use attack.fedavg=weak|none"
            )
        return obs.local_training, None
    if mode == "weak":
        return GUESSED_LOCAL_TRAINING, None
    lr = obs.local_training.lr if obs.local_training is not None else GUESSED_LOCAL_TRAINING.lr
    return None, float(lr)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
