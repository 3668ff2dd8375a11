"""Inverting Gradients (Geiping et al., NeurIPS 2020): cosine gradient matching on pixels."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from fedinvert.attacks import compilation
from fedinvert.attacks.base import ATTACKS, Attack, LoopResult, batch_size_of, optimize
from fedinvert.attacks.grouped import GroupingRefused
from fedinvert.attacks.labels import infer_labels
from fedinvert.attacks.objectives import (
    BATCHED_DISTANCES,
    FEDAVG_MODES,
    BatchedMatcher,
    GradientMatcher,
    ImagePrior,
)
from fedinvert.errors import ConfigError
from fedinvert.observation import Observation, Reconstruction

log = logging.getLogger(__name__)

StepFunction = Callable[[Sequence[Tensor]], tuple[tuple[Tensor, ...], Tensor, Tensor]]

BATCHED_FORMS = (compilation.VMAP, compilation.GROUPED)
"""The uncompiled forms of a study's batched private batches (`reconstruct_batched`), the first the fallback."""


INITS = ("randn", "rand")


def random_inputs(
    obs: Observation,
    shape: tuple[int, ...],
    rng: torch.Generator | None,
    device: torch.device,
    init: Literal["randn", "rand"] = "randn",
) -> Tensor:
    """Random dummy inputs of ``shape`` (…, C, H, W) in the victim's normalised space.

    ``randn``: standard normal in the normalised space (the usual initialisation of Inverting Gradients and
    breaching); ``rand``: images uniform in [0, 1], normalised, so every start lies inside the image box.
    """
    if init == "rand":
        return obs.normalize(torch.rand(shape, generator=rng)).to(device)
    return torch.randn(shape, generator=rng).to(device)


def box_projection(obs: Observation, device: torch.device):
    """In-place clamp of the first variable into the valid image box (normalised space)."""
    low, high = obs.input_box(device)

    def project(variables: list[Tensor]) -> None:
        variables[0].copy_(torch.maximum(torch.minimum(variables[0], high), low))

    return project


class PixelAttack(Attack):
    """Shared machinery of pixel-space attacks: labels, restarts, the matcher and the loop."""

    distance: str = "cosine"

    def __init__(
        self,
        *,
        iterations: int,
        restarts: int = 1,
        lr: float = 0.1,
        schedule: str = "step",
        signed: bool = True,
        boxed: bool = True,
        tv: float = 1e-4,
        image_norm: float = 0.0,
        init: Literal["randn", "rand"] = "randn",
        labels: str = "auto",
        distance: str | None = None,
        prune_ratio: float = 0.0,
        adaptive: bool = False,
        fedavg: str = "strong",
        compile: bool | str = "auto",
        device: str | torch.device = "auto",
        log_every: int = 50,
    ) -> None:
        super().__init__(device=device, log_every=log_every)
        if iterations < 1 or restarts < 1:
            raise ConfigError(f"attack.iterations and attack.restarts must be ≥ 1, got {iterations}, {restarts}")
        if lr <= 0:
            raise ConfigError(f"attack.lr must be positive, got {lr}")
        self.iterations = int(iterations)
        self.restarts = int(restarts)
        self.lr = float(lr)
        self.schedule = schedule
        self.signed = bool(signed)
        self.boxed = bool(boxed)
        self.tv = float(tv)
        self.image_norm = float(image_norm)
        if init not in INITS:
            raise ConfigError(f"attack.init must be one of {', '.join(INITS)}, got {init!r}")
        self.init = init
        self.labels = labels
        self.distance = distance or self.distance
        self.prune_ratio = float(prune_ratio)
        if fedavg not in FEDAVG_MODES:
            raise ConfigError(f"attack.fedavg must be one of {', '.join(FEDAVG_MODES)}, got {fedavg!r}")
        self.adaptive = bool(adaptive)
        self.fedavg = fedavg
        self.compile = compilation.check_setting(compile)

    def regularizer(self, obs: Observation) -> Callable[[Tensor, tuple[Tensor, ...]], Tensor]:
        """The image prior added to the loss: ``tv``·TV + ``image_norm``·‖x‖ on the victim's input tensor."""
        return ImagePrior(tv=self.tv, norm=self.image_norm)

    def make_matcher(self, obs: Observation, labels: Tensor, *, form: str = compilation.EAGER) -> GradientMatcher:
        """The gradient matcher of a run in ``form`` (`compilation.EAGER`, ``VMAP``, ``GROUPED``, ``COMPILED`` or
        ``COMPILED_LOOP``; chosen by `compilation.choose` from ``attack.compile`` and a probe of the run's start)."""
        return GradientMatcher(
            obs,
            distance=self.distance,
            prune_ratio=self.prune_ratio,
            # extra variables (GradInversion's group consensus) are for the regulariser only
            render=lambda x, *_extra: (x, labels),
            regularizer=self.regularizer(obs),
            adaptive=self.adaptive,
            fedavg=self.fedavg,
            device=self.device,
            **compilation.matcher_flags(form),
        )

    def make_step(self, matcher: GradientMatcher, x0: Tensor) -> StepFunction:
        """The per-iteration step `optimize` calls; subclasses wrap ``matcher.step`` to add state (x0: start)."""
        return matcher.step

    def reconstruct(
        self, obs: Observation, *, rng: torch.Generator | None = None, progress: bool = False
    ) -> Reconstruction:
        size = batch_size_of(obs)
        (labels,) = self._labels([obs])
        x0 = random_inputs(obs, (self.restarts, size, *obs.image_shape), rng, self.device, self.init)
        matcher, decision = compilation.choose(
            self.compile,
            steps=self.iterations,
            build=lambda form: self.make_matcher(obs, labels, form=form),
            probe=lambda candidate: self.make_step(candidate, x0)([x0]),
            key=lambda: compilation.step_key(type(self).__name__, [obs.model], [x0.shape], self.device),
            tensors=lambda: compilation.parameter_tensors(obs.model),
            device=self.device,
            try_vmap=self.restarts > 1,
        )
        result = self._search(self.make_step(matcher, x0), x0, obs, progress=progress)
        best = int(torch.argmin(result.best_distance))
        images = obs.denormalize(result.best[0][best]).clamp(0, 1).detach().cpu()
        return Reconstruction(
            images=images,
            labels=labels.cpu(),
            score=float(result.best_distance[best]),
            history=result.history,
            iterations=matcher.evaluations,
            interrupted=result.interrupted,
            extras={
                "restart": best,
                "compile_seconds": matcher.compile_seconds,
                "compile": compilation.finished(decision, matcher),
            },
        )

    def _labels(self, observations: Sequence[Observation]) -> list[Tensor]:
        """Each observation's labels for the attack (`infer_labels` with ``attack.labels``), on its device."""
        return [infer_labels(obs, method=self.labels, batch_size=batch_size_of(obs)).to(self.device)
                for obs in observations]

    def _search(self, step: StepFunction, x0: Tensor, obs: Observation, *, progress: bool,
                groups: int = 1) -> LoopResult:
        """`optimize` with this attack's settings from ``x0`` (``groups`` observations' chains, in order)."""
        return optimize(
            step,
            [x0],
            iterations=self.iterations,
            lr=self.lr,
            schedule=self.schedule,
            signed=self.signed,
            project=box_projection(obs, self.device) if self.boxed else None,
            log_every=self.log_every,
            progress=progress,
            description=type(self).__name__ if groups == 1 else f"{type(self).__name__} ×{groups}",
            groups=groups,
        )

    def batch_refusal(self, observations: Sequence[Observation]) -> str | None:
        """Why ``observations`` cannot run as one batched attack (`reconstruct_batched`); None when they can."""
        plain = (type(self).reconstruct is PixelAttack.reconstruct and type(self).make_step is PixelAttack.make_step
                 and type(self).make_matcher is PixelAttack.make_matcher)
        if not plain:
            return f"{type(self).__name__} adds to Inverting Gradients' step"
        if self.distance not in BATCHED_DISTANCES or self.prune_ratio or self.adaptive:
            return "its distance, pruning mask or adaptive replay is per observation"
        first = observations[0]
        for obs in observations:
            if obs.kind != "gradient":
                return "a FedAvg update"
            if (obs.image_shape, obs.normalization, obs.num_classes) != (
                first.image_shape, first.normalization, first.num_classes
            ):
                return "different image shapes, normalisations or label spaces"
            if batch_size_of(obs) != batch_size_of(first):
                return "different batch sizes"
        return None

    def _vmappable_matchers(self, observations: Sequence[Observation], labels: Sequence[Tensor]
                            ) -> list[GradientMatcher]:
        """One functional matcher per observation: what a batched step reads (and never changes)."""
        return [self.make_matcher(obs, y, form=compilation.VMAP) for obs, y in zip(observations, labels, strict=True)]

    def _batched_matcher(self, observations: Sequence[Observation], labels: Sequence[Tensor],
                         matchers: Sequence[GradientMatcher], *, form: str = compilation.VMAP) -> BatchedMatcher:
        """The batched step of ``matchers`` (`_vmappable_matchers`) in ``form``: `compilation.VMAP`, ``GROUPED``
        (falling back to vmapped where the victim cannot be grouped) or ``COMPILED``."""
        options = {"restarts": self.restarts, "distance": self.distance,
                   "regularizer": self.regularizer(observations[0]), "compile": form == compilation.COMPILED}
        if form == compilation.GROUPED:
            try:
                return BatchedMatcher(matchers, labels, grouped=True, **options)  # type: ignore[arg-type]
            except GroupingRefused as refused:
                log.info("the batched step runs vmapped, not grouped: %s", refused)
        return BatchedMatcher(matchers, labels, **options)  # type: ignore[arg-type]

    def batch_timing(self, observations: Sequence[Observation]) -> dict[str, float]:
        """Seconds a step of ``observations`` takes batched (`reconstruct_batched`) and one after another
        (eager, as separate uncompiled runs step), each timed as `compilation`'s probe does (one untimed
        step, then the mean of two) on random starts that draw from no run's generator."""
        size = batch_size_of(observations[0])
        labels = self._labels(observations)
        start = torch.randn((len(observations) * self.restarts, size, *observations[0].image_shape),
                            generator=torch.Generator().manual_seed(0)).to(self.device)
        together = float("inf")  # the batched step in whichever uncompiled form times faster
        matchers = self._vmappable_matchers(observations, labels)
        for form in BATCHED_FORMS:
            batched = self._batched_matcher(observations, labels, matchers, form=form)
            if form == compilation.GROUPED and batched.grouped is None:  # refused: the vmapped step, timed already
                continue
            together = min(together, compilation.timed_probe(functools.partial(batched.step, [start]), self.device))
        forms = compilation.UNCOMPILED if self.restarts > 1 else (compilation.EAGER,)
        one = float("inf")  # a separate run of several restarts steps in whichever form its probe finds fastest
        first = start[: self.restarts]
        for form in forms:
            one = min(one, compilation.timed_probe(
                functools.partial(self.make_matcher(observations[0], labels[0], form=form).step, [first]), self.device
            ))
        return {"batched_step_seconds": together, "separate_steps_seconds": len(observations) * one}

    def reconstruct_batched(
        self, observations: Sequence[Observation], *, rngs: Sequence[torch.Generator], progress: bool = False
    ) -> list[Reconstruction]:
        """`reconstruct` of several independent observations as one batch through the victim (`BatchedMatcher`).

        Each observation keeps what `reconstruct` gives it: its labels, its start drawn from its own ``rng``
        (the same pixels as alone), its restarts, its best restart and its own history. Their chains (restarts
        × observations) share one step, vmapped or grouped (`fedinvert.attacks.grouped`, each chain its own
        victim weights) whichever its probe finds faster, compiled where ``attack.compile`` decides so
        (`compilation.choose`, its own record key). The numbers agree with separate runs to float32 rounding, not
        bit for bit (batched reductions). Raises ValueError where `batch_refusal` refuses.
        """
        reason = self.batch_refusal(observations) if len(observations) > 1 else None
        if reason is not None:
            raise ValueError(f"these observations cannot run as one batch: {reason}")
        size = batch_size_of(observations[0])
        shape = (self.restarts, size, *observations[0].image_shape)
        labels = self._labels(observations)
        x0 = torch.cat([random_inputs(obs, shape, rng, self.device, self.init)
                        for obs, rng in zip(observations, rngs, strict=True)])
        matchers = self._vmappable_matchers(observations, labels)
        batched, decision = compilation.choose(
            self.compile,
            steps=self.iterations,
            build=lambda form: self._batched_matcher(observations, labels, matchers, form=form),
            probe=lambda candidate: candidate.step([x0]),
            key=lambda: compilation.step_key(f"{type(self).__name__}-batched", [observations[0].model], [x0.shape],
                                             self.device),
            tensors=lambda: compilation.parameter_tensors(observations[0].model),
            device=self.device,
            try_vmap=True,
            forms=BATCHED_FORMS,
        )
        runs = len(observations)
        result = self._search(batched.step, x0, observations[0], progress=progress, groups=runs)
        compile_record = compilation.finished(decision, batched)
        form = compilation.COMPILED if decision.compiled else (
            compilation.GROUPED if batched.grouped is not None else compilation.VMAP)
        out = []
        for k, obs in enumerate(observations):
            chains = result.best_distance[k * self.restarts:(k + 1) * self.restarts]
            best = int(torch.argmin(chains))
            out.append(Reconstruction(
                images=obs.denormalize(result.best[0][k * self.restarts + best]).clamp(0, 1).detach().cpu(),
                labels=labels[k].cpu(),
                score=float(chains[best]),
                history=result.group_history[k] if runs > 1 else result.history,
                iterations=batched.evaluations // runs,
                interrupted=result.interrupted,
                extras={
                    "restart": best,
                    "compile_seconds": batched.compile_seconds / runs,  # its share, as its attack_seconds
                    "compile": compile_record,
                    "batched": {"runs": runs, "position": k, "form": form},
                },
            ))
        return out


@ATTACKS.register("inverting_gradients")
class InvertingGradients(PixelAttack):
    """Inverting Gradients (Geiping et al. 2020): one cosine distance over all gradients + TV, Adam on the
    pixels, box constraint, restarts.

    The defaults are chosen for the budgets runs here use (300–2,000 steps), by a paired sweep on eight photo
    crops against a plain loop (``benchmarks/defaults_sweep.py``, DLG LeNet, 32 px, B = 1): plain Adam with a
    cosine learning-rate decay and TV 1e-2. The paper's recipe — signed Adam, ×0.1 at 3/8, 5/8 and 7/8, TV 1e-4 —
    needs its 24,000 steps; at 1,000 it was the worst candidate (9.4 vs 22.4 dB). It is the preset ``ig-paper``.

    Args:
        iterations: Adam steps per restart (paper: 24,000 for ImageNet).
        restarts: independent random starts; the one with the least gradient distance is returned.
        lr: Adam learning rate (0.1; 0.03 and 0.3 measured worse).
        schedule: learning-rate schedule: ``cosine`` decay to 0 over the run (default), ``step`` (the paper's),
            ``constant``, ``ramp``.
        signed: Adam on the sign of the gradient (the paper's; false by default).
        tv: total-variation weight (mean |dx| + mean |dy|) on the victim's input tensor (1e-2).
        init: start distribution, ``randn`` (standard normal in the victim's normalised space) or ``rand``
            (uniform images in [0, 1]).
        labels: label inference method (`auto`, `idlg`, `row_sum`, `row_min`, `count_aware`, `known`).
        distance: `cosine` (default), `layer_cosine`, `l2` or `masked_cosine` (with `prune_ratio`).
        adaptive: replay the declared defences' deterministic transforms on the dummy update (`GradientMatcher`).
        fedavg: for FedAvg weight deltas, `strong` (unroll the known local training), `weak` (unroll the
            survey's guess: batch 8, 2 epochs, lr 1e-3) or `none` (treat −Δ/η as one gradient).
        compile: `auto`, `true` or `false` — compile the functional step with `torch.compile`.
    """

    def __init__(
        self,
        *,
        iterations: int = 4800,
        restarts: int = 1,
        lr: float = 0.1,
        schedule: str = "cosine",
        signed: bool = False,
        tv: float = 1e-2,
        **kwargs,
    ) -> None:
        super().__init__(
            iterations=iterations, restarts=restarts, lr=lr, schedule=schedule, signed=signed, tv=tv, **kwargs
        )
